"""The labeler loads torch only when it really scores with the local model (the API imports it)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_labeler_and_its_routes_loads_no_torch():
    code = (
        "import sys, labeler.scoring, labeler.review, labeler.core_client, app.routes.review; "
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
