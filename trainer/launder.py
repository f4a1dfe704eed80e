"""Laundering chains: what social platforms and messengers do to a picture before Exposr-Core sees
it (resize, re-encode), defined once and applied the same way in evaluation (report.json's
``robustness``) and, with ``TRAIN_LAUNDER_AUG=p``, as a training augmentation.

Each chain is a tuple of steps on a decoded RGB picture, applied to the stored original (decoded
at no less than ``LAUNDER_DECODE_SIDE`` on its shorter side, so the platform's resize sees a
picture at least as large as it would), then shrunk to the model's input size as usual:

=========================  ==========================================================================
``social_1080_q75``        shorter side to 1080 (never enlarged), JPEG q75, chroma 4:2:0
``messenger_1280_q60``     longer side to 1280 (never enlarged), JPEG q60, chroma 4:2:0
``webp_q80``               WebP q80 (lossy)
``screenshot_075_png``     resized ×0.75, PNG (lossless)
``reshare_twice``          ``social_1080_q75`` then ``messenger_1280_q60``: shared, then re-shared
=========================  ==========================================================================

Resizing is bilinear (what Pillow and most platforms' thumbnails use). No torch here: the chains
run in DataLoader workers and the tests check their output sizes and encodings directly.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image

from dataset.images import decode_rgb
from trainer.cache import decode_cached, encode_cached, shrink

# The decoder may reduce a large original by a power of two as long as its shorter side stays at
# least this: above every chain's own target size, so the chain's resize is what shrinks it.
LAUNDER_DECODE_SIDE = 1280
# The report launders at most this many evaluation images (evenly spread): on a 12 MP original the
# five chains take about 4 s of CPU (WebP at full size the most), against 0.04 s for the plain path.
LAUNDER_MAX_IMAGES = 200


@dataclass(frozen=True)
class Resize:
    """``shorter`` / ``longer``: that side to ``value`` px (never enlarged); ``scale``: × ``value``."""

    how: str
    value: float

    def size(self, width: int, height: int) -> tuple[int, int]:
        if self.how == "scale":
            factor = self.value
        else:
            side = min(width, height) if self.how == "shorter" else max(width, height)
            factor = min(1.0, self.value / side)
        return max(1, round(width * factor)), max(1, round(height * factor))

    def __call__(self, image: Image.Image) -> Image.Image:
        size = self.size(*image.size)
        return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class Encode:
    """A round trip through ``fmt`` (JPEG, WEBP, PNG) at ``quality``; JPEG chroma ``subsampling``
    2 = 4:2:0 (Pillow's numbering)."""

    fmt: str
    quality: int | None = None
    subsampling: int | None = None

    def encode(self, image: Image.Image) -> bytes:
        options: dict = {}
        if self.quality is not None:
            options["quality"] = self.quality
        if self.subsampling is not None:
            options["subsampling"] = self.subsampling
        buf = io.BytesIO()
        image.save(buf, format=self.fmt, **options)
        return buf.getvalue()

    def __call__(self, image: Image.Image) -> Image.Image:
        with Image.open(io.BytesIO(self.encode(image))) as decoded:
            return decoded.convert("RGB")


Step = Resize | Encode

SOCIAL: tuple[Step, ...] = (Resize("shorter", 1080), Encode("JPEG", 75, 2))
MESSENGER: tuple[Step, ...] = (Resize("longer", 1280), Encode("JPEG", 60, 2))
CHAINS: dict[str, tuple[Step, ...]] = {
    "social_1080_q75": SOCIAL,
    "messenger_1280_q60": MESSENGER,
    "webp_q80": (Encode("WEBP", 80),),
    "screenshot_075_png": (Resize("scale", 0.75), Encode("PNG")),
    "reshare_twice": SOCIAL + MESSENGER,
}


class Chain:
    """One named chain, callable on a decoded picture (picklable for DataLoader workers)."""

    def __init__(self, name: str) -> None:
        if name not in CHAINS:
            raise ValueError(f"unknown laundering chain {name!r}; known: {', '.join(CHAINS)}")
        self.name = name

    @property
    def steps(self) -> tuple[Step, ...]:
        return CHAINS[self.name]

    def __call__(self, image: Image.Image) -> Image.Image:
        for step in self.steps:
            image = step(image)
        return image

    def __repr__(self) -> str:
        return f"Chain({self.name!r})"


class Launder:
    """Which chain (if any) a picture goes through on each load: ``chains`` with probability ``p``
    (one of them drawn uniformly), else none. ``p=1`` with one chain: the evaluation's fixed chain.

    Draws from Python's ``random`` (the DataLoader seeds it per worker from TRAIN_SEED)."""

    def __init__(self, p: float, chains: tuple[str, ...] = tuple(CHAINS)) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"the laundering probability must be within [0, 1], got {p}")
        self.p, self.chains = p, tuple(Chain(name) for name in chains)

    def pick(self) -> Chain | None:
        if self.p <= 0 or not self.chains:
            return None
        if self.p < 1 and random.random() >= self.p:
            return None
        return self.chains[0] if len(self.chains) == 1 else random.choice(self.chains)

    def __repr__(self) -> str:
        return f"Launder(p={self.p}, chains={[c.name for c in self.chains]})"


def laundered_picture(
    data: bytes, chain: Chain, reduce_to: int | None, max_pixels: int, quality: int | None
) -> Image.Image:
    """The picture the model's transform starts from, after ``chain``: decode the original (reduced
    to no less than LAUNDER_DECODE_SIDE), launder, then shrink and round-trip as trainer.cache's
    ``prepared`` does for every other picture."""
    image = chain(decode_rgb(data, max_pixels=max_pixels, reduce_to=LAUNDER_DECODE_SIDE))
    if reduce_to:
        image = shrink(image, reduce_to)
    return image if quality is None else decode_cached(encode_cached(image, quality))
