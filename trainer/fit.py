"""Fitting the model on the training side: the fine-tune loop (``train_one_epoch`` then an
evaluation and a checkpoint per epoch) or, with ``TRAIN_MODE=linear_probe``, a linear head on the
frozen backbone's cached features (trainer/probe.py). Either returns a ``FitResult``.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from config.progress import Progress
from config.settings import Settings
from dataset.manager import Sample
from dataset.storage import StorageDriver
from trainer import ddp
from trainer.cache import ImageCache
from trainer.checkpoint import Resume, restore_rng, rng_state
from trainer.data import eval_transform, evaluation_loader
from trainer.errors import TrainingError
from trainer.evaluate import CLASS_INDEX, Scores, classification_metrics, evaluate
from trainer.loaders import stored_images
from trainer.modeling import Network
from trainer.probe import FeatureMatrix, FeatureStore, embed_chunks, feature_id, fit_head, set_head
from trainer.progress import OnBatch, batch_reporter
from trainer.registry import make_staging_dir

log = logging.getLogger(__name__)

WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.1  # of all optimiser steps, linear warm-up before the cosine decay


@dataclass
class FitRun:
    """What a fit (fine-tune or linear probe) works with, built once by the training."""

    settings: Settings
    net: Network
    train_set: list[Sample]
    val_set: list[Sample]
    train_loader: DataLoader
    val_loader: DataLoader
    storage: StorageDriver
    cache: ImageCache | None
    resume: Resume
    progress: Progress | None


@dataclass
class FitResult:
    """A finished fit: the model to evaluate and save, its last validation scores and the run's facts."""

    model: torch.nn.Module  # the EMA weights when TRAIN_EMA_DECAY is set
    scores: Scores  # the last validation pass
    metrics: dict  # classification_metrics of those scores
    skipped: set[str]  # ids of the samples that could not be read, each counted once
    train_losses: list[float]
    epoch_history: list[dict]  # one epoch_row per epoch: the curves of report.json
    class_weights: dict[str, float] | None  # TRAIN_BALANCE=loss
    resumed_from_epoch: int | None = None  # fine-tune: a killed run continued after this epoch
    linear_probe: dict | None = None  # linear probe: embedded, reused, features, seconds

    def facts(self) -> dict:
        """The fit's part of the training's result (TrainResult), with the keys each mode gives."""
        out: dict = {"train_losses": self.train_losses, "epoch_history": self.epoch_history}
        if self.linear_probe is None:
            out["resumed_from_epoch"] = self.resumed_from_epoch
        out["class_weights"] = self.class_weights
        if self.linear_probe is not None:
            out["linear_probe"] = self.linear_probe
        return out


def fit(run: FitRun) -> FitResult:
    """The fit TRAIN_MODE asks for."""
    return (fit_linear_probe if run.settings.train_mode == "linear_probe" else fit_finetune)(run)


@dataclass
class Loop:
    """The fine-tune loop's state, saved in each epoch's checkpoint."""

    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    weights: torch.Tensor | None  # class weights of the loss (TRAIN_BALANCE=loss)
    step: int = 0
    skipped: set[str] = field(default_factory=set)
    losses: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    first: int = 1  # the first epoch to run

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def fit_finetune(run: FitRun) -> FitResult:
    """The fine-tune loop: every epoch trains, evaluates (the EMA weights when TRAIN_EMA_DECAY is set)
    and checkpoints, so a killed run resumes from its last finished epoch."""
    settings, net = run.settings, run.net
    loop = start_loop(run)
    resumed_from = loop.first - 1 if loop.first > 1 else None
    scored_model = loop.ema.module if loop.ema is not None else net.model
    trained = ddp.wrap(net.model, net.device)  # DDP under torchrun (trainer/distributed.py); else the model
    scores = metrics = None
    for epoch in range(loop.first, settings.train_epochs + 1):
        scores, metrics = finetune_epoch(run, loop, trained, scored_model, epoch)
    if scores is None or metrics is None:  # killed after its last checkpoint: every epoch is done
        scores = evaluate(scored_model, run.val_loader, net.prepare, net.amp_dtype)
        metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
    return FitResult(
        scored_model,
        scores,
        metrics,
        loop.skipped,
        loop.losses,
        loop.history,
        weights_dict(loop.weights),
        resumed_from_epoch=resumed_from,
    )


