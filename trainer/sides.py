"""The samples of one training and their sides: the labelled samples checked, the future generators
chosen (trainer/future.py), their content signatures (trainer/signatures.py), the split
(trainer/split.py) with its new decisions stored, and the training side checked.

``load_samples_and_sides`` does it in one dataset session: the samples are read and the sides
decided for new images are stored through the same ``DatasetManager``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from config.progress import Progress
from config.settings import Settings
from dataset.manager import DatasetManager, Sample
from dataset.storage import StorageDriver
from trainer.copies import Signature
from trainer.errors import TrainingError
from trainer.evaluate import CLASS_INDEX
from trainer.future import FutureChoice, choose_future
from trainer.progress import stage
from trainer.registry import load_registry
from trainer.signatures import content_signatures
from trainer.split import SplitPlan, assign_splits

log = logging.getLogger(__name__)

RecordSplits = Callable[[dict], object]


@dataclass
class Sides:
    """What one training trains and evaluates on, and what decided it."""

    samples: list[Sample]  # every labelled sample
    storage: StorageDriver
    future: FutureChoice  # the newest generators, held out of training
    signatures: dict[str, Signature]  # content signatures by sample id
    plan: SplitPlan  # train, eval, held out, excluded; the groups
    started: float  # time.monotonic() when the training began


async def load_samples_and_sides(settings: Settings, progress: Progress | None = None) -> Sides:
    """The labelled samples and their sides, read and stored in one dataset session."""
    async with DatasetManager(settings) as dm:
        samples = await dm.samples(("real", "ai"))
        loop = asyncio.get_running_loop()

        def record_splits(decided: dict) -> int:  # called from the worker thread below
            return asyncio.run_coroutine_threadsafe(dm.record_splits(decided), loop).result()

        # The signatures and the split are CPU work: a thread keeps the session's loop free.
        return await asyncio.to_thread(load_sides, settings, samples, dm.storage, progress, record_splits)


def load_sides(
    settings: Settings,
    samples: list[Sample],
    storage: StorageDriver,
    progress: Progress | None = None,
    record_splits: RecordSplits | None = None,
) -> Sides:
    """Sides for ``samples`` (stored ones kept); the new decisions stored through ``record_splits``."""
    started = time.monotonic()
    samples = [s for s in samples if s.label in CLASS_INDEX]  # unlabeled never enters training
    check_dataset(samples, settings.min_train_samples)
    stage(progress, "split")
    future = choose_future(samples, settings.eval_future_generators, settings.eval_min_per_class)
    if future.held_out:
        log.info("future generators held out of training: %s", ", ".join(future.held_out))
    signatures = content_signatures(
        settings.models_dir, storage, samples, settings.max_image_pixels, max(1, settings.train_workers)
    )
    plan = plan_split(settings, samples, record_splits, future.held_out, signatures)
    check_training_set(plan.train)
    return Sides(samples, storage, future, signatures, plan, started)


def plan_split(
    settings: Settings,
    samples: list[Sample],
    record_splits: RecordSplits | None = None,
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


def check_training_set(train_set: list[Sample]) -> None:
    counts = Counter(s.label for s in train_set)
    missing = [label for label in CLASS_INDEX if counts[label] == 0]
    if missing:
        raise TrainingError(
            f"the training side has no {', '.join(missing)} image ({counts['real']} real, "
            f"{counts['ai']} ai): add labelled images of that class (held-out generators and "
            "sources never train)"
        )
