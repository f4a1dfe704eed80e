"""A torch Dataset that streams images from the storage driver, and the transforms both classes share.

Only keys and labels live in memory; each worker reads its images from the (picklable) storage
driver as the DataLoader asks for them.  Real and AI images go through exactly the same steps --
decode to RGB, resize/crop, flip, JPEG re-compression at a random quality -- so neither file format
nor size can become the feature the model learns.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import gc
import io
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from config.settings import Settings
from dataset.errors import ImageRejected, StorageError
from dataset.images import decode_rgb
from dataset.storage import StorageDriver
from trainer.cache import prepared
from trainer.launder import Launder, laundered_picture
from trainer.workers import worker_context

log = logging.getLogger(__name__)

TRAIN_JPEG_QUALITY = (50, 95)  # re-compression range during training
EVAL_JPEG_QUALITY = 90  # one fixed re-compression at evaluation/prediction: same path as training
EVAL_CROP_PCT = 0.875  # resize the shorter side to size / crop_pct, then centre-crop
# Decoding may reduce by a power of two as long as the shorter side stays >= this x image size.
# RandomResizedCrop's smallest crops (half the area, aspect 3:4..4:3) are then still >= the image
# size on 4:3 and 3:2 photos (1.06x, 1.13x); only on a square picture can one be ~0.92x (scaled up).
DECODE_MARGIN = 1.5


@dataclass(frozen=True)
class Preprocessing:
    """What a consumer needs to feed the model the way it was trained (stored in model.json)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = EVAL_CROP_PCT
    jpeg_quality: int = EVAL_JPEG_QUALITY
    cache_quality: int | None = None  # trained from the cache: its JPEG round trip (trainer/cache.py)

    @property
    def decode_side(self) -> int:
        """Shorter side the decoder may reduce big images to (see dataset.images.decode_rgb)."""
        return int(self.image_size * DECODE_MARGIN + 0.5)

    def as_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "jpeg_quality": self.jpeg_quality,
            "interpolation": "bilinear",
            "resize": "shorter_side",
            "decode_reduce_to": self.decode_side,
            # then the shorter side is resized to exactly this (bilinear; trainer/cache.py)
            "resize_shorter_to": self.decode_side,
            # then, when set, a JPEG round trip at this quality (4:4:4), as the training cache does
            "cache_jpeg_quality": self.cache_quality,
        }


