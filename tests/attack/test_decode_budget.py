"""Attack 3: decode amplification. A few hundred KB of float TIFF or 16-bit PNG at 7000x7000 (under
the pixel limit) must be validated within DECODE_MEMORY_BUDGET_MB, alone and six at once. Peak RSS
is measured in a fresh interpreter (tests/attack/decode_probe.py), so nothing else counts in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.images import ImageRejected, decode_cost, inspect_image

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("attack.test_decode_budget")

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MB = 512


def _probe(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.attack.decode_probe", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def attack_images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decode")
    _probe("make", str(folder))
    return {"float": folder / "float.tiff", "grey16": folder / "grey16.png"}


def _measure(copies: int, *files: Path) -> dict:
    return json.loads(_probe("measure", str(BUDGET_MB), str(copies), *map(str, files)))


@pytest.mark.parametrize("name", ["float", "grey16"])
def test_one_deep_image_is_validated_within_the_budget(attack_images, name):
    result = _measure(1, attack_images[name])
    assert result["input_kb"][0] < 600  # small on the wire ...
    assert result["outcomes"] == ["ok " + ("TIFF" if name == "float" else "PNG") + " 7000x7000"]
    assert result["peak_mb"] - result["baseline_mb"] < BUDGET_MB  # ... and bounded in memory


def test_six_at_once_stay_under_the_budget(attack_images):
    result = _measure(3, attack_images["float"], attack_images["grey16"])
    assert len(result["outcomes"]) == 6 and all(o.startswith("ok ") for o in result["outcomes"])
    assert result["budget_peak_mb"] <= BUDGET_MB  # the accounting admitted no more than the budget
    assert result["peak_mb"] - result["baseline_mb"] < BUDGET_MB  # and the process really stayed under


def test_an_image_that_alone_exceeds_the_budget_is_rejected_before_decoding(attack_images):
    data = attack_images["float"].read_bytes()
    assert decode_cost("F", 7000, 7000) > 256 * 2**20
    with pytest.raises(ImageRejected) as rejected:
        inspect_image(
            data, max_bytes=len(data) + 1, min_side=1, max_pixels=50_000_000, memory_budget=256 * 2**20
        )
    assert rejected.value.reason == "decompression_bomb"
    assert "DECODE_MEMORY_BUDGET_MB" in rejected.value.message and "7000x7000 F" in rejected.value.message


def test_upload_of_a_float_tiff_over_the_budget_is_a_clear_413(attack_images, make_client):
    from tests.app.conftest import AUTH

    client = make_client(decode_memory_budget_mb=128)
    data = attack_images["float"].read_bytes()
    response = client.post("/upload", headers=AUTH, files={"file": ("f.tiff", data)}, data={"label": "ai"})
    assert response.status_code == 413 and "DECODE_MEMORY_BUDGET_MB" in response.json()["detail"]