def start_loop(run: FitRun) -> Loop:
    """Optimiser, schedule, scaler, EMA and loss weights, continued from the checkpoint if any."""
    settings, model, amp_dtype = run.settings, run.net.model, run.net.amp_dtype
    optimizer, scheduler = build_optimizer(model, settings, settings.train_epochs * len(run.train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=settings.train_ema_decay) if settings.train_ema_decay > 0 else None
    weights = class_weights(run.train_set, run.net.device) if settings.train_balance == "loss" else None
    loop = Loop(optimizer, scheduler, scaler, ema, weights)
    if (state := run.resume.load()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        restore_rng(state["rng"], run.train_loader.generator)
        loop.step, loop.skipped, loop.losses = state["step"], set(state["skipped"]), list(state["losses"])
        loop.history = list(state.get("history", []))  # checkpoints of older versions have none
        loop.first = state["epoch"] + 1
    return loop


def finetune_epoch(
    run: FitRun, loop: Loop, trained: torch.nn.Module, scored_model: torch.nn.Module, epoch: int
) -> tuple[Scores, dict]:
    """One epoch: a pass over the training side, the validation scores, the checkpoint, the report."""
    settings, net = run.settings, run.net
    train_loss, loop.step, unreadable = train_one_epoch(
        trained,
        run.train_loader,
        net.prepare,
        loop.optimizer,
        loop.scheduler,
        loop.scaler,
        net.amp_dtype,
        loop.step,
        on_batch=batch_reporter(run.progress, epoch, settings.train_epochs),
        ema=loop.ema,
        class_weights=loop.weights,
    )
    train_loss = ddp.mean(train_loss)
    scores = evaluate(scored_model, run.val_loader, net.prepare, net.amp_dtype)
    # A broken file fails again every epoch: count it once, by sample id.
    loop.skipped |= {run.train_set[i].id for i in unreadable} | {run.val_set[i].id for i in scores.skipped}
    metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
    loop.losses.append(train_loss)
    loop.history.append(epoch_row(epoch, train_loss, metrics, loop.lr()))
    if ddp.is_main():  # one checkpoint per training, rank 0's
        run.resume.save(checkpoint(run, loop, epoch))
    report_epoch(run.progress, epoch_event(epoch, settings.train_epochs, train_loss, metrics, loop.lr()))
    return scores, metrics


def checkpoint(run: FitRun, loop: Loop, epoch: int) -> dict:
    """Everything a killed run needs to continue after ``epoch`` (trainer/checkpoint.py)."""
    return {
        "epoch": epoch,
        "step": loop.step,
        "model": run.net.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "ema": loop.ema.module.state_dict() if loop.ema is not None else None,
        "rng": rng_state(run.train_loader.generator),
        "skipped": sorted(loop.skipped),
        "losses": loop.losses,
        "history": loop.history,
    }


@dataclass
class ProbeHead:
    """The linear head fitted on the frozen features, and what it took."""

    weight: torch.Tensor
    bias: torch.Tensor
    loss: float
    weights: torch.Tensor | None  # class weights of the loss (TRAIN_BALANCE=loss)
    skipped: set[str]  # ids of the samples whose features could not be computed
    embedded: int  # images embedded now
    reused: int  # images whose features were stored already
    dims: int  # feature dimensions


def fit_linear_probe(run: FitRun) -> FitResult:
    """Frozen backbone, embeddings cached per image, the linear head fitted on them (trainer/probe.py)."""
    settings, net = run.settings, run.net
    started = time.monotonic()
    for p in net.model.parameters():
        p.requires_grad_(False)
    head = fit_probe_head(run)
    try:
        set_head(net.model, head.weight, head.bias)
    except ValueError as exc:
        raise TrainingError(f"TRAIN_ARCH={settings.train_arch!r}: {exc}") from exc
    scores = evaluate(net.model, run.val_loader, net.prepare, net.amp_dtype)
    skipped = head.skipped | {run.val_set[i].id for i in scores.skipped}
    metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
    report_epoch(run.progress, epoch_event(1, 1, head.loss, metrics, None))
    return FitResult(
        net.model,
        scores,
        metrics,
        skipped,
        [head.loss],
        [epoch_row(1, head.loss, metrics, None)],
        weights_dict(head.weights),
        linear_probe={
            "embedded": head.embedded,
            "reused": head.reused,
            "features": head.dims,
            "seconds": round(time.monotonic() - started, 2),
        },
    )


def fit_probe_head(run: FitRun) -> ProbeHead:
    """The features of every sample (stored ones reused, the missing ones embedded and stored), and
    the head fitted on the training side's."""
    settings, net, train_set = run.settings, run.net, run.train_set
    store = FeatureStore(run.storage, feature_id(settings.train_arch, net.model, net.pre.as_dict()))
    everyone = train_set + run.val_set
    # The features live in float16 files in a private folder of models_dir (removed after the fit;
    # clean_stale removes it after a kill), written one shard or chunk at a time and read back a
    # chunk at a time by the head fit: memory stays flat however many images there are.
    scratch = make_staging_dir(settings.models_dir)
    try:
        features = store.load(FeatureMatrix(scratch))
        found = features.rows_of([s.sha256 for s in everyone])
        missing = [s for s, row in zip(everyone, found, strict=True) if row < 0]
        if missing:
            data = stored_images(run.storage, missing, eval_transform(net.pre), net.pre, settings, run.cache)
            loader = evaluation_loader(data, settings, net.device)
            # Each chunk is stored as a shard and appended to what was loaded (not read back).
            for where, feats in embed_chunks(net.model, loader, net.prepare, net.amp_dtype):
                features.append(store.add([missing[i].sha256 for i in where], feats), feats)
        rows = features.rows_of([s.sha256 for s in everyone])
        skipped = {s.id for s, row in zip(everyone, rows, strict=True) if row < 0}
        train_rows = rows[: len(train_set)]
        have = [s for s, row in zip(train_set, train_rows, strict=True) if row >= 0]
        if not have or len({s.label for s in have}) < 2:
            raise TrainingError(
                "linear_probe: the training side has no readable image of a class; "
                "run the dataset check command"
            )
        x = features.gather(train_rows[train_rows >= 0])
        y = np.array([CLASS_INDEX[s.label] for s in have], dtype=np.int64)
        weights = class_weights(have, torch.device("cpu")) if settings.train_balance == "loss" else None
        weight, bias, loss = fit_head(x, y, weights)
        dims = features.dims
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ProbeHead(weight, bias, loss, weights, skipped, len(missing), len(everyone) - len(missing), dims)


def build_optimizer(model: torch.nn.Module, settings: Settings, total_steps: int):
    """AdamW (no decay on norms and biases), linear warm-up then cosine decay, stepped per batch."""
    optimizer = create_optimizer_v2(model, "adamw", lr=settings.train_lr, weight_decay=WEIGHT_DECAY)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        lr_min=settings.train_lr * 0.01,
        warmup_t=max(1, int(total_steps * WARMUP_FRACTION)),
        warmup_lr_init=settings.train_lr * 0.01,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def train_one_epoch(
    model,
    loader,
    prepare,
    optimizer,
    scheduler,
    scaler,
    amp_dtype,
    step: int,
    on_batch: OnBatch | None = None,
    *,
    ema=None,
    class_weights: torch.Tensor | None = None,
) -> tuple[float, int, set[int]]:
    """One pass over the training loader; returns (mean loss, optimiser steps so far, positions of
    the images that could not be read).

    ``prepare`` moves a uint8 batch to the device and normalises it (trainer.data.Normalizer).
    ``on_batch(batch, batches, images seen)`` follows the pass (trainer.progress.batch_reporter).
    """
    model.train()
    loss_sum, seen, skipped = 0.0, 0, set()
    for batch, (images, targets, _, unreadable) in enumerate(loader, start=1):
        skipped.update(unreadable)
        if len(targets) == 0:
            if on_batch:
                on_batch(batch, len(loader), seen)
            continue
        images = prepare(images)
        targets = targets.to(images.device, non_blocking=True)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(images), targets, weight=class_weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        scheduler.step_update(num_updates=step)
        if ema is not None:
            ema.update(model, step=step)
        loss_sum += loss.item() * len(targets)
        seen += len(targets)
        if on_batch:
            on_batch(batch, len(loader), seen)
    if seen and not math.isfinite(loss_sum):
        raise TrainingError("training loss diverged (not finite); lower TRAIN_LR")
    return (loss_sum / seen if seen else float("nan")), step, skipped


def class_weights(samples: list[Sample], device: torch.device) -> torch.Tensor:
    """Loss weights n / (2 n_class): each class weighs as much as the other, whatever their sizes."""
    counts = Counter(s.label for s in samples)
    total = sum(counts.values())
    return torch.tensor(
        [total / (2 * max(1, counts[label])) for label in CLASS_INDEX], dtype=torch.float32, device=device
    )


def weights_dict(weights: torch.Tensor | None) -> dict[str, float] | None:
    if weights is None:
        return None
    return {label: round(float(weights[i]), 4) for label, i in CLASS_INDEX.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_row(epoch: int, train_loss: float, metrics: dict, lr: float | None) -> dict:
    """One epoch of the training curve kept in report.json (the console plots it)."""
    return {
        "epoch": epoch,
        "train_loss": _rounded(train_loss),
        "val_loss": _rounded(metrics.get("val_loss")),
        "val_auc": _rounded(metrics.get("val_auc")),
        "val_acc": _rounded(metrics.get("val_acc")),
        "lr": None if lr is None else float(f"{lr:.4g}"),
    }


def epoch_event(epoch: int, epochs: int, train_loss: float, metrics: dict, lr: float | None) -> dict:
    """The progress report at the end of an epoch."""
    return {
        "stage": "train",
        "epoch": epoch,
        "epochs": epochs,
        "train_loss": train_loss,
        "val_loss": metrics["val_loss"],
        "val_auc": metrics["val_auc"],
        "val_acc": metrics["val_acc"],
        "lr": lr,
    }


def report_epoch(progress: Progress | None, event: dict) -> None:
    log.info(
        "epoch %d/%d train_loss=%s val_loss=%s val_auc=%s",
        event["epoch"],
        event["epochs"],
        _fmt(event["train_loss"]),
        _fmt(event["val_loss"]),
        _fmt(event["val_auc"]),
    )
    if progress is not None:
        progress(event)


def _rounded(value, digits: int = 4):
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


def _fmt(value, digits: int = 4) -> str:
    """A metric for a log line: 4 decimals (what the figures mean at these sample sizes), or n/a."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
