"""Measure near-duplicate precision and recall of the 64-bit pHash per Hamming distance.

Two sets of image pairs, hashed exactly as ingest hashes them (dataset.images.inspect_image):

* generated: N synthetic photos, each with copies that a scraper really meets (resized, JPEG
  re-encoded at low quality, WebP, cropped 4% / 8% at the borders); positives = (original, copy),
  negatives = every pair of images from different originals;
* acceptance (optional folder, e.g. /work/shared/acceptance-data): the `neardup/` groups give
  positives (pairs inside a group; groups and files that are not copies - flips, rotations, AI
  edits, stereo views, img2img, re-runs - are counted apart), `real/` + `ai/` + other groups give
  negatives.

    python bench/neardup_measure.py [--n 60] [--data /work/shared/acceptance-data] [--max-d 16]

Prints, per distance d: recall (share of copy pairs within d), false-positive pairs, precision.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from dataset.images import ImageRejected, inspect_image  # noqa: E402
from tests.images import scene  # noqa: E402

LIMITS = dict(max_bytes=200_000_000, min_side=16, max_pixels=100_000_000)
NOT_COPIES_GROUPS = ("g13_", "g14_", "g15_", "g17_", "g18_")  # edits, stereo, img2img, re-runs
NOT_COPIES_FILES = ("hflip", "rotation", "_45", "IMG_E4120")  # geometric changes, iOS crop+B/W


def phash(data: bytes) -> int | None:
    try:
        return inspect_image(data, **LIMITS).phash
    except ImageRejected:
        return None


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(img: Image.Image, frac: float) -> Image.Image:
    w, h = img.size
    dx, dy = int(w * frac), int(h * frac)
    return img.crop((dx, dy, w - dx, h - dy))


def copies_of(img: Image.Image) -> dict[str, bytes]:
    w, h = img.size
    return {
        "resize50": encode(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), quality=90),
        "jpeg_q30": encode(img, quality=30),
        "webp": encode(img, "WEBP", quality=75),
        "crop4": encode(crop(img, 0.04), quality=90),
        "crop8": encode(crop(img, 0.08), quality=90),
    }


def generated_pairs(n: int) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    """(positives as (hash, hash, kind), negatives as (hash, hash))."""
    groups = []
    for seed in range(n):
        img = scene(1000 + seed, (640, 480))
        hashes = {"original": phash(encode(img, quality=92))}
        hashes.update({k: phash(v) for k, v in copies_of(img).items()})
        groups.append(hashes)
    pos = [(g["original"], h, kind) for g in groups for kind, h in g.items() if kind != "original"]
    neg = [(a, b) for g1, g2 in itertools.combinations(groups, 2) for a in g1.values() for b in g2.values()]
    return pos, neg


def acceptance_pairs(root: Path):
    """Groups from neardup/; a real/ or ai/ file byte-identical to a group member joins that group
    (the folders share some pictures). Byte-identical pairs are left out: exact dedupe finds them."""
    groups: dict[str, list[tuple[str, int, str]]] = {}
    for gdir in sorted((root / "neardup").iterdir()):
        groups[gdir.name] = [
            (f"{gdir.name}/{p.name}", *h) for p in sorted(gdir.iterdir()) if (h := hashes(p.read_bytes()))
        ]
    owner = {sha: g for g, members in groups.items() for _, _, sha in members}
    for folder in ("real", "ai"):
        for p in sorted((root / folder).iterdir()):
            if h := hashes(p.read_bytes()):
                g = owner.get(h[1])
                groups.setdefault(g or f"{folder}/{p.name}", []).append((f"{g or folder}/{p.name}", *h))
    copies, not_copies = [], []
    for g in groups.values():
        for (n1, h1, s1), (n2, h2, s2) in itertools.combinations(g, 2):
            if s1 != s2:
                target = not_copies if _not_copy(n1) or _not_copy(n2) else copies
                target.append((h1, h2, f"{n1} ~ {n2}"))
    neg = [(a[1], b[1]) for g1, g2 in itertools.combinations(groups.values(), 2) for a in g1 for b in g2]
    return copies, not_copies, neg


def hashes(data: bytes) -> tuple[int, str] | None:
    try:
        info = inspect_image(data, **LIMITS)
    except ImageRejected:
        return None
    return info.phash, info.sha256


def _not_copy(name: str) -> bool:
    return name.startswith(NOT_COPIES_GROUPS) or any(tag in name for tag in NOT_COPIES_FILES)


def dist(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def table(title: str, pos, neg, max_d: int, extra=None) -> None:
    print(f"\n## {title}: {len(pos)} copy pairs, {len(neg)} distinct pairs")
    head = "| d | recall | false-positive pairs | precision |" + (" recall (not copies) |" if extra else "")
    print(head)
    print("|---|---|---|---|" + ("---|" if extra else ""))
    pd = [dist(a, b) for a, b, _ in pos]
    nd = [dist(a, b) for a, b in neg]
    xd = [dist(a, b) for a, b, _ in extra or []]
    for d in range(0, max_d + 1):
        tp, fp = sum(x <= d for x in pd), sum(x <= d for x in nd)
        prec = tp / (tp + fp) if tp + fp else 1.0
        row = f"| {d} | {tp / len(pd):.3f} | {fp} | {prec:.3f} |"
        if extra:
            row += f" {sum(x <= d for x in xd) / len(xd):.3f} |"
        print(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="generated originals")
    ap.add_argument("--data", type=Path, help="acceptance-data folder with neardup/, real/, ai/")
    ap.add_argument("--max-d", type=int, default=16)
    args = ap.parse_args()
    pos, neg = generated_pairs(args.n)
    table(f"generated ({args.n} originals x 5 copies)", pos, neg, args.max_d)
    kinds = sorted({k for _, _, k in pos})
    medians = {k: sorted(dist(a, b) for a, b, kk in pos if kk == k) for k in kinds}
    print("\nmedian distance by copy kind: " + ", ".join(f"{k} {v[len(v) // 2]}" for k, v in medians.items()))
    if args.data:
        copies, not_copies, neg = acceptance_pairs(args.data)
        table(f"acceptance data {args.data}", copies, neg, args.max_d, extra=not_copies)
        missed = sorted((dist(a, b), name) for a, b, name in copies)[::-1][:5]
        print("\nlargest copy distances: " + "; ".join(f"{d} {n}" for d, n in missed))
        closest = sorted(dist(a, b) for a, b in neg)[:5]
        print(f"smallest distances between different pictures: {closest}")


if __name__ == "__main__":
    main()
