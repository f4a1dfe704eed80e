"""Training, top to bottom: load -> split -> build -> loop -> evaluate -> save -> register.

``train_model`` is synchronous and long: the app runs it in its own process, the CLI in the
foreground.  It either registers a new version or raises ``TrainingError`` and leaves
``models/`` as it was (see trainer/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from config.clock import iso_seconds
from config.progress import Progress
from config.settings import Settings
from dataset.facts import has_exif
from dataset.manager import DatasetManager, Sample
from dataset.storage import StorageDriver, StorageError
from trainer import ddp
from trainer.architectures import check_architecture
from trainer.baseline import content_baseline
from trainer.cache import CACHE_QUALITY, ImageCache, cache_id
from trainer.checkpoint import Resume, fingerprint, restore_rng, rng_state
from trainer.data import (
    Normalizer,
    Preprocessing,
    StoredImages,
    eval_transform,
    evaluation_loader,
    make_loader,
    preprocessing_for,
    settings_loader,
    train_transform,
)
from trainer.errors import TrainingError
from trainer.evaluate import CLASS_INDEX, accuracy_by_source, classification_metrics, evaluate
from trainer.future import FutureChoice, by_month, choose_future
from trainer.launder import CHAINS, LAUNDER_MAX_IMAGES, Launder
from trainer.modeling import build_model, pick_device, save_artifacts
from trainer.operating import TARGET_FPRS, operating_points, served_threshold
from trainer.probe import FeatureMatrix, FeatureStore, embed_chunks, feature_id, fit_head, set_head
from trainer.progress import OnBatch, batch_reporter
from trainer.promotion import TRAIN_IDS_FILE, decide_promotion, training_record
from trainer.registry import clean_stale, commit_version, load_registry, make_staging_dir, write_json_atomic
from trainer.report import (
    FORMAT_SWAP_MAX_IMAGES,
    ROBUSTNESS,
    Perturb,
    Scored,
    by_attribute,
    calibrate,
    evaluation_block,
    figure,
    format_swap_auc,
    laundered,
    perturbed,
    robustness_block,
    scored,
    shortcut_probe,
)
from trainer.results import TrainResult
from trainer.signatures import content_signatures
from trainer.split import SplitPlan, assign_splits, leakage

log = logging.getLogger(__name__)

WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.1  # of all optimiser steps, linear warm-up before the cosine decay
MAX_SKIPPED_IDS = 50  # ids of unreadable images listed in the result (the count covers all)
REPORT_FILE = "report.json"


def train_model(settings: Settings, progress: Progress | None = None) -> TrainResult:
    """Train on the labelled dataset and register the result; returns the registry entry + metrics.

    The split sides decided for new images are stored in the index before training starts, so they
    hold for every later training (trainer/split.py).
    """
    check_architecture(settings.train_arch)  # a typo fails now, not after loading and splitting
    _stage(progress, "load")
    samples, storage = load_samples(settings)
    return train_on_samples(
        settings,
        samples,
        storage,
        progress,
        record_splits=lambda decided: _run_async(_record_splits(settings, decided)),
    )


def train_on_samples(
    settings: Settings,
    samples: list[Sample],
    storage: StorageDriver,
    progress: Progress | None = None,
    record_splits: Callable[[dict], object] | None = None,
) -> TrainResult:
    started = time.monotonic()
    check_architecture(settings.train_arch)
    samples = [s for s in samples if s.label in CLASS_INDEX]  # unlabeled never enters training
    check_dataset(samples, settings.min_train_samples)
    clean_stale(settings.models_dir)

    _stage(progress, "split")
    future = choose_future(samples, settings.eval_future_generators, settings.eval_min_per_class)
    if future.held_out:
        log.info("future generators held out of training: %s", ", ".join(future.held_out))
    signatures = content_signatures(
        settings.models_dir, storage, samples, settings.max_image_pixels, max(1, settings.train_workers)
    )
    plan = plan_split(settings, samples, record_splits, future.held_out, signatures)
    train_set, val_set = plan.train, plan.eval
    check_training_set(train_set)
    _stage(progress, "audit")
    shortcut = shortcut_probe(
        train_set + val_set, _facts_reader(storage), plan.group_of, settings.shortcut_warn_auc
    )
    if shortcut["warning"]:
        log.warning("shortcut audit: %s", shortcut["warning"])
    if progress is not None:
        progress(
            {
                "stage": "audit",
                "shortcut_warning": shortcut["warning"],
                "metadata_probe_auc": shortcut["metadata_probe_auc"],
            }
        )

    seed_everything(settings.train_seed)
    _stage(progress, "model")
    device, amp_dtype = pick_device(settings.train_device)
    model = build_model(settings).to(device)
    pre = preprocessing_for(
        model, settings.train_image_size, cache_quality=CACHE_QUALITY if settings.train_cache else None
    )
    prepare = Normalizer(pre, device)
    cache = build_cache(settings, storage, pre, train_set + val_set + plan.held_out, progress)
    train_loader, val_data, val_loader = build_loaders(
        storage, train_set, val_set, pre, settings, device, cache
    )
    resume = Resume(
        settings.models_dir,
        settings.model_name,
        fingerprint(settings, [s.id for s in train_set], [s.id for s in val_set]),
    )

    staging = make_staging_dir(settings.models_dir)
    try:
        fit = fit_linear_probe if settings.train_mode == "linear_probe" else fit_finetune
        run = FitRun(
            settings,
            model,
            pre,
            prepare,
            device,
            amp_dtype,
            train_set,
            val_set,
            train_loader,
            val_loader,
            storage,
            cache,
            resume,
            progress,
        )
        model, scores, metrics, skipped, facts = fit(run)
        # The last references to the training loader: its workers (alive through the epochs) end
        # now instead of holding their memory through the report and promotion.
        del run, train_loader
        if not ddp.is_main():  # rank 0 alone evaluates promotion, writes and registers
            shutil.rmtree(staging, ignore_errors=True)
            return {"rank": "follower", "metrics": metrics}
        _stage(progress, "evaluate")
        evaluated = scored(val_set, scores)
        held_out: dict = {}
        report = build_report(
            settings,
            model,
            prepare,
            pre,
            amp_dtype,
            storage,
            plan,
            val_data,
            evaluated,
            shortcut,
            future,
            held_out,
        )
        report["content_baseline"], baseline_scores = content_baseline(
            train_set, evaluated, signatures, plan.group_of
        )
        report["backbone_warning"] = backbone_warning(settings)
        if report["backbone_warning"]:
            log.warning("%s", report["backbone_warning"])
        metrics["val_auc_ci95"] = report["evaluation"]["auc_ci95"]
        metrics["by_source"] = accuracy_by_source(
            scores.labels, scores.probs, [val_set[i].source for i in scores.positions]
        )
        promotion = decide_promotion(
            settings,
            evaluated,
            val_data,
            device,
            amp_dtype,
            class_totals(plan),
            dataset=samples,
            group_of=plan.group_of,
            unseen=(held_out["data"], held_out["scored"]) if held_out else None,
            baseline_scores=baseline_scores,
        )
        report["promotion"] = promotion
        report["training"] = {"epochs": facts.get("epoch_history", [])}  # the loss / AUC curves
        sizes = {"dataset_size": len(samples), "train_size": len(train_set), "val_size": len(val_set)}
        info = {
            "model": settings.model_name,
            "architecture": settings.train_arch,
            "metrics": metrics,
            **sizes,
            "seed": settings.train_seed,
            "epochs": settings.train_epochs,
            "trained_at": _now(),
            "temperature": report["evaluation"]["temperature"],
            "train_mode": settings.train_mode,
            "ema_decay": settings.train_ema_decay or None,
            "evaluation": headline(report),
            **served_threshold(report["operating_points"], settings.serve_target_fpr),
        }
        sha256 = save_artifacts(staging, model, pre, info)
        write_json_atomic(staging / REPORT_FILE, report)
        write_json_atomic(staging / TRAIN_IDS_FILE, training_record(train_set))
        entry = commit_version(
            settings.models_dir,
            staging,
            _registry_entry(settings, metrics, sizes, sha256, promotion, device, report),
            compared_with=promotion["compared_with"],
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves models/ as it was
        raise
    resume.clear()
    return cast(
        TrainResult,
        {
            **entry,
            "metrics": metrics,
            "skipped_images": len(skipped),
            "cache": _cache_facts(cache),
            **facts,
            "skipped_ids": sorted(skipped)[:MAX_SKIPPED_IDS],
            "shortcut_warning": shortcut["warning"],
            "backbone_warning": report["backbone_warning"],
            "duration_s": round(time.monotonic() - started, 1),
        },
    )


def plan_split(
    settings: Settings,
    samples: list[Sample],
    record_splits: Callable[[dict], object] | None = None,
    future_generators: tuple[str, ...] = (),
    signatures: dict | None = None,
) -> SplitPlan:
    """Sides for every sample (stored ones kept), the new decisions stored through ``record_splits``;
    ``future_generators`` (trainer/future.py) are held out like EVAL_HOLDOUT_GENERATORS;
    ``signatures`` (trainer/signatures.py) let edited copies join their originals' groups."""
    gate = gate_wanted(settings)
    plan = assign_splits(
        samples,
        radius=settings.split_near_dup_distance,
        eval_fraction=settings.val_fraction,
        min_per_class=settings.eval_min_per_class,
        holdout_generators=settings.holdout_generators | set(future_generators),
        holdout_sources=settings.holdout_sources,
        gate_wanted=gate,
        signatures=signatures,
    )
    if gate:
        log.info("split: the promotion gate asked for %s evaluation images (new images go there first)", gate)
    if record_splits is not None and plan.decided:
        record_splits(plan.decided)
    log.info(
        "split: %d train, %d evaluation, %d held out, %d excluded (%d newly decided; radius %d)",
        len(plan.train),
        len(plan.eval),
        len(plan.held_out),
        len(plan.excluded),
        len(plan.decided),
        settings.split_near_dup_distance,
    )
    return plan


