"""Choose SPLIT_NEAR_DUP_DISTANCE: pHash distances inside near-duplicate groups vs between pictures.

    python bench/split_radius_measure.py /path/to/acceptance-data

The folder holds `neardup/<group>/` (pictures that belong together: copies, edits, img2img,
re-runs, flips) and `real/`, `ai/` (unrelated pictures). For each radius d it prints the share of
in-group pairs within d (recall: pairs the split keeps on one side) and the unrelated pairs within
d (false joins: they only move pictures to the same side, they never leak), then every group's
in-group distances.
"""

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.images import inspect_image  # noqa: E402

L = dict(max_bytes=200_000_000, min_side=16, max_pixels=100_000_000)
root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/acceptance-data")


def phash(path: Path) -> int | None:
    try:
        return inspect_image(path.read_bytes(), **L).phash
    except Exception:  # noqa: BLE001 - unreadable files are simply left out
        return None


def bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


groups = {}
for g in sorted((root / "neardup").iterdir()):
    hashes = [(f.name, phash(f)) for f in sorted(g.iterdir()) if f.is_file()]
    groups[g.name] = [x for x in hashes if x[1] is not None]
others = [h for d in ("real", "ai") for f in sorted((root / d).iterdir()) if (h := phash(f)) is not None]
pos = [bits(x, y) for hs in groups.values() for (_, x), (_, y) in itertools.combinations(hs, 2)]
unrelated = others + [hs[0][1] for hs in groups.values() if hs]
neg = [bits(x, y) for x, y in itertools.combinations(unrelated, 2)]
print(f"in-group pairs {len(pos)}, unrelated pairs {len(neg)}")
print(" d  in-group within d  unrelated within d (rate)")
for d in range(0, 25, 2):
    fp = sum(n <= d for n in neg)
    print(f"{d:2d}  {sum(p <= d for p in pos) / len(pos):17.2f}  {fp:6d} ({fp / len(neg):.5f})")
for g, hs in groups.items():
    print(g, len(hs), sorted(bits(x, y) for (_, x), (_, y) in itertools.combinations(hs, 2)))
