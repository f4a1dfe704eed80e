"""Multi-GPU (and multi-node) training with torchrun and DistributedDataParallel.

``TRAIN_NPROC_PER_NODE=N`` (N > 1) makes :func:`train` start ``torchrun --standalone
--nproc_per_node N -m trainer.distributed``: N ranks run trainer.train_vit's ``train_model``, with
these pieces switched on (each is a no-op in a single process, so train_vit.py calls them always):

* :func:`wrap`: the model in DDP (gradients averaged across ranks after every backward);
* :func:`shard`: the training loader over a DistributedSampler (each rank a disjoint share, reshuffled
  every epoch from TRAIN_SEED), at TRAIN_BATCH_SIZE / N images per rank so the global batch, the
  steps per epoch and the learning-rate schedule are those of one process;
* :func:`mean`: the training loss averaged across ranks; validation is scored on the whole
  validation set by every rank, so its metrics are the same on all of them;
* :func:`is_main`: rank 0 alone evaluates promotion, writes artifacts and registers the version.

Rank 0's progress and result come back to the caller through files in a private folder (the job
row and the CLI see them as from one process). Several nodes: run ``torchrun --nnodes ...
-m trainer.distributed --from-env`` on each node yourself, with the same environment as the service.
CPU runs use the gloo backend, CUDA runs NCCL (one GPU per rank, by LOCAL_RANK).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from config.settings import Settings
from trainer.errors import TrainingError

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]
POLL_SECONDS = 0.5


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

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


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
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      persistent_workers=workers > 0, prefetch_factor=loader.prefetch_factor,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator)


def mean(value: float) -> float:
    """The average of ``value`` over the ranks (itself outside DDP)."""
    if not active():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


# ---- the caller's side -------------------------------------------------------------------------


def train(settings: Settings, progress: Progress | None = None) -> dict:
    """Train (trainer.train_vit.train_model) in this process, or with torchrun when
    TRAIN_NPROC_PER_NODE > 1; returns rank 0's result either way."""
    from trainer.train_vit import train_model

    nproc = settings.train_nproc_per_node
    if nproc > 1 and settings.train_mode == "linear_probe":
        log.info("TRAIN_MODE=linear_probe fits one head on cached features: one process, not %d", nproc)
        nproc = 1
    if nproc <= 1:
        return train_model(settings, progress)
    with tempfile.TemporaryDirectory(prefix="exposr-ddp-") as folder:
        work = Path(folder)
        (work / "settings.pickle").write_bytes(pickle.dumps(settings))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "trainer.distributed", str(work)]
        log.info("training with torchrun on %d processes", nproc)
        with open(work / "torchrun.log", "wb") as output:
            proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            try:
                seen = 0
                while proc.poll() is None:
                    seen = _forward_progress(work, seen, progress)
                    time.sleep(POLL_SECONDS)
                _forward_progress(work, seen, progress)
            finally:
                if proc.poll() is None:  # our caller was stopped: the ranks stop too
                    proc.terminate()
                    proc.wait(30)
        return _outcome(work, proc.returncode)


def _forward_progress(work: Path, seen: int, progress: Progress | None) -> int:
    path = work / "progress.jsonl"
    if not path.exists():
        return seen
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[seen:]:
        if progress is not None and line.strip():
            progress(json.loads(line))
    return len(lines)


def _outcome(work: Path, returncode: int) -> dict:
    if (work / "result.json").exists():
        return json.loads((work / "result.json").read_text(encoding="utf-8"))
    if (work / "error.json").exists():
        raise TrainingError(json.loads((work / "error.json").read_text(encoding="utf-8"))["message"])
    tail = (work / "torchrun.log").read_text(encoding="utf-8", errors="replace")[-2000:]
    raise TrainingError(f"distributed training (torchrun, TRAIN_NPROC_PER_NODE) exited with code "
                        f"{returncode} without a result; its last output:\n{tail}")


# ---- one rank ----------------------------------------------------------------------------------


def rank_main(argv: list[str]) -> int:
    from trainer.train_vit import train_model

    from_env = argv == ["--from-env"]
    if from_env:
        from config.settings import load_settings

        settings, work = load_settings(), None
    else:
        work = Path(argv[0])
        settings = pickle.loads((work / "settings.pickle").read_bytes())
    rank_tag = f"rank{os.environ.get('RANK', '?')}"
    logging.basicConfig(level=settings.log_level,  # to torchrun's output (the caller keeps its tail)
                        format=f"%(asctime)s %(levelname)s {rank_tag} %(name)s: %(message)s")
    cuda = settings.train_device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    world = dist.get_world_size()
    settings = settings.model_copy(update={"train_batch_size": max(1, settings.train_batch_size // world),
                                           "train_nproc_per_node": 1})

    def report(event: dict) -> None:
        if work is not None and is_main():
            with open(work / "progress.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event, default=str) + "\n")

    code = 0
    try:
        result = {**train_model(settings, report), "world_size": world}
        if work is not None and is_main():
            (work / "result.json").write_text(json.dumps(result, default=str), encoding="utf-8")
    except Exception as exc:  # the rank's boundary: rank 0's reason reaches the job row
        log.exception("distributed training failed on rank %d", dist.get_rank())
        if work is not None and is_main():
            (work / "error.json").write_text(json.dumps({"message": str(exc) or type(exc).__name__}),
                                             encoding="utf-8")
        code = 1
    finally:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