def gate_wanted(settings: Settings) -> dict[str, int] | None:
    """The evaluation images per class the newest version's promotion decision asked for, if any."""
    entries = [e for e in load_registry(settings.models_dir) if e.get("model") == settings.model_name]
    if not entries:
        return None
    wanted = entries[-1].get("eval_wanted")
    return {str(k): int(v) for k, v in wanted.items()} if isinstance(wanted, dict) else None


def class_totals(plan: SplitPlan) -> dict[str, int]:
    """Labelled images per class outside the held-out sets: what the evaluation side's cap of half a
    class is taken of (trainer/split.py eval_targets)."""
    counts = Counter(s.label for s in (*plan.train, *plan.eval, *plan.excluded))
    return {label: counts[label] for label in CLASS_INDEX}


def build_report(
    settings: Settings,
    model,
    prepare,
    pre,
    amp_dtype,
    storage: StorageDriver,
    plan: SplitPlan,
    val_data: StoredImages,
    evaluated: Scored,
    shortcut: dict,
    future: FutureChoice | None = None,
    held_out: dict | None = None,
) -> dict:
    """report.json without its promotion section: every figure on images the model never trained on.

    ``held_out`` (when given) receives the held-out images (``data``) and their scores (``scored``)
    for the promotion decision."""

    def score(data: StoredImages, workers: int = 0) -> Scored:
        loader = make_loader(
            data,
            batch_size=settings.train_batch_size,
            shuffle=False,
            workers=workers,
            seed=settings.train_seed,
            persistent=False,
        )
        return scored(data.samples, evaluate(model, loader, prepare, amp_dtype))

    calibration = calibrate(evaluated, plan.group_of)
    block = evaluation_block(evaluated, calibration)
    held_data = (
        _images(storage, plan.held_out, eval_transform(pre), pre, settings, val_data.cache)
        if plan.held_out
        else None
    )
    held = score(held_data) if held_data is not None else None
    if held_out is not None and held is not None:
        held_out.update(data=held_data, scored=held)
    robust = (
        {name: score(perturbed(val_data, Perturb(*how))) for name, how in ROBUSTNESS.items()}
        if len(val_data)
        else {}
    )
    # The laundering chains work on the originals (seconds per 12 MP picture): at most
    # LAUNDER_MAX_IMAGES evaluation images, evenly spread, in TRAIN_WORKERS processes; their drop is
    # taken from the clean AUC of the same images.
    few_positions = np.unique(
        np.linspace(0, len(val_data) - 1, min(len(val_data), LAUNDER_MAX_IMAGES)).astype(int)
    )
    launder_set = val_data.subset(few_positions.tolist()) if len(val_data) else None
    chains = (
        {name: score(laundered(launder_set, name), settings.train_workers) for name in CHAINS}
        if launder_set is not None
        else {}
    )
    launder_ids = {s.id for s in launder_set.samples} if launder_set is not None else set()
    clean_few = evaluated.subset(np.array([s.id in launder_ids for s in evaluated.samples], dtype=bool))
    few = _images(
        storage, val_data.samples[:FORMAT_SWAP_MAX_IMAGES], eval_transform(pre), pre, settings, val_data.cache
    )
    swap = (
        format_swap_auc(
            score(perturbed(few, Perturb("png", None, 1.0))), score(perturbed(few, Perturb("jpeg", 95, 1.0)))
        )
        if len(few)
        else {}
    )
    future = future or FutureChoice(())
    future_block = future_report(future, held, evaluated)
    unseen_gen = unseen_src = {}
    if held is not None:
        in_gen = np.array([s.generator in settings.holdout_generators for s in held.samples], dtype=bool)
        unseen_gen = by_attribute(held.subset(in_gen), _generator, others=evaluated) if in_gen.any() else {}
        in_src = np.array([s.source in settings.holdout_sources for s in held.samples], dtype=bool)
        unseen_src = by_attribute(held.subset(in_src), _source, others=evaluated) if in_src.any() else {}
    return {
        "version": None,
        "model": settings.model_name,
        "created_at": _now(),
        "split": {
            "train": len(plan.train),
            "eval": len(plan.eval),
            "held_out": len(plan.held_out),
            "excluded": len(plan.excluded),
            "newly_decided": len(plan.decided),
            "radius": settings.split_near_dup_distance,
            "eval_min_per_class": settings.eval_min_per_class,
            "holdout_generators": sorted(settings.holdout_generators),
            "holdout_sources": sorted(settings.holdout_sources),
        },
        "evaluation": block,
        "by_generator": by_attribute(evaluated, _generator),
        "by_source": by_attribute(evaluated, _source),
        "unseen_generators": unseen_gen,
        "unseen_sources": unseen_src,
        "robustness": robustness_block(block["auc"], robust)
        | robustness_block(figure(clean_few.labels, clean_few.margins)["auc"], chains),
        "future_generators": future_block,
        "by_month": by_month(evaluated.samples, evaluated.labels, evaluated.margins, figure),
        "shortcut": {**shortcut, **swap},
        "leakage": leakage(plan, settings.split_near_dup_distance),
        "operating_points": operating_points(
            [row["label"] for row in block["images"]],
            [row["p_ai"] for row in block["images"]],
            [plan.group_of.get(row["id"], row["id"]) for row in block["images"]],
            (*TARGET_FPRS, settings.serve_target_fpr),
        ),
    }


