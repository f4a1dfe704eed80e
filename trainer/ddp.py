"""The rank's side of distributed training (torchrun + DistributedDataParallel), as the training
calls it (trainer/train.py, fit.py, loaders.py): each piece is a no-op in a single process. The
caller's side (starting torchrun, reading rank 0's result) is ``trainer/distributed.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    return not active() or dist.get_rank() == 0


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train with (DDP across ranks); evaluate and save the unwrapped one.

    broadcast_buffers=False: a forward pass never needs the other ranks, so rank 0 can evaluate
    and report alone (BatchNorm statistics are rank 0's own, as saved)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


class _EpochSampler(DistributedSampler):
    """A DistributedSampler that moves to the next epoch by itself (a new shuffle each pass)."""

    def __iter__(self):
        iterator = super().__iter__()
        self.set_epoch(self.epoch + 1)
        return iterator


def shard(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader over this rank's share of the data (unchanged outside DDP)."""
    if not active():
        return loader
    sampler = _EpochSampler(loader.dataset, shuffle=True, seed=seed, drop_last=False)
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=loader.prefetch_factor,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        multiprocessing_context=loader.multiprocessing_context,
    )


def mean(value: float) -> float:
    """The average of ``value`` over the ranks (itself outside DDP)."""
    if not active():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()