def preprocessing_for(
    model: torch.nn.Module, image_size: int, cache_quality: int | None = None
) -> Preprocessing:
    """Mean/std from the model's pretrained config (timm.data), at our image size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
    return Preprocessing(
        image_size=image_size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), cache_quality=cache_quality
    )


class JpegRecompress:
    """Re-encode a PIL image as JPEG at a quality drawn from [low, high] (torch RNG: seeded per worker).

    Pillow rather than torchvision.io, whose JPEG codec is deprecated; it is also what encodes the
    JPEGs the scrapers download, so the artefacts match.
    """

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high if high is not None else low

    def __call__(self, image: Image.Image) -> Image.Image:
        quality = int(torch.randint(self.low, self.high + 1, ()).item()) if self.high > self.low else self.low
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.low}..{self.high})"


def train_transform(pre: Preprocessing) -> v2.Compose:
    """Random crop and flip, JPEG re-compression at a random quality; uint8 CHW tensor."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(pre.image_size, scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            JpegRecompress(*TRAIN_JPEG_QUALITY),
            v2.ToImage(),  # uint8: a quarter of the bytes to move; Normalizer finishes on the device
        ]
    )


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Deterministic: resize the shorter side, centre crop, one fixed JPEG re-compression; uint8."""
    return v2.Compose(
        [
            v2.Resize(int(round(pre.image_size / pre.crop_pct)), antialias=True),
            v2.CenterCrop(pre.image_size),
            JpegRecompress(pre.jpeg_quality),
            v2.ToImage(),
        ]
    )


class Normalizer:
    """uint8 batch -> normalised float batch on the device (scale to [0, 1], minus mean, over std).

    Done after the transfer rather than in the workers: the workers' CPU time is what limits
    throughput, and uint8 batches are 4x smaller to collate, pin and copy.
    """

    def __init__(self, pre: Preprocessing, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float()
        return (images - self.mean) / self.std


class PackedStrings(Sequence[str]):
    """Strings packed into one UTF-8 bytes object with an offsets array: a read-only sequence of str.

    A DataLoader worker (a fork of the trainer) that reads ``keys[i]`` from a list touches that
    string object's reference count, so the page holding it is copied into the worker; over an
    epoch that copies every page of the per-image objects into every worker. Reading from one
    bytes object and one numpy array copies nothing per image.
    """

    def __init__(self, values: Iterable[str]) -> None:
        encoded = [v.encode() for v in values]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._blob = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        return self._blob[int(self._offsets[index]) : int(self._offsets[index + 1])].decode()

    def take(self, positions: Iterable[int]) -> PackedStrings:
        return PackedStrings(self[i] for i in positions)

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {len(self._blob)} bytes)"


class StoredImages(Dataset):
    """(image tensor, class index, position) per stored key; an unreadable image yields
    (None, None, position), so the skip can be traced to its sample.

    Keys, sha256s and labels are kept packed (:class:`PackedStrings`, an int8 array): the DataLoader
    workers read them without copying the trainer's per-image objects (see PackedStrings).
    """

    def __init__(
        self,
        storage: StorageDriver,
        keys: Sequence[str],
        labels: Sequence[int],
        transform,
        max_pixels: int,
        reduce_to: int | None = None,
        *,
        cache=None,
        sha256s: Sequence[str] | None = None,
        quality: int | None = None,
    ) -> None:
        self.storage = storage
        self.samples: list = []  # set by the trainer: which sample each position is (reports, promotion)
        self.keys = PackedStrings(keys)
        self.labels = np.fromiter(labels, dtype=np.int8, count=len(labels))
        if len(self.labels) != len(self.keys):
            raise ValueError(f"{len(self.keys)} keys but {len(self.labels)} labels")
        self.transform = transform
        self.max_pixels = max_pixels
        self.reduce_to = reduce_to
        # trainer.cache.ImageCache at reduce_to, and the sha256 of each key: read the cached picture.
        self.cache = cache
        self.sha256s = PackedStrings(sha256s) if sha256s is not None else None
        self.quality = quality  # Preprocessing.cache_quality: the cache's JPEG round trip, cached or not
        # trainer.launder: a laundering chain applied to the original before the transform
        # (TRAIN_LAUNDER_AUG in training; one fixed chain in the report's robustness section).
        self.launder: Launder | None = None

    def subset(self, positions: Sequence[int]) -> StoredImages:
        """A copy holding only ``positions`` (in that order): keys, labels, sha256s and samples alike."""
        out = copy.copy(self)
        out.keys = self.keys.take(positions)
        out.labels = self.labels[np.asarray(positions, dtype=np.int64)]
        out.sha256s = self.sha256s.take(positions) if self.sha256s is not None else None
        out.samples = [self.samples[i] for i in positions] if self.samples else []
        return out

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        image = self.load(index)
        if image is None:
            return None, None, index
        return self.transform(image), int(self.labels[index]), index

    def load(self, index: int) -> Image.Image | None:
        key = self.keys[index]
        try:
            chain = self.launder.pick() if self.launder is not None else None
            if chain is not None:  # from the original: the chain's resize must see its full size
                return laundered_picture(
                    self.storage.get(key), chain, self.reduce_to, self.max_pixels, self.quality
                )
            cache = self.cache
            if (
                cache is not None
                and self.sha256s is not None
                and cache.side == self.reduce_to
                and cache.quality == self.quality
            ):
                return cache.load(self.sha256s[index], key)
            if not self.reduce_to:
                return decode_rgb(self.storage.get(key), max_pixels=self.max_pixels)
            return prepared(self.storage.get(key), self.reduce_to, self.max_pixels, self.quality)
        except (StorageError, ImageRejected, OSError) as exc:
            # One broken file must not end a training run: it is skipped and counted.
            log.warning("skipping %s: %s", key, exc)
            return None


def collate_skipping_broken(batch: list):
    """Stack the readable items; returns (images, labels, positions, positions of skipped items)."""
    items = [item for item in batch if item[0] is not None]
    skipped = [position for image, _, position in batch if image is None]
    if not items:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    images, labels, positions = zip(*items, strict=True)
    return (
        torch.stack(images),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(positions, dtype=torch.long),
        skipped,
    )


def make_loader(
    data: StoredImages,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    pin_memory: bool = False,
    drop_last: bool = False,
    persistent: bool = True,
) -> DataLoader:
    """``persistent=False`` for loaders used now and then (evaluation): their workers end after each
    pass instead of holding their memory through the whole training."""
    generator = torch.Generator().manual_seed(seed)  # shuffling and worker seeds follow TRAIN_SEED
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skipping_broken,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=functools.partial(init_worker, os.getpid()) if workers > 0 else None,
        # Never the process's default: in the service's spawned training child that is spawn
        # (trainer/workers.py says why it must match the cache's shared counter).
        multiprocessing_context=worker_context() if workers > 0 else None,
    )


def settings_loader(
    data: StoredImages, settings: Settings, device: torch.device, *, shuffle: bool, **options
) -> DataLoader:
    """:func:`make_loader` with TRAIN_BATCH_SIZE, TRAIN_WORKERS and TRAIN_SEED, pinned memory on CUDA."""
    return make_loader(
        data,
        batch_size=settings.train_batch_size,
        shuffle=shuffle,
        workers=settings.train_workers,
        seed=settings.train_seed,
        pin_memory=device.type == "cuda",
        **options,
    )


def evaluation_loader(data: StoredImages, settings: Settings, device: torch.device) -> DataLoader:
    """The fixed-order loader of every evaluation pass (validation, the probe's features, promotion's
    scoring), with workers that end after each pass."""
    return settings_loader(data, settings, device, shuffle=False, persistent=False)


def init_worker(parent_pid: int, worker_id: int | None = None) -> None:
    """A DataLoader worker's start: keep the trainer's objects shared, end with the trainer.

    ``gc.freeze()``: the objects this fork inherited from the trainer (every Sample, the split's
    tables, the modules) are left out of this worker's garbage collections; a full collection
    would otherwise write to each of them and so copy every page they sit on into this worker.
    """
    gc.freeze()
    die_with_parent(parent_pid, worker_id)


def die_with_parent(parent_pid: int, _worker_id: int | None = None) -> None:
    """Make this DataLoader worker end when the process that started it ends, however it ends.

    Workers of a training killed with SIGKILL (or whose service was) otherwise live on as
    orphans holding their memory: torch's own parent check does not fire while a worker waits
    to hand over a batch. Linux: the kernel sends SIGKILL on the parent's exit (PR_SET_PDEATHSIG).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError) as exc:
            log.debug("PR_SET_PDEATHSIG unavailable: %s", exc)
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)