def future_report(future: FutureChoice, held: Scored | None, evaluated: Scored) -> dict:
    """``future_generators``: the held-out newest generators' AI images against the real evaluation
    images, AUC with interval and n; each generator apart under ``by_generator``."""
    out: dict = {
        "held_out": list(future.held_out),
        "k": future.k,
        "first_seen": future.first_seen,
        "reason": future.reason,
    }
    mine = (
        np.array([s.generator in future.held_out and s.label == "ai" for s in held.samples], dtype=bool)
        if held is not None and future.held_out
        else None
    )
    if held is None or mine is None or not mine.any():
        return {**out, "auc": None, "auc_ci95": None, "n": {"real": 0, "ai": 0}}
    ai = held.subset(mine)
    real = evaluated.subset(evaluated.labels != CLASS_INDEX["ai"])
    fig = figure(np.concatenate([ai.labels, real.labels]), np.concatenate([ai.margins, real.margins]))
    return {
        **out,
        "auc": fig["auc"],
        "auc_ci95": fig["auc_ci95"],
        "n": {"real": fig["n_real"], "ai": fig["n_ai"]},
        **({"note": fig["note"]} if "note" in fig else {}),
        "by_generator": by_attribute(ai, _generator, others=evaluated),
    }


def headline(report: dict) -> dict:
    """The figures /models/latest and /metrics carry: AUC with its interval and sample size."""
    ev = report["evaluation"]
    unseen = {
        g: {"auc": f["auc"], "auc_ci95": f["auc_ci95"], "n": f["n"]}
        for g, f in report.get("unseen_generators", {}).items()
    }
    return {
        "auc": ev["auc"],
        "auc_ci95": ev["auc_ci95"],
        "n": ev["n"],
        "acc": ev["acc"],
        "ece": ev["ece"],
        "temperature": ev["temperature"],
        "unseen_generators": unseen,
        "future_generators": {
            k: report.get("future_generators", {}).get(k) for k in ("held_out", "auc", "auc_ci95", "n")
        },
        "shortcut_warning": report["shortcut"].get("warning"),
    }


