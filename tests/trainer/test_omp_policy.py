"""OpenMP's wait policy is set before torch loads, in every process that trains (trainer/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import trainer.evaluate, os; print(os.environ['OMP_WAIT_POLICY'])"


def _policy(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_threads_sleep_at_barriers_unless_the_operator_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env) == "PASSIVE"
    assert _policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
