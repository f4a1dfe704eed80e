"""Edited copies (trainer/copies.py, trainer/signatures.py) keep to their original's side of the split.

The edited-copies set: random 'photos' (tests/images.py scene) and, of each, crops keeping 80 %,
60 % and 50 % of the area at random places, flips, 90° rotations, a brightened copy, a JPEG q=60
re-encode and a half-size copy. Recall and false joins on it are asserted; docs/evaluation.md has
the same figures on the acceptance pictures (bench/copies_bench.py).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from dataset.images import decode_rgb
from tests.images import encode, scene
from tests.trainer.builders import store
from trainer import copies
from trainer.copies import copy_pairs, dihedral_blocks, signature
from trainer.signatures import content_signatures, store_path
from trainer.split import EVAL, EXCLUDED, TRAIN, _find, _link, assign_splits

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("trainer.test_copies")

T = Image.Transpose
TRANSFORMS = [  # dihedral_blocks' order
    None,
    T.FLIP_LEFT_RIGHT,
    T.FLIP_TOP_BOTTOM,
    T.ROTATE_180,
    T.TRANSPOSE,
    T.ROTATE_270,  # transpose then flip left-right
    T.ROTATE_90,  # transpose then flip up-down
    T.TRANSVERSE,
]


def _crop(img: Image.Image, area: float, rng: random.Random, wide: bool = False) -> Image.Image:
    w = min(1.0, area**0.5 * (1.15 if wide else 1.0))
    h = area / w
    cw, ch = round(img.width * w), round(img.height * h)
    x, y = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
    return img.crop((x, y, x + cw, y + ch))


EDITS = {
    "crop80": lambda im, rng: _crop(im, 0.8, rng),
    "crop60": lambda im, rng: _crop(im, 0.6, rng, wide=True),
    "crop50": lambda im, rng: _crop(im, 0.5, rng),
    "hflip": lambda im, rng: im.transpose(T.FLIP_LEFT_RIGHT),
    "vflip": lambda im, rng: im.transpose(T.FLIP_TOP_BOTTOM),
    "rot90": lambda im, rng: im.transpose(T.ROTATE_90),
    "rot270": lambda im, rng: im.transpose(T.ROTATE_270),
    "bright": lambda im, rng: ImageEnhance.Brightness(im).enhance(1.25),
    "half": lambda im, rng: im.resize((im.width // 2, im.height // 2)),
}


def _picture(seed: int) -> Image.Image:
    return scene(seed, (320, 240))


def _sig(img: Image.Image, quality: int = 90):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return signature(decode_rgb(buf.getvalue(), reduce_to=128))


@pytest.fixture(scope="module")
def edited_set():
    """(family per item, edit per item, signature per item): 16 pictures, each with every edit."""
    rng = random.Random(22)
    family, edit, sigs = [], [], []
    for seed in range(16):
        original = _picture(1000 + seed)
        for name, make in [("original", lambda im, rng: im), *EDITS.items()]:
            family.append(seed)
            edit.append(name)
            sigs.append(_sig(make(original, rng)))
    return family, edit, sigs


def test_dihedral_hashes_from_the_dct_match_the_transformed_pictures():
    for seed in range(6):
        original = _sig(_picture(seed))
        for t, how in enumerate(TRANSFORMS):
            if how is None:
                continue
            moved = _sig(_picture(seed).transpose(how))
            distance = (int(original.dihedral[t]) ^ int(moved.dihedral[0])).bit_count()
            assert distance <= 6, (seed, how, distance)
            # ... while the picture's own hash is far from the transformed one's (pHash alone misses it).
    block = np.arange(64, dtype=float).reshape(8, 8)
    assert len({b.tobytes() for b in dihedral_blocks(block)}) == 8


def test_every_edited_copy_is_found_and_no_two_pictures_are_joined(edited_set):
    family, edit, sigs = edited_set
    pairs = copy_pairs(sigs, range(len(sigs)))
    parent = list(range(len(sigs)))
    for i, j in pairs:
        parent[max(_find(parent, i), _find(parent, j))] = min(_find(parent, i), _find(parent, j))
    root = [_find(parent, i) for i in range(len(sigs))]
    original = {f: i for i, (f, e) in enumerate(zip(family, edit, strict=True)) if e == "original"}
    missed = [(family[i], edit[i]) for i in range(len(sigs)) if root[i] != root[original[family[i]]]]
    # Recall 1.0 for every edit but the smallest crop (15 of 16 found here; 0.90 on the acceptance
    # pictures, docs/evaluation.md): a 50 % crop can sit between two windows of the grid.
    assert [m for m in missed if m[1] != "crop50"] == []
    assert len(missed) <= 1
    false = {(family[i], family[j]) for i, j in pairs if family[i] != family[j]}
    assert false == set()
    assert len({root[i] for i in original.values()}) == len(original)


def test_a_crop_flip_or_rotation_of_a_training_image_never_lands_on_the_evaluation_side(storage, tmp_path):
    """Acceptance of issue 22 point 1: originals stored on both sides, their copies arrive later."""
    rng = random.Random(5)
    originals, copies_of = [], []
    for i in range(40):
        label = "ai" if i % 2 else "real"
        picture = _picture(5000 + i)
        originals.append(store(storage, f"a-{i:03d}", label, encode(picture, "JPEG", quality=92)))
        for name in ("crop80", "crop60", "crop50", "hflip", "rot90"):
            copy = EDITS[name](picture, rng)
            copies_of.append(store(storage, f"b-{i:03d}-{name}", label, encode(copy, "JPEG", quality=88)))
    first = assign_splits(originals, radius=12, eval_fraction=0.25, min_per_class=8)
    assert first.eval and first.train
    stored = [
        dataclasses.replace(s, split_group=first.group_of[s.id], split=first.side_of[s.id]) for s in originals
    ]
    everyone = stored + copies_of
    sigs = content_signatures(tmp_path / "models", storage, everyone, max_pixels=10_000_000, workers=2)
    plan = assign_splits(everyone, radius=12, eval_fraction=0.25, min_per_class=8, signatures=sigs)
    same = 0
    for copy in copies_of:
        side = first.side_of[f"a-{copy.id.split('-')[1]}"]
        # Never on the other side; excluded (it also matched a picture on the other side) is safe.
        assert plan.side_of[copy.id] in {side, EXCLUDED}, copy.id
        same += plan.side_of[copy.id] == side
    assert same >= 0.9 * len(copies_of)
    # Without the signatures (pHash alone) copies would have landed on the other side.
    blind = assign_splits(everyone, radius=12, eval_fraction=0.25, min_per_class=8)
    leaks = [c.id for c in copies_of if blind.side_of[c.id] != first.side_of[f"a-{c.id.split('-')[1]}"]]
    assert leaks


def test_a_picture_bridging_a_training_and_an_evaluation_copy_is_excluded():
    rng = random.Random(9)
    picture = _picture(71)
    # A crop on the training side, a flip on the evaluation side: the original bridges both.
    sigs = [_sig(picture.crop((0, 0, 280, 210))), _sig(picture.transpose(T.FLIP_LEFT_RIGHT)), _sig(picture)]
    assert copy_pairs(sigs, [2]) == [(0, 2), (1, 2)]
    from tests.trainer.builders import fake_sample

    samples = [
        dataclasses.replace(fake_sample("x0", "ai", rng.getrandbits(64)), split="train", split_group="x0"),
        dataclasses.replace(fake_sample("x1", "ai", rng.getrandbits(64)), split="eval", split_group="x1"),
        fake_sample("x2", "ai", rng.getrandbits(64)),
    ]
    plan = assign_splits(
        samples,
        radius=0,
        eval_fraction=0.5,
        min_per_class=1,
        signatures=dict(zip(["x0", "x1", "x2"], sigs, strict=True)),
    )
    assert plan.side_of == {"x0": TRAIN, "x1": EVAL, "x2": EXCLUDED}


def test_signatures_are_computed_once_per_content_and_reused_after_a_reingest(storage, tmp_path, monkeypatch):
    data = encode(_picture(3), "JPEG", quality=90)
    first = store(storage, "one", "real", data)
    models = tmp_path / "models"
    sigs = content_signatures(models, storage, [first], max_pixels=10_000_000)
    assert store_path(models).is_file() and set(sigs) == {"one"}
    calls = []
    monkeypatch.setattr("trainer.signatures.compute", lambda *a: calls.append(a))
    again = dataclasses.replace(first, id="other-id", image_key="images/elsewhere.jpg")  # same SHA-256
    reused = content_signatures(models, storage, [again], max_pixels=10_000_000)
    assert calls == [] and reused["other-id"].to_bytes() == sigs["one"].to_bytes()


def test_an_unreadable_picture_has_no_signature_and_the_split_still_runs(storage, tmp_path):
    good = store(storage, "good", "real", encode(_picture(4), "PNG"))
    gone = dataclasses.replace(good, id="gone", sha256="0" * 64, image_key="images/missing.png")
    sigs = content_signatures(tmp_path / "m", storage, [good, gone], max_pixels=10_000_000)
    assert set(sigs) == {"good"}
    parent = _link([good, gone], 12, sigs)
    assert len(parent) == 2


def test_signature_round_trips_and_refuses_other_lengths():
    sig = _sig(_picture(8))
    back = copies.Signature.from_bytes(sig.to_bytes())
    assert back.aspect == sig.aspect and (back.windows == sig.windows).all()
    assert (back.dihedral == sig.dihedral).all() and (back.thumb == sig.thumb).all()
    assert (back.colour == sig.colour).all() and back.colour.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="signature of 3 bytes"):
        copies.Signature.from_bytes(b"abc")
    assert list(itertools.islice(copies.WINDOWS, 1)) == [(0.0, 0.0, 1.0, 1.0)]


def _bilinear(base: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray:
    """One window sampled point by point: the definition the batched products must equal."""
    n, side = base.shape[0], copies.CHECK_SIDE
    out = np.empty((side, side))
    for i in range(side):
        for j in range(side):
            py = min(max((y + (i + 0.5) / side * h) * n - 0.5, 0), n - 1)
            px = min(max((x + (j + 0.5) / side * w) * n - 0.5, 0), n - 1)
            y0, x0 = min(int(py), n - 2), min(int(px), n - 2)
            fy, fx = py - y0, px - x0
            top = base[y0, x0] * (1 - fx) + base[y0, x0 + 1] * fx
            bottom = base[y0 + 1, x0] * (1 - fx) + base[y0 + 1, x0 + 1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_every_searched_window_is_the_bilinear_sample_of_that_window():
    base = np.random.default_rng(5).uniform(0, 255, (copies.CHECK_BASE, copies.CHECK_BASE))
    sizes = np.array([[0.62, 0.81], [0.9, 0.55]])
    shifts = np.array([-0.12, 0.0, 0.3])  # 0.3 pushes windows past the edge: moved back inside
    got = copies._sample_windows(base, 0.55, 0.4, sizes, shifts)
    assert got.shape == (2 * 3 * 3, copies.CHECK_SIDE, copies.CHECK_SIDE)
    k = 0
    for w, h in sizes.tolist():
        for dy in shifts.tolist():
            for dx in shifts.tolist():
                x = min(max(0.55 + dx - w / 2, 0.0), 1.0 - w)
                y = min(max(0.4 + dy - h / 2, 0.0), 1.0 - h)
                np.testing.assert_allclose(got[k], _bilinear(base, x, y, w, h), rtol=0, atol=1e-9)
                k += 1


def test_hash_bits_are_the_coefficients_above_their_median_first_bit_highest():
    blocks = np.random.default_rng(6).normal(size=(5, 8, 8))
    for block, got in zip(blocks, copies._bits(blocks).tolist(), strict=True):
        bits = "".join("1" if v > np.median(block) else "0" for v in block.reshape(-1))
        assert got == int(bits, 2)


def test_a_verification_that_only_asks_for_the_threshold_gives_the_same_answer(edited_set):
    """The split asks only whether a crop reaches VERIFY_MIN_NCC, so the gradients are compared only
    where the pixels already do: the answer must be the full computation's, for true and false pairs."""
    family, edit, sigs = edited_set
    threshold = copies.VERIFY_MIN_NCC
    originals = [i for i, e in enumerate(edit) if e == "original"][:6]
    crops = [j for j, e in enumerate(edit) if e.startswith("crop") and family[j] < 6]
    answers = []
    for i, j in itertools.product(originals, crops):  # each crop against its own and 5 other originals
        distances = [(int(w) ^ int(sigs[j].dihedral[0])).bit_count() for w in sigs[i].windows]
        near = copies.WINDOWS[int(np.argmin(distances))]
        full = copies.verify_crop(sigs[i], sigs[j], near)
        quick = copies.verify_crop(sigs[i], sigs[j], near, at_least=threshold)
        assert (full >= threshold) == (quick >= threshold), (i, j, full, quick)
        answers.append(full >= threshold)
    assert any(answers) and not all(answers)  # both kinds of pair were asked
