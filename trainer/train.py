"""Training a real-vs-AI classifier (any timm architecture), top to bottom: load the samples and
their sides -> audit -> build the model and loaders -> fit -> evaluate -> report -> register.

``train_model`` is synchronous and long: the app runs it in its own process, the CLI in the
foreground. It either registers a new version or raises ``TrainingError`` and leaves ``models/``
as it was (see trainer/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import cast

from config.progress import Progress
from config.settings import Settings
from dataset.manager import DatasetManager, Sample
from dataset.storage import StorageDriver
from trainer import ddp
from trainer.architectures import check_architecture
from trainer.baseline import content_baseline
from trainer.checkpoint import Resume, fingerprint
from trainer.data import StoredImages
from trainer.evaluate import accuracy_by_source
from trainer.fit import FitResult, FitRun, fit, seed_everything
from trainer.loaders import build_cache, build_loaders, cache_facts
from trainer.modeling import Network, build_network
from trainer.progress import stage
from trainer.promotion import decide_promotion
from trainer.registry import clean_stale, make_staging_dir
from trainer.report import EvalResult, audit, backbone_warning, build_report, scored
from trainer.results import RegistryEntry, TrainResult
from trainer.sides import RecordSplits, Sides, class_totals, load_samples_and_sides, load_sides
from trainer.version import NewVersion, register

log = logging.getLogger(__name__)

MAX_SKIPPED_IDS = 50  # ids of unreadable images listed in the result (the count covers all)


def train_model(settings: Settings, progress: Progress | None = None) -> TrainResult:
    """Train on the labelled dataset and register the result; returns the registry entry + metrics.

    The sides decided for new images are stored in the index (the same dataset session that read
    the samples) before training starts, so they hold for every later training (trainer/split.py).
    """
    check_architecture(settings.train_arch)  # a typo fails now, not after loading and splitting
    stage(progress, "load")
    return train_on_sides(settings, _run_async(load_samples_and_sides(settings, progress)), progress)


def train_on_samples(
    settings: Settings,
    samples: list[Sample],
    storage: StorageDriver,
    progress: Progress | None = None,
    record_splits: RecordSplits | None = None,
) -> TrainResult:
    """Train on samples already loaded; new sides go to ``record_splits`` (not stored without it)."""
    check_architecture(settings.train_arch)
    return train_on_sides(settings, load_sides(settings, samples, storage, progress, record_splits), progress)


def train_on_sides(settings: Settings, sides: Sides, progress: Progress | None = None) -> TrainResult:
    """The training once its samples have their sides: audit, build, fit, evaluate, report, register."""
    clean_stale(settings.models_dir)  # what killed runs left in models/
    shortcut = audit(settings, sides, progress)
    seed_everything(settings.train_seed)
    stage(progress, "model")
    net = build_network(settings)
    plan = sides.plan
    cache = build_cache(settings, sides.storage, net.pre, plan.train + plan.eval + plan.held_out, progress)
    train_loader, val_data, val_loader = build_loaders(
        sides.storage, plan.train, plan.eval, net.pre, settings, net.device, cache
    )
    resume = Resume(
        settings.models_dir,
        settings.model_name,
        fingerprint(settings, [s.id for s in plan.train], [s.id for s in plan.eval]),
    )
    staging = make_staging_dir(settings.models_dir)
    try:
        run = FitRun(
            settings,
            net,
            plan.train,
            plan.eval,
            train_loader,
            val_loader,
            sides.storage,
            cache,
            resume,
            progress,
        )
        fitted = fit(run)
        # The last references to the training loader and the model before the fit (the EMA's is
        # evaluated): the loader's workers end now instead of holding memory through the report.
        del run, train_loader
        net = replace(net, model=fitted.model)
        if not ddp.is_main():  # rank 0 alone evaluates promotion, writes and registers
            shutil.rmtree(staging, ignore_errors=True)
            return {"rank": "follower", "metrics": fitted.metrics}
        stage(progress, "evaluate")
        evaluation = evaluate_fit(settings, net, sides, val_data, fitted, shortcut)
        report = full_report(settings, net, sides, val_data, evaluation, fitted)
        version = NewVersion(settings, evaluation.metrics, sizes(sides), report, net.device.type)
        entry = register(staging, version, net.model, net.pre, plan.train)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed run leaves models/ as it was
        raise
    resume.clear()
    return train_result(entry, evaluation, fitted, cache_facts(cache), shortcut, sides.started)


def evaluate_fit(
    settings: Settings, net: Network, sides: Sides, val_data: StoredImages, fitted: FitResult, shortcut: dict
) -> EvalResult:
    """The fitted model on images it never trained on: report.json's figures, the content-only
    baseline on the same images, the metrics with their interval."""
    evaluated = scored(sides.plan.eval, fitted.scores)
    report, unseen = build_report(settings, net, sides, val_data, evaluated, shortcut)
    report["content_baseline"], baseline_scores = content_baseline(
        sides.plan.train, evaluated, sides.signatures, sides.plan.group_of
    )
    report["backbone_warning"] = backbone_warning(settings)
    if report["backbone_warning"]:
        log.warning("%s", report["backbone_warning"])
    scores = fitted.scores
    metrics = {
        **fitted.metrics,
        "val_auc_ci95": report["evaluation"]["auc_ci95"],
        "by_source": accuracy_by_source(
            scores.labels, scores.probs, [sides.plan.eval[i].source for i in scores.positions]
        ),
    }
    return EvalResult(report, metrics, evaluated, unseen, baseline_scores)


def full_report(
    settings: Settings,
    net: Network,
    sides: Sides,
    val_data: StoredImages,
    evaluation: EvalResult,
    fitted: FitResult,
) -> dict:
    """report.json whole: the evaluation, the promotion decision and the training curves."""
    report = evaluation.report
    report["promotion"] = decide_promotion(
        settings,
        evaluation.evaluated,
        val_data,
        net.device,
        net.amp_dtype,
        class_totals(sides.plan),
        dataset=sides.samples,
        group_of=sides.plan.group_of,
        unseen=evaluation.unseen,
        baseline_scores=evaluation.baseline_scores,
    )
    report["training"] = {"epochs": fitted.epoch_history}  # the loss / AUC curves
    return report


def sizes(sides: Sides) -> dict[str, int]:
    return {
        "dataset_size": len(sides.samples),
        "train_size": len(sides.plan.train),
        "val_size": len(sides.plan.eval),
    }


def train_result(
    entry: RegistryEntry,
    evaluation: EvalResult,
    fitted: FitResult,
    cache: dict | None,
    shortcut: dict,
    started: float,
) -> TrainResult:
    """The registered entry and the run's facts: what the job and the CLI show."""
    return cast(
        TrainResult,
        {
            **entry,
            "metrics": evaluation.metrics,
            "skipped_images": len(fitted.skipped),
            "cache": cache,
            **fitted.facts(),
            "skipped_ids": sorted(fitted.skipped)[:MAX_SKIPPED_IDS],
            "shortcut_warning": shortcut["warning"],
            "backbone_warning": evaluation.report["backbone_warning"],
            "duration_s": round(time.monotonic() - started, 1),
        },
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
