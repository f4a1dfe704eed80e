"""Edited copies on the acceptance pictures: recall and false joins of the split's grouping, and the
cost of a content signature per image (trainer/copies.py).

    python bench/copies_bench.py /path/to/acceptance-data [PICTURES_PER_FOLDER]

Every picture of `real/` and `ai/` is re-posted as the audit of issue 22 did, plus more edits:
crops keeping 80 %, 60 % and 50 % of the area (at a random place, one of them with another
shape), a horizontal flip, a vertical flip, a 90° rotation, brightened x1.3, more saturated, JPEG
q=60, half size -- each saved as a JPEG (q=90) the way a photo site re-posts it. Then:

* recall: the share of copies in the same split group as their original, for pHash within
  SPLIT_NEAR_DUP_DISTANCE alone (before) and with the copy matching (after), per edit;
* false joins: pairs of *different* originals (and their copies) put in one group, and the direct
  false matches the copy matching made (pairs of originals it verified);
* `neardup/` groups: in-group pairs in one group (recall), and pairs of groups merged;
* cost: milliseconds per image to decode (reduced) and compute the signature, against ingest's
  own decode + pHash (dataset.images.inspect_image) of the same files in the same run, and the
  matching time for all pictures.
"""

import io
import itertools
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageEnhance  # noqa: E402

from dataset.images import decode_rgb, inspect_image  # noqa: E402
from trainer.copies import copy_pairs, signature  # noqa: E402
from trainer.split import _find, _union, hamming_groups  # noqa: E402

L = dict(max_bytes=200_000_000, min_side=16, max_pixels=100_000_000)
RADIUS = 12
root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/acceptance-data")
LIMIT = int(sys.argv[2]) if len(sys.argv) > 2 else None  # pictures per folder (a quicker run)
rng = random.Random(22)


def crop(img: Image.Image, w: float, h: float) -> Image.Image:
    cw, ch = round(img.width * w), round(img.height * h)
    x, y = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
    return img.crop((x, y, x + cw, y + ch))