def backbone_warning(settings: Settings) -> str | None:
    """A linear probe or fine-tune of a backbone without pretrained weights: said in the report, the
    log and the result (the audit promoted a linear head on a random-weight network, unwarned)."""
    if settings.train_pretrained:
        return None
    what = "a linear probe on its random features" if settings.train_mode == "linear_probe" else "a fine-tune"
    return (
        f"the backbone {settings.train_arch} has no pretrained weights (TRAIN_PRETRAINED=false): this is "
        f"{what} from scratch; compare its AUC with the content-only baseline in the report "
        "before trusting it"
    )


def check_training_set(train_set: list[Sample]) -> None:
    counts = Counter(s.label for s in train_set)
    missing = [label for label in CLASS_INDEX if counts[label] == 0]
    if missing:
        raise TrainingError(
            f"the training side has no {', '.join(missing)} image ({counts['real']} real, "
            f"{counts['ai']} ai): add labelled images of that class (held-out generators and "
            "sources never train)"
        )


def _facts_reader(storage: StorageDriver):
    """(bytes, has EXIF) of a sample: from the index, or read from storage for older rows."""

    def facts(sample: Sample) -> tuple[int, bool]:
        if sample.size_bytes is not None and sample.has_exif is not None:
            return sample.size_bytes, bool(sample.has_exif)
        try:
            data = storage.get(sample.image_key)
        except StorageError:
            return 0, False
        return len(data), has_exif(data)

    return facts


