"""A training's images as loaders: the training cache built for its samples (TRAIN_CACHE), the
training loader (shuffled, augmented, sharded over the ranks) and the evaluation loader (fixed
order), over ``trainer.data.StoredImages``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from config.progress import Progress
from config.settings import Settings
from dataset.manager import Sample
from dataset.storage import StorageDriver
from trainer import ddp
from trainer.cache import ImageCache, cache_id
from trainer.data import (
    Preprocessing,
    StoredImages,
    eval_transform,
    evaluation_loader,
    settings_loader,
    train_transform,
)
from trainer.evaluate import CLASS_INDEX
from trainer.launder import Launder
from trainer.progress import stage, throttled


def stored_images(
    storage: StorageDriver,
    samples: Sequence[Sample],
    transform,
    pre: Preprocessing,
    settings: Settings,
    cache: ImageCache | None = None,
) -> StoredImages:
    """``samples`` as a torch Dataset; ``.samples`` says which sample each position is."""
    data = StoredImages(
        storage,
        [s.image_key for s in samples],
        [CLASS_INDEX[s.label] for s in samples],
        transform,
        settings.max_image_pixels,
        reduce_to=pre.decode_side,
        cache=cache,
        sha256s=[s.sha256 for s in samples],
        quality=pre.cache_quality,
    )
    data.samples = list(samples)  # which sample each position is (reports and promotion go by id)
    return data


def build_cache(
    settings: Settings,
    storage: StorageDriver,
    pre: Preprocessing,
    samples: list[Sample],
    progress: Progress | None = None,
) -> ImageCache | None:
    """The training cache at this preprocessing, with every sample's entry present (TRAIN_CACHE)."""
    if not settings.train_cache:
        return None
    assert pre.cache_quality is not None  # with TRAIN_CACHE the preprocessing has the cache's quality
    cache = ImageCache(storage, pre.decode_side, settings.max_image_pixels, pre.cache_quality)
    on_entry = None
    if progress is not None:
        stage(progress, "cache", done=0, total=len(samples))
        on_entry = throttled(lambda done, total: stage(progress, "cache", done=done, total=total))
    cache.build(
        ((s.sha256, s.image_key) for s in samples), workers=max(2, settings.train_workers), on_entry=on_entry
    )
    return cache


def cache_facts(cache: ImageCache | None) -> dict | None:
    """The training cache's counts for the result (None without TRAIN_CACHE)."""
    if cache is None:
        return None
    return {
        **cache.last_build.as_dict(),
        "rebuilt_while_reading": cache.rebuilt.value,
        "id": cache_id(cache.side, cache.quality),
    }


def build_loaders(
    storage: StorageDriver,
    train_set: list[Sample],
    val_set: list[Sample],
    pre: Preprocessing,
    settings: Settings,
    device: torch.device,
    cache: ImageCache | None = None,
) -> tuple[DataLoader, StoredImages, DataLoader]:
    """(train loader, validation dataset, validation loader): shuffled/augmented vs fixed order."""
    train_data = stored_images(storage, train_set, train_transform(pre), pre, settings, cache)
    if settings.train_launder_aug > 0:  # docs/evaluation.md: the laundering chains as augmentation
        train_data.launder = Launder(settings.train_launder_aug)
    train_loader = settings_loader(
        train_data, settings, device, shuffle=True, drop_last=len(train_set) > settings.train_batch_size
    )
    val_data = stored_images(storage, val_set, eval_transform(pre), pre, settings, cache)
    val_loader = evaluation_loader(val_data, settings, device)
    return ddp.shard(train_loader, settings.train_seed), val_data, val_loader