def half(img: Image.Image) -> Image.Image:
    return img.resize((max(16, img.width // 2), max(16, img.height // 2)))


EDITS = {
    "crop80": lambda im: crop(im, 0.8**0.5, 0.8**0.5),
    "crop60": lambda im: crop(im, 0.6**0.5, 0.6**0.5),
    "crop60_wide": lambda im: crop(im, 0.85, 0.6 / 0.85),
    "crop50": lambda im: crop(im, 0.5**0.5, 0.5**0.5),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "rot90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "bright": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "saturate": lambda im: ImageEnhance.Color(im).enhance(1.4),
    "jpeg60": lambda im: im,
    "half": half,
}


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def readable(path: Path) -> bytes | None:
    data = path.read_bytes()
    try:
        inspect_image(data, **L)
    except Exception:  # noqa: BLE001 - unreadable files are simply left out
        return None
    return data


def main() -> None:
    originals = [
        (f, b) for d in ("real", "ai") for f in sorted((root / d).iterdir())[:LIMIT] if (b := readable(f))
    ]
    items: list[tuple[str, str, bytes]] = []  # (family, edit, bytes)
    for path, data in originals:
        items.append((path.name, "original", data))
        full = decode_rgb(data, max_pixels=L["max_pixels"])
        for name, edit in EDITS.items():
            items.append((path.name, name, jpeg(edit(full), 60 if name == "jpeg60" else 90)))
    neardup = [
        (g.name, f.read_bytes())
        for g in sorted((root / "neardup").iterdir())
        for f in sorted(g.iterdir())
        if f.is_file() and readable(f)
    ]

    all_bytes = [b for _, _, b in items] + [b for _, b in neardup]
    t0 = time.perf_counter()
    hashes = [inspect_image(b, **L).phash for b in all_bytes]
    t_ingest = (time.perf_counter() - t0) / len(all_bytes)
    t0 = time.perf_counter()
    sigs = [signature(decode_rgb(b, max_pixels=L["max_pixels"], reduce_to=128)) for b in all_bytes]
    t_sig = (time.perf_counter() - t0) / len(all_bytes)
    t0 = time.perf_counter()
    pairs = copy_pairs(sigs, range(len(sigs)))
    t_match = time.perf_counter() - t0

    n_items = len(items)
    family = [f for f, _, _ in items] + [f"neardup:{g}" for g, _ in neardup]
    # One picture can sit in real/ (or ai/) and in a neardup/ group: files ingest would reject as
    # near-duplicates of each other (pHash within 6) are one family, not a false join.
    unedited = [i for i in range(len(family)) if i >= n_items or items[i][1] == "original"]
    fam = hamming_groups([hashes[i] for i in unedited], 6)
    alias = {}
    for k, i in enumerate(unedited):
        alias.setdefault(family[i], family[unedited[fam[k]]])
    for k, i in enumerate(unedited):  # a neardup group takes the family of any member's twin
        alias[family[i]] = alias.get(family[unedited[fam[k]]], alias[family[i]])
    family = [alias.get(f, f) for f in family]
    edit = [e for _, e, _ in items] + ["neardup"] * len(neardup)
    before = hamming_groups(hashes, RADIUS)
    parent = list(before)
    for i, j in pairs:
        _union(parent, i, j)
    after = [_find(parent, i) for i in range(len(parent))]

    print(
        f"{len(originals)} pictures x {len(EDITS)} edits = {n_items - len(originals)} copies; "
        f"{len(neardup)} neardup/ files; {len(all_bytes)} images in all"
    )
    print(
        f"cost per image: signature {1000 * t_sig:.1f} ms (decode reduced + thumbnail + hashes) vs "
        f"ingest's decode + pHash {1000 * t_ingest:.1f} ms: ratio {t_sig / t_ingest:.2f}; "
        f"matching all {len(all_bytes)} images: {t_match:.2f} s "
        f"({1000 * t_match / len(all_bytes):.2f} ms/image)"
    )
    first = {f: i for i, (f, e, _) in enumerate(items) if e == "original"}
    print("\nrecall: copies in their original's group")
    print(f"{'edit':12s} {'pHash<=12':>10s} {'with copies':>12s}")
    for name in EDITS:
        idx = [i for i in range(n_items) if edit[i] == name]
        b = sum(before[i] == before[first[family[i]]] for i in idx) / len(idx)
        a = sum(after[i] == after[first[family[i]]] for i in idx) / len(idx)
        print(f"{name:12s} {b:10.2f} {a:12.2f}")
    for label, groups in (("pHash<=12", before), ("with copies", after)):
        members: dict[int, set[str]] = {}
        for i in range(len(groups)):
            members.setdefault(groups[i], set()).add(family[i])
        merged = len({pair for fams in members.values() for pair in itertools.combinations(sorted(fams), 2)})
        total = len(set(family)) * (len(set(family)) - 1) // 2
        biggest = max(len(f) for f in members.values())
        print(
            f"false joins ({label}): {merged} of {total} pairs of families share a group "
            f"({merged / total:.4%}); largest group spans {biggest} families"
        )
    direct = Counter(tuple(sorted((family[i], family[j]))) for i, j in pairs if family[i] != family[j])
    print(
        f"direct false matches made by the copy matching: {sum(direct.values())} of {len(pairs)} matched "
        f"image pairs, between {len(direct)} pairs of families:"
    )
    for (a, b), n in direct.most_common(20):
        print(f"    {a} <-> {b}: {n} image pairs")
    nd = [i for i in range(n_items, len(family))]
    by_group = Counter(family[i] for i in nd)
    pos = [(i, j) for i, j in itertools.combinations(nd, 2) if family[i] == family[j]]
    for label, groups in (("pHash<=12", before), ("with copies", after)):
        got = sum(groups[i] == groups[j] for i, j in pos) / len(pos)
        split = [g for g in by_group if len({groups[i] for i in nd if family[i] == g}) > 1]
        print(
            f"neardup/ ({label}): in-group pairs joined {got:.2f}; groups still split: {len(split)} {split}"
        )


if __name__ == "__main__":
    main()