def _generator(sample: Sample) -> str:
    return sample.generator or "unknown"


def _source(sample: Sample) -> str:
    return sample.source


async def _record_splits(settings: Settings, decided: dict) -> int:
    async with DatasetManager(settings) as dm:
        return await dm.record_splits(decided)


@dataclass
class FitRun:
    """What a fit function (fine-tune or linear probe) works with, built once by train_on_samples."""

    settings: Settings
    model: torch.nn.Module
    pre: Preprocessing
    prepare: Normalizer
    device: torch.device
    amp_dtype: torch.dtype | None
    train_set: list[Sample]
    val_set: list[Sample]
    train_loader: DataLoader
    val_loader: DataLoader
    storage: StorageDriver
    cache: ImageCache | None
    resume: Resume
    progress: Progress | None


def fit_finetune(run: FitRun):
    """The fine-tune loop: every epoch trains, evaluates (the EMA weights when TRAIN_EMA_DECAY is set)
    and checkpoints, so a killed run resumes from its last finished epoch.

    Returns (the model to evaluate and save, its last validation scores, metrics, skipped sample ids,
    facts for the result: losses per epoch, resumed_from, class_weights).
    """
    settings, model, device, amp_dtype = run.settings, run.model, run.device, run.amp_dtype
    train_set, val_set, prepare, progress = run.train_set, run.val_set, run.prepare, run.progress
    train_loader, val_loader, resume = run.train_loader, run.val_loader, run.resume
    optimizer, scheduler = build_optimizer(model, settings, settings.train_epochs * len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=settings.train_ema_decay) if settings.train_ema_decay > 0 else None
    weights = class_weights(train_set, device) if settings.train_balance == "loss" else None
    step, skipped, losses, history, first = 0, set(), [], [], 1
    if (state := resume.load()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        restore_rng(state["rng"], train_loader.generator)
        step, skipped, losses = state["step"], set(state["skipped"]), list(state["losses"])
        history = list(state.get("history", []))  # checkpoints of older versions have none
        first = state["epoch"] + 1
    scored_model = ema.module if ema is not None else model
    trained = ddp.wrap(model, device)  # DDP under torchrun (trainer/distributed.py); else the model
    scores = metrics = None
    for epoch in range(first, settings.train_epochs + 1):
        train_loss, step, unreadable = train_one_epoch(
            trained,
            train_loader,
            prepare,
            optimizer,
            scheduler,
            scaler,
            amp_dtype,
            step,
            on_batch=batch_reporter(progress, epoch, settings.train_epochs),
            ema=ema,
            class_weights=weights,
        )
        train_loss = ddp.mean(train_loss)
        scores = evaluate(scored_model, val_loader, prepare, amp_dtype)
        # A broken file fails again every epoch: count it once, by sample id.
        skipped |= {train_set[i].id for i in unreadable} | {val_set[i].id for i in scores.skipped}
        metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
        losses.append(train_loss)
        history.append(epoch_row(epoch, train_loss, metrics, optimizer.param_groups[0]["lr"]))
        if ddp.is_main():  # one checkpoint per training, rank 0's
            resume.save(
                {
                    "epoch": epoch,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "rng": rng_state(train_loader.generator),
                    "skipped": sorted(skipped),
                    "losses": losses,
                    "history": history,
                }
            )
        _report(
            progress,
            {
                "stage": "train",
                "epoch": epoch,
                "epochs": settings.train_epochs,
                "train_loss": train_loss,
                "val_loss": metrics["val_loss"],
                "val_auc": metrics["val_auc"],
                "val_acc": metrics["val_acc"],
                "lr": optimizer.param_groups[0]["lr"],
            },
        )
    if scores is None:  # killed after its last checkpoint: every epoch is done, evaluate once
        scores = evaluate(scored_model, val_loader, prepare, amp_dtype)
        metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
    return (
        scored_model,
        scores,
        metrics,
        skipped,
        {
            "train_losses": losses,
            "epoch_history": history,
            "resumed_from_epoch": first - 1 if first > 1 else None,
            "class_weights": _weights_dict(weights),
        },
    )


def fit_linear_probe(run: FitRun):
    """Frozen backbone, embeddings cached per image, the linear head fitted on them (trainer/probe.py)."""
    settings, model, device, amp_dtype = run.settings, run.model, run.device, run.amp_dtype
    train_set, val_set, prepare, progress = run.train_set, run.val_set, run.prepare, run.progress
    pre, storage, cache, val_loader = run.pre, run.storage, run.cache, run.val_loader
    started = time.monotonic()
    for p in model.parameters():
        p.requires_grad_(False)
    store = FeatureStore(storage, feature_id(settings.train_arch, model, pre.as_dict()))
    everyone = train_set + val_set
    # The features live in float16 files in a private folder of models_dir (removed after the fit;
    # clean_stale removes it after a kill), written one shard or chunk at a time and read back a
    # chunk at a time by the head fit: memory stays flat however many images there are.
    scratch = make_staging_dir(settings.models_dir)
    try:
        features = store.load(FeatureMatrix(scratch))
        found = features.rows_of([s.sha256 for s in everyone])
        missing = [s for s, row in zip(everyone, found, strict=True) if row < 0]
        if missing:
            data = _images(storage, missing, eval_transform(pre), pre, settings, cache)
            loader = evaluation_loader(data, settings, device)
            # Each chunk is stored as a shard and appended to what was loaded (not read back).
            for where, feats in embed_chunks(model, loader, prepare, amp_dtype):
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
    try:
        set_head(model, weight, bias)
    except ValueError as exc:
        raise TrainingError(f"TRAIN_ARCH={settings.train_arch!r}: {exc}") from exc
    scores = evaluate(model, val_loader, prepare, amp_dtype)
    skipped |= {val_set[i].id for i in scores.skipped}
    metrics = classification_metrics(scores.labels, scores.probs, scores.loss)
    _report(
        progress,
        {
            "stage": "train",
            "epoch": 1,
            "epochs": 1,
            "train_loss": loss,
            "val_loss": metrics["val_loss"],
            "val_auc": metrics["val_auc"],
            "val_acc": metrics["val_acc"],
            "lr": None,
        },
    )
    return (
        model,
        scores,
        metrics,
        skipped,
        {
            "train_losses": [loss],
            "epoch_history": [epoch_row(1, loss, metrics, None)],
            "class_weights": _weights_dict(weights),
            "linear_probe": {
                "embedded": len(missing),
                "reused": len(everyone) - len(missing),
                "features": dims,
                "seconds": round(time.monotonic() - started, 2),
            },
        },
    )


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


def _rounded(value, digits: int = 4):
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


def class_weights(samples: list[Sample], device: torch.device) -> torch.Tensor:
    """Loss weights n / (2 n_class): each class weighs as much as the other, whatever their sizes."""
    counts = Counter(s.label for s in samples)
    total = sum(counts.values())
    return torch.tensor(
        [total / (2 * max(1, counts[label])) for label in CLASS_INDEX], dtype=torch.float32, device=device
    )


def _weights_dict(weights: torch.Tensor | None) -> dict | None:
    if weights is None:
        return None
    return {label: round(float(weights[i]), 4) for label, i in CLASS_INDEX.items()}


def build_cache(
    settings: Settings, storage: StorageDriver, pre, samples: list[Sample], progress: Progress | None = None
) -> ImageCache | None:
    """The training cache at this preprocessing, with every sample's entry present (TRAIN_CACHE)."""
    if not settings.train_cache:
        return None
    cache = ImageCache(storage, pre.decode_side, settings.max_image_pixels, pre.cache_quality)
    on_entry = None
    if progress is not None:
        _stage(progress, "cache", done=0, total=len(samples))
        on_entry = throttled(lambda done, total: _stage(progress, "cache", done=done, total=total))
    cache.build(
        ((s.sha256, s.image_key) for s in samples), workers=max(2, settings.train_workers), on_entry=on_entry
    )
    return cache


def throttled(report: Callable[[int, int], None], every_s: float = 0.5) -> Callable[[int, int], None]:
    """``report(done, total)`` at most every ``every_s`` seconds, and always for the last one."""
    last = [0.0]

    def call(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every_s:
            last[0] = now
            report(done, total)

    return call


def _stage(progress: Progress | None, stage: str, **fields) -> None:
    """Which step the training is in ("split", "audit", "cache" 37/117 ...), for the bar and /jobs."""
    if progress is not None:
        progress({"stage": stage, **fields})


def _cache_facts(cache: ImageCache | None) -> dict | None:
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
    pre,
    settings: Settings,
    device: torch.device,
    cache: ImageCache | None = None,
):
    """(train loader, validation dataset, validation loader): shuffled/augmented vs fixed order."""
    train_data = _images(storage, train_set, train_transform(pre), pre, settings, cache)
    if settings.train_launder_aug > 0:  # docs/evaluation.md: the laundering chains as augmentation
        train_data.launder = Launder(settings.train_launder_aug)
    train_loader = settings_loader(
        train_data, settings, device, shuffle=True, drop_last=len(train_set) > settings.train_batch_size
    )
    val_data = _images(storage, val_set, eval_transform(pre), pre, settings, cache)
    val_loader = evaluation_loader(val_data, settings, device)
    return ddp.shard(train_loader, settings.train_seed), val_data, val_loader


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


def check_dataset(samples: list[Sample], min_samples: int) -> None:
    """Refuse datasets too small or with one class missing, saying what there is."""
    counts = Counter(s.label for s in samples)
    have = f"{len(samples)} labelled images ({counts['real']} real, {counts['ai']} ai)"
    if len(samples) < min_samples:
        raise TrainingError(
            f"not enough data to train: {have}, MIN_TRAIN_SAMPLES={min_samples}. "
            "Scrape or upload more labelled images first."
        )
    missing = [label for label in CLASS_INDEX if counts[label] < 2]
    if missing:
        raise TrainingError(
            f"both classes are needed, at least 2 images each: {have}. "
            f"Add labelled images of: {', '.join(missing)}."
        )


def load_samples(settings: Settings) -> tuple[list[Sample], StorageDriver]:
    """Labelled samples and the storage driver, from the dataset index."""

    async def collect():
        async with DatasetManager(settings) as dm:
            return await dm.samples(("real", "ai")), dm.storage

    return _run_async(collect())


def _run_async(coroutine):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:  # called from async code: run the loop in another thread
        return pool.submit(asyncio.run, coroutine).result()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _images(
    storage, samples: list[Sample], transform, pre, settings: Settings, cache: ImageCache | None = None
) -> StoredImages:
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


def _registry_entry(
    settings: Settings,
    metrics: dict,
    sizes: dict,
    sha256: str,
    promotion: dict,
    device: torch.device,
    report: dict,
) -> dict:
    ev = report["evaluation"]
    return {
        "val_auc_ci95": ev["auc_ci95"],
        "eval_n": ev["n"],
        "temperature": ev["temperature"],
        "ece": ev["ece"],
        "report": REPORT_FILE,
        "shortcut_warning": report["shortcut"]["warning"],
        "unseen_generators": headline(report)["unseen_generators"],
        **served_threshold(report["operating_points"], settings.serve_target_fpr),
        "model": settings.model_name,
        "timestamp": _now(),
        **sizes,
        **{k: metrics[k] for k in ("val_acc", "val_auc", "val_loss", "precision", "recall", "f1")},
        "architecture": settings.train_arch,
        "image_size": settings.train_image_size,
        "sha256": sha256,
        "promoted": promotion["promoted"],
        "promotion_reason": promotion["reason"],
        "auc_difference": promotion["auc_difference"],
        "auc_difference_ci95": promotion["auc_difference_ci95"],
        "compared_with": promotion["compared_with"],
        "incumbent_metrics": promotion["incumbent_metrics"],
        "eval_wanted": promotion.get("eval_wanted"),
        "epochs": settings.train_epochs,
        "device": device.type,
    }


def _report(progress: Progress | None, event: dict) -> None:
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


def _fmt(value, digits: int = 4) -> str:
    """A metric for a log line: 4 decimals (what the figures mean at these sample sizes), or n/a."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def _now() -> str:
    return iso_seconds()
