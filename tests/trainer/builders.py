"""Small labelled image datasets written to real storage, for the trainer tests."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from dataset.images import inspect_image
from dataset.manager import Sample
from dataset.storage import LocalStorage
from tests.images import encode, scene

# A colour cast per class: survives crop, flip and JPEG, so a tiny model can learn it in seconds --
# but so does a logistic regression on 8x8 colour thumbnails: a *content* shortcut, which the
# content-baseline gate (PROMOTION_CONTENT_BASELINE) refuses. For tests about shortcuts, and for
# tests that expect no promotion and need a signal learnt in 2 epochs.
TINT = {"real": (40, 200, 60), "ai": (200, 40, 200)}
# The class signal of the sets that must reach promotion: AI pictures carry a fine zero-mean
# checkerboard (a stand-in for a generator's periodic upsampling trace), real ones do not. The
# colours are the same random scenes in both classes, so an 8x8 colour thumbnail (or its
# histogram of averages) sees nothing; the texture survives the resize to 32 px and JPEG q50+.
# Grey levels added / taken per pixel, all three channels alike. At 10 + 10 evaluation images the
# baseline is 0.4-0.8 by chance and the paired interval about +-0.3 wide, so the model must be
# near-perfect: measured, at 40 the tiny model reached 0.85-0.97 AUC on 60-80 images, at 50 0.92 on
# 24 and 0.67 in 2 epochs on 40.
TEXTURE_AMPLITUDE = 64


def tinted(seed: int, label: str, size=(48, 40)) -> Image.Image:
    """A scene with a per-class colour cast: separable by content alone (the shortcut)."""
    return Image.blend(scene(seed, size), Image.new("RGB", size, TINT[label]), 0.45)


def textured(seed: int, label: str, size=(48, 40)) -> Image.Image:
    """A scene; AI ones with a checkerboard of cells ``max(3, width // 16)`` px (period 6-8 px at
    48-96 px wide, 4-6 px once resized for a 32 px training) of zero mean: the average colour of
    every 8x8 thumbnail cell is unchanged, so only a model that sees fine texture tells them apart.
    Its sign is drawn per block of 2 x 2 cells, so two AI pictures' textures do not correlate (the
    content signatures' cross-correlation would otherwise join unrelated AI pictures as copies)."""
    img = scene(seed, size)
    if label != "ai":
        return img
    w, h = size
    cell = max(3, w // 16)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    signs = rng.choice([-1.0, 1.0], size=(h // (2 * cell) + 1, w // (2 * cell) + 1))
    checker = np.where((x // cell + y // cell) % 2 == 0, 1.0, -1.0)
    pattern = (checker * signs[y // (2 * cell), x // (2 * cell)])[..., None]
    pixels = np.asarray(img, dtype=np.float64) + TEXTURE_AMPLITUDE * pattern
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


SIGNALS = {"texture": textured, "cast": tinted}


def make_samples(
    storage: LocalStorage,
    n: int,
    *,
    seed: int = 0,
    learnable: bool = True,
    source_of=lambda i: "folder",
    signal: str = "texture",
) -> list[Sample]:
    """``n`` stored images, half per label; with ``learnable=False`` the labels are random.
    ``signal``: "texture" (:func:`textured`, what a content-only baseline cannot see) or "cast"
    (:func:`tinted`, a colour cast it sees as well as the model)."""
    draw = SIGNALS[signal]
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        label = "ai" if i % 2 else "real"
        drawn_as = label if learnable else rng.choice(["real", "ai"])
        fmt = "PNG" if i % 3 == 0 else "JPEG"  # mixed formats in both classes
        data = encode(draw(seed * 100_000 + i, drawn_as), fmt)
        samples.append(store(storage, f"img-{seed}-{i:05d}", label, data, source_of(i)))
    return samples


def store(storage: LocalStorage, image_id: str, label: str, data: bytes, source: str = "folder") -> Sample:
    info = inspect_image(data, max_bytes=10_000_000, min_side=8, max_pixels=10_000_000)
    key = f"images/2026/01/01/{image_id}.{info.ext}"
    storage.put(key, data)
    return Sample(
        id=image_id,
        label=label,
        source=source,
        image_key=key,
        meta_key=f"meta/2026/01/01/{image_id}.json",
        sha256=info.sha256,
        phash=info.phash,
        width=info.width,
        height=info.height,
        created_at="2026-01-01T00:00:00Z",
    )


def fake_sample(image_id: str, label: str, phash: int, source: str = "folder") -> Sample:
    """A sample that exists only in the index (for split tests, which never read images)."""
    return Sample(
        id=image_id,
        label=label,
        source=source,
        image_key=f"images/x/{image_id}.jpg",
        meta_key=f"meta/x/{image_id}.json",
        sha256=image_id,
        phash=phash,
        width=64,
        height=64,
        created_at="2026-01-01T00:00:00Z",
    )
