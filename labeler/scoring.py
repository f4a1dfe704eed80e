"""The labeler job: fill ``confidence`` = P(ai-generated) for images lacking a score from the current scorer.

Scorer order: Exposr-Core when it answers (probed with the first image that needs it), else the
promoted local model, else nothing, and the report says why. Each stored score carries
``scored_by = {name, version[, model], at}`` in its metadata file, and the index keeps the same
identity (``Sample.scorer``), so the images to skip (those whose scorer matches the current one)
come from one query; a new Core model or a newly promoted local model re-scores the dataset.
Labels are never touched: ``DatasetManager.set_score`` writes only the score fields.

Per-image failures (unreadable file, Core garbage, a failed prediction) are counted in
``errors`` by kind and the run goes on; a Core that stops answering mid-run ends the run early
(``aborted``) instead of spending its backoff budget on every remaining image.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import mimetypes
from collections import Counter
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypedDict

import httpx

from config.progress import Progress
from config.settings import Settings
from dataset.errors import ImageRejected, StorageError
from dataset.manager import DatasetManager
from labeler.core_client import CoreClient, CoreScore, Sleep
from labeler.errors import CoreBadAnswer, CoreError, CoreUnavailable
from trainer.errors import ModelNotFound
from trainer.model_store import ModelRegistry

log = logging.getLogger(__name__)


class LabelReport(TypedDict):
    """What a labeler run returns (``run_labeler``; a label job's result)."""

    scorer: dict[str, Any] | None  # who scored: Exposr-Core or the local model (None: nobody could)
    reason: str | None  # why nothing or not everything was scored, for a person
    aborted: str | None  # Core went away mid-run
    total: int
    pending: int
    skipped: int  # already scored by this scorer
    scored: int
    errors: dict[str, int]  # by kind
    core: dict[str, Any]  # what the probe found: endpoint, available, error, message


BATCH_SIZE = 32  # images read and scored per step; bounds memory and progress granularity
CORE_GIVE_UP_AFTER = 5  # consecutive "unavailable" answers that mean Core went away mid-run
PROBE_TRIES = 3  # images answered with garbage in a row before Core is not used for the run
IDENTITY_KEYS = ("name", "model", "version")


@dataclass
class Probe:
    identity: dict  # Core's scorer identity, from the answer that worked
    items: list[Item]  # every image the probe sent (refused ones, then the one that worked)
    needed: int  # how many of them the current scorer had not scored (pending)


@dataclass
class Item:
    id: str
    image_key: str
    scorer: dict | None  # the stored scorer identity, None when never scored


async def run_labeler(
    settings: Settings,
    progress: Progress | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    sleep: Sleep = asyncio.sleep,
) -> LabelReport:
    """Score the dataset with the best available scorer; returns the report (see module docstring)."""
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        dataset = await stack.enter_async_context(DatasetManager(settings))
        labeler = Labeler(settings, dataset, CoreClient(settings, client, sleep=sleep), progress)
        return await labeler.run()


def run_labeler_sync(settings: Settings, progress: Progress | None = None) -> LabelReport:
    """For the job runner's worker process (and any synchronous caller): one event loop per run."""
    return asyncio.run(run_labeler(settings, progress))


class Labeler:
    def __init__(
        self, settings: Settings, dataset: DatasetManager, core: CoreClient, progress: Progress | None
    ) -> None:
        self.settings = settings
        self.dataset = dataset
        self.core = core
        self.progress = progress or (lambda _event: None)
        self.errors: Counter[str] = Counter()
        self.scored = 0
        self.report: LabelReport = {
            "scorer": None,
            "reason": None,
            "aborted": None,
            "total": 0,
            "pending": 0,
            "skipped": 0,
            "scored": 0,
            "errors": {},
            "core": {"endpoint": core.shown_endpoint, "available": False},
        }

    async def run(self) -> LabelReport:
        items = await self._load_items()
        self.report["total"] = len(items)
        if not items:
            self.report["reason"] = "the dataset has no images yet: nothing to score"
            return self._finish()
        probe = await self._probe_core(items)
        if probe is not None:
            rest = [i for i in items if all(i is not p for p in probe.items)]
            pending = self._pending(rest, probe.identity, also_counted=probe.needed)
            await self._score_with_core(pending, probe.identity)
        else:
            await self._score_with_local_model(items)
        return self._finish()

    def _finish(self) -> LabelReport:
        self.report["scored"] = self.scored
        self.report["errors"] = dict(self.errors)
        log.info("labeler: %s", self.report)
        return self.report

    def _pending(self, items: list[Item], identity: dict, also_counted: int = 0) -> list[Item]:
        """Items the current scorer has not scored; ``also_counted``: how many the probe tried already."""
        pending = [i for i in items if not same_scorer(i.scorer, identity)]
        self.report["scorer"] = identity
        self.report["pending"] = len(pending) + also_counted
        self.report["skipped"] = self.report["total"] - self.report["pending"]
        return pending

    async def _load_items(self) -> list[Item]:
        """Every image with the scorer the index records for it: one query, no metadata reads."""
        samples = await self.dataset.samples(labels=("real", "ai", "unlabeled"))
        items = [Item(s.id, s.image_key, parse_scorer(s.scorer)) for s in samples]
        legacy = [
            item
            for item, s in zip(items, samples, strict=True)
            if s.scorer is None and s.confidence is not None
        ]
        await self._backfill_scorers(legacy)
        return items

    async def _backfill_scorers(self, legacy: list[Item]) -> None:
        """Scores stored before the index had a scorer column: read the metadata file once and copy its
        ``scored_by`` into the index, so later runs skip these images without reading files."""
        for chunk in chunks(legacy, BATCH_SIZE):
            metas = await asyncio.gather(*(self.dataset.get_metadata(item.id) for item in chunk))
            for item, meta in zip(chunk, metas, strict=True):
                scored_by = (meta or {}).get("scored_by")
                item.scorer = identity_of(scored_by)
                if item.scorer is not None and isinstance(scored_by, dict):  # a scorer is a dict's
                    await self.dataset.index_scorer(item.id, scored_by)

    # -- Exposr-Core -------------------------------------------------------------------------

    async def _probe_core(self, items: list[Item]) -> Probe | None:
        """Score images Core has not scored, one at a time, until Core gives a probability; None when
        Core is unavailable or answered PROBE_TRIES images in a row with garbage (the reason goes to
        the report). Garbage is counted like any other: one file Core cannot read must not turn Core
        off for the whole run."""
        ordered = sorted(items, key=lambda i: (i.scorer or {}).get("name") == "exposr-core")
        refused: list[Item] = []
        last_garbage: CoreBadAnswer | None = None
        for item in ordered:
            data = await self._read(item)
            if data is None:
                continue
            try:
                result = await self.core.score(data, *file_details(item))
            except CoreBadAnswer as exc:
                self.errors[f"core_{exc.kind}"] += 1
                refused.append(item)
                last_garbage = exc
                if len(refused) < PROBE_TRIES:
                    continue
                self._core_not_used(exc)
                return None
            except CoreError as exc:  # unavailable even after the retries
                self._core_not_used(exc)
                return None
            self.report["core"]["available"] = True
            identity = core_identity(result)
            needed = sum(not same_scorer(i.scorer, identity) for i in [*refused, item])
            if not same_scorer(item.scorer, identity):
                await self._store(item, result.probability, identity)
            return Probe(identity, [*refused, item], needed)
        if last_garbage is not None:  # fewer images than PROBE_TRIES, all answered with garbage
            self._core_not_used(last_garbage)
            return None
        self.report["core"].update(error="no_readable_image", message="no image could be read to probe Core")
        return None

    def _core_not_used(self, exc: CoreError) -> None:
        self.report["core"].update(error=exc.kind, message=exc.message)
        log.warning("Exposr-Core not used: %s", exc.message)

    async def _score_with_core(self, pending: list[Item], identity: dict) -> None:
        limit = asyncio.Semaphore(self.settings.exposr_core_concurrency)
        state = {"unavailable_in_a_row": 0}

        async def score_one(item: Item) -> None:
            async with limit:
                if self.report["aborted"]:
                    return
                data = await self._read(item)
                if data is None:
                    return
                try:
                    result = await self.core.score(data, *file_details(item))
                except CoreError as exc:
                    self._count_core_failure(exc, state)
                    return
                state["unavailable_in_a_row"] = 0
                await self._store(item, result.probability, core_identity(result))

        await self._in_batches(pending, identity, score_one)

    def _count_core_failure(self, exc: CoreError, state: dict) -> None:
        self.errors[f"core_{exc.kind}"] += 1
        log.info("Exposr-Core failed on an image: %s", exc.message)
        if not isinstance(exc, CoreUnavailable):
            return
        state["unavailable_in_a_row"] += 1
        if state["unavailable_in_a_row"] >= CORE_GIVE_UP_AFTER and not self.report["aborted"]:
            self.report["aborted"] = (
                f"Exposr-Core stopped answering ({exc.kind} {CORE_GIVE_UP_AFTER} times in a row); "
                "the remaining images are scored by the next run"
            )

    # -- local model -------------------------------------------------------------------------

    async def _score_with_local_model(self, items: list[Item]) -> None:
        try:
            entry = ModelRegistry.local(self.settings).champion()
        except ValueError as exc:  # a registry.json that cannot be read
            self.report["reason"] = f"Exposr-Core did not answer and the model registry is unusable: {exc}"
            return
        if entry is None:
            self.report["reason"] = (
                f"Exposr-Core did not answer ({self.report['core'].get('message')}) and no model "
                f"{self.settings.model_name!r} is promoted in {self.settings.models_dir}: start Exposr-Core "
                "(EXPOSR_CORE_ENDPOINT) or train one (POST /train), then run the labeler again"
            )
            return
        identity = {"name": "local-model", "model": entry["model"], "version": entry["version"]}
        pending = self._pending(items, identity)
        if not pending:
            return
        # Imported here: torch loads only when the local model is really needed.
        from trainer.predict import load_promoted

        try:
            predictor = await asyncio.to_thread(load_promoted, self.settings)
        except ModelNotFound as exc:  # promoted in the registry, but its files are gone
            self.report["reason"] = f"the promoted model could not be loaded: {exc}"
            return

        async def score_batch(batch: list[Item]) -> None:
            readable = [(item, data) for item in batch if (data := await self._read(item)) is not None]
            probabilities = await self._predict(predictor, [data for _, data in readable])
            for (item, _), probability in zip(readable, probabilities, strict=True):
                if probability is None or not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
                    self.errors["prediction_failed"] += 1
                    continue
                await self._store(item, probability, identity)

        await self._in_batches(pending, identity, score_batch, per_item=False)

    async def _predict(self, predictor, images: list[bytes]) -> list[float | None]:
        """One batch off the event loop; when it fails, image by image so one bad file costs one score."""
        try:
            return [float(p) for p in await asyncio.to_thread(predictor.predict_bytes, images)]
        except (ImageRejected, OSError, ValueError, RuntimeError) as exc:
            if len(images) == 1:
                log.info("local model could not score an image: %r", exc)
                return [None]
        return [(await self._predict(predictor, [one]))[0] for one in images]

    # -- shared steps ------------------------------------------------------------------------

    async def _in_batches(self, pending: list[Item], identity: dict, work, per_item: bool = True) -> None:
        total = self.report["pending"]
        done = total - len(pending)  # the probe's images count as done: progress ends at total
        for batch in chunks(pending, BATCH_SIZE):
            if self.report["aborted"]:
                break
            if per_item:
                await asyncio.gather(*(work(item) for item in batch))
            else:
                await work(batch)
            done += len(batch)
            self.progress(
                {
                    "stage": "scoring",
                    "scorer": identity["name"],
                    "done": done,
                    "total": total,
                    "scored": self.scored,
                }
            )

    async def _read(self, item: Item) -> bytes | None:
        try:
            return await self.dataset.read_image(item.id)
        except (KeyError, OSError, StorageError) as exc:  # gone since listed, or the store failed
            self.errors["unreadable_image"] += 1
            log.warning("labeler: image %s unreadable: %r", item.id, exc)
            return None

    async def _store(self, item: Item, probability: float, identity: dict) -> None:
        try:
            await self.dataset.set_score(item.id, probability, identity)
        except (KeyError, OSError, StorageError) as exc:
            self.errors["store_failed"] += 1
            log.warning("labeler: score for %s not stored: %r", item.id, exc)
            return
        item.scorer = identity
        self.scored += 1


def core_identity(result: CoreScore) -> dict:
    return {"name": "exposr-core", "version": result.version or "unknown"}


def parse_scorer(stored: str | None) -> dict | None:
    """The index's scorer column (sorted JSON, see ``dataset.manager.scorer_json``) as an identity."""
    if stored is None:
        return None
    try:
        return identity_of(json.loads(stored))
    except ValueError:  # not ours: treat the image as never scored, so it is scored again
        return None


def identity_of(scorer: object) -> dict | None:
    """The parts of a stored scorer that say who scored (not when)."""
    if not isinstance(scorer, dict):
        return None
    return {k: scorer[k] for k in IDENTITY_KEYS if k in scorer}


def same_scorer(stored: dict | None, current: dict) -> bool:
    return stored is not None and identity_of(stored) == identity_of(current)


def file_details(item: Item) -> tuple[str, str]:
    name = PurePosixPath(item.image_key).name
    return name, mimetypes.guess_type(name)[0] or "application/octet-stream"


def chunks(seq: list, size: int) -> Iterable[list]:
    return (seq[i : i + size] for i in range(0, len(seq), size))
