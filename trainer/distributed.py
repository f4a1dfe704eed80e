"""Multi-GPU (and multi-node) training with torchrun and DistributedDataParallel.

``TRAIN_NPROC_PER_NODE=N`` (N > 1) makes :func:`train` start ``torchrun --standalone
--nproc_per_node N -m trainer.distributed``: N ranks run trainer.train's ``train_model``, with
these pieces (``trainer/ddp.py``) switched on (each is a no-op in a single process, so the training
calls them always):

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
from pathlib import Path

import torch
import torch.distributed as dist

from config.progress import Progress
from config.settings import Settings
from trainer.ddp import active, is_main, mean, shard, wrap
from trainer.errors import TrainingError
from trainer.results import TrainResult

__all__ = ["active", "is_main", "mean", "rank_main", "shard", "train", "wrap"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


# ---- the caller's side -------------------------------------------------------------------------


def train(settings: Settings, progress: Progress | None = None) -> TrainResult:
    """Train (trainer.train.train_model) in this process, or with torchrun when
    TRAIN_NPROC_PER_NODE > 1; returns rank 0's result either way."""
    from trainer.train import train_model

    nproc = settings.train_nproc_per_node
    if nproc > 1 and settings.train_mode == "linear_probe":
        log.info("TRAIN_MODE=linear_probe fits one head on cached features: one process, not %d", nproc)
        nproc = 1
    if nproc <= 1:
        return train_model(settings, progress)
    with tempfile.TemporaryDirectory(prefix="exposr-ddp-") as folder:
        work = Path(folder)
        (work / "settings.pickle").write_bytes(pickle.dumps(settings))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "trainer.distributed",
            str(work),
        ]
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


def _outcome(work: Path, returncode: int) -> TrainResult:
    if (work / "result.json").exists():
        return json.loads((work / "result.json").read_text(encoding="utf-8"))
    if (work / "error.json").exists():
        raise TrainingError(json.loads((work / "error.json").read_text(encoding="utf-8"))["message"])
    tail = (work / "torchrun.log").read_text(encoding="utf-8", errors="replace")[-2000:]
    raise TrainingError(
        f"distributed training (torchrun, TRAIN_NPROC_PER_NODE) exited with code "
        f"{returncode} without a result; its last output:\n{tail}"
    )


# ---- one rank ----------------------------------------------------------------------------------


def rank_main(argv: list[str]) -> int:
    from trainer.train import train_model

    from_env = argv == ["--from-env"]
    if from_env:
        from config.settings import load_settings

        settings, work = load_settings(), None
    else:
        work = Path(argv[0])
        settings = pickle.loads((work / "settings.pickle").read_bytes())
    rank_tag = f"rank{os.environ.get('RANK', '?')}"
    logging.basicConfig(
        level=settings.log_level,  # to torchrun's output (the caller keeps its tail)
        format=f"%(asctime)s %(levelname)s {rank_tag} %(name)s: %(message)s",
    )
    cuda = settings.train_device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    world = dist.get_world_size()
    settings = settings.model_copy(
        update={"train_batch_size": max(1, settings.train_batch_size // world), "train_nproc_per_node": 1}
    )

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
            (work / "error.json").write_text(
                json.dumps({"message": str(exc) or type(exc).__name__}), encoding="utf-8"
            )
        code = 1
    finally:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1:]))
