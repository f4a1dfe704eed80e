"""Small labelled image datasets written to real storage, for the trainer tests."""

from __future__ import annotations

import random

from PIL import Image

from dataset.images import inspect_image
from dataset.manager import Sample
from dataset.storage import LocalStorage
from tests.images import encode, scene

# A colour cast per class: survives crop, flip and JPEG, so a tiny model can learn it in seconds.
TINT = {"real": (40, 200, 60), "ai": (200, 40, 200)}


def tinted(seed: int, label: str, size=(48, 40)) -> Image.Image:
    return Image.blend(scene(seed, size), Image.new("RGB", size, TINT[label]), 0.45)


def make_samples(
    storage: LocalStorage, n: int, *, seed: int = 0, learnable: bool = True, source_of=lambda i: "folder"
) -> list[Sample]:
    """``n`` stored images, half per label; with ``learnable=False`` the labels are random."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        label = "ai" if i % 2 else "real"
        drawn_as = label if learnable else rng.choice(["real", "ai"])
        fmt = "PNG" if i % 3 == 0 else "JPEG"  # mixed formats in both classes
        data = encode(tinted(seed * 100_000 + i, drawn_as), fmt)
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
