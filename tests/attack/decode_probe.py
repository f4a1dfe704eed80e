"""Run in a fresh interpreter, so its peak RSS is the decode's: ``python -m tests.attack.decode_probe
make DIR`` writes the attack images; ``... measure BUDGET_MB N FILE...`` validates each file N times
at once (threads, as ingest does) and prints JSON: baseline and peak RSS in MB, and the outcomes."""

from __future__ import annotations

import json
import resource
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIDE = 7000


def make(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    # Flat float bands deflate to a few hundred KB and decode to 196 MB of 32-bit floats.
    bands = np.repeat(np.linspace(0.0, 1.0, 7, dtype=np.float32), SIDE // 7)
    Image.fromarray(np.broadcast_to(bands, (SIDE, SIDE)).copy(), mode="F").save(
        folder / "float.tiff", compression="tiff_deflate"
    )
    grey16 = (np.arange(SIDE, dtype=np.uint32)[None, :] * 9 % 65536).astype(np.uint16)
    Image.fromarray(np.broadcast_to(grey16, (SIDE, SIDE)).copy()).save(folder / "grey16.png", optimize=False)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(budget_mb: int, copies: int, files: list[Path]) -> dict:
    from dataset.images import DECODES, ImageRejected, inspect_image

    blobs = [f.read_bytes() for f in files]
    baseline = peak_mb()

    def one(data: bytes) -> str:
        try:
            info = inspect_image(
                data,
                max_bytes=len(data) + 1,
                min_side=1,
                max_pixels=50_000_000,
                memory_budget=budget_mb * 2**20,
            )
            return f"ok {info.format} {info.width}x{info.height}"
        except ImageRejected as exc:
            return f"rejected {exc.reason}: {exc.message}"

    jobs = [data for data in blobs for _ in range(copies)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        outcomes = list(pool.map(one, jobs))
    return {
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak_mb(), 1),
        "budget_peak_mb": round(DECODES.peak / 2**20, 1),
        "outcomes": outcomes,
        "input_kb": [round(len(b) / 1024) for b in blobs],
    }


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), [Path(p) for p in sys.argv[4:]])))
