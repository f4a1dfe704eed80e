"""Resuming a training killed mid-run from its last finished epoch.

After every epoch the fine-tune loop writes ``models/.resume/{MODEL_NAME}-{fingerprint}.pt``:
model, optimiser, scheduler, grad scaler, EMA weights, the random states (Python, NumPy, torch,
the DataLoader's shuffling generator) and the losses so far. The fingerprint covers every setting
that shapes the run and the exact training and evaluation images, so a checkpoint is only ever
picked up by the same run; a successful training removes it. Writes are atomic (temp file,
``os.replace``), so a kill during the write leaves the previous epoch's checkpoint.

With ``TRAIN_WORKERS=0`` a resumed run repeats the uninterrupted one step for step; with worker
processes the augmentations after the resume come from freshly seeded workers (same
distribution, not the same draws).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

RESUME_DIR = ".resume"
_SHAPING = (
    "train_arch",
    "train_mode",
    "train_pretrained",
    "train_pretrained_file",
    "train_image_size",
    "train_epochs",
    "train_batch_size",
    "train_lr",
    "train_seed",
    "train_ema_decay",
    "train_balance",
    "train_cache",
    "model_name",
)


def fingerprint(settings, train_ids: list[str], eval_ids: list[str]) -> str:
    shaping = {name: str(getattr(settings, name, None)) for name in _SHAPING}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    for ids in (sorted(train_ids), sorted(eval_ids)):
        digest.update(b"\0".join(i.encode() for i in ids) + b"\1")
    return digest.hexdigest()


def rng_state(loader_generator: torch.Generator | None) -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }


def restore_rng(state: dict, loader_generator: torch.Generator | None) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])


class Resume:
    def __init__(self, models_dir: Path, model_name: str, print_: str) -> None:
        self.folder = Path(models_dir) / RESUME_DIR
        self.model_name = model_name
        self.path = self.folder / f"{model_name}-{print_[:16]}.pt"

    def load(self) -> dict | None:
        """The checkpoint of this very run, or None (a stale one of another run is removed)."""
        if not self.path.is_file():
            self.clear()
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            log.warning("resume checkpoint %s unreadable (%s): starting over", self.path.name, exc)
            self.clear()
            return None
        log.info("resuming %s from the end of epoch %d", self.model_name, state["epoch"])
        return state

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Remove every checkpoint of this model (this run's and stale ones)."""
        if self.folder.is_dir():
            for path in self.folder.glob(f"{self.model_name}-*"):
                path.unlink(missing_ok=True)
