"""What /status, /metrics and ``exposr-trainer status`` report, built from cheap reads.

Counts come from the dataset index (GROUP BY), the registry from ``registry.json`` (no torch),
job facts from the jobs table. Each is a few milliseconds; the service keeps them in memory
(:class:`Overview`): never older than twice the refresh interval while the sources answer, and
answered from memory within a second, flagged with their age, when a source hangs or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException

from app.jobstore import JobStore
from config.settings import Settings
from dataset.errors import StorageError
from trainer.model_store import ModelRegistry

log = logging.getLogger(__name__)
COUNT_KEYS = ("total", "real", "ai_generated", "unlabeled")
# After this process wrote (Fresh.invalidate), how long a read waits for the reload at most.
WRITE_WAIT_SECONDS = 10.0


class Fresh:
    """One value kept in memory and refreshed from a source that may be slow, down or hanging.

    - younger than ``ttl``: served as it is;
    - between ``ttl`` and ``2 * ttl``: served, and refreshed in the background;
    - older than ``2 * ttl`` or never loaded: a refresh is started (or the one in flight joined) and
      awaited for at most ``wait`` seconds; if it is not done by then, the value in memory is served
      with its age (:meth:`get` returns the age, None when fresh);
    - ``invalidate()``-d (this process has just written: an upload, a label): the same, awaited for
      at most ``write_wait`` seconds -- the source has just answered the write, so it is up, and the
      caller expects to read what it wrote even when a loaded machine makes the reload slower than
      ``wait``.

    So an idle replica answers with what the source holds now, and a hanging source costs an answer
    at most ``wait`` seconds. One refresh at a time: a hanging source never piles up work."""

    def __init__(
        self,
        ttl: float,
        load: Callable[[], Awaitable[Any]],
        what: str,
        wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        write_wait: float = WRITE_WAIT_SECONDS,
    ) -> None:
        self.ttl, self.load, self.what, self.wait, self.clock = ttl, load, what, wait, clock
        self.write_wait = max(wait, write_wait)
        self.value: Any = None
        self._loaded_at: float | None = None  # monotonic time of the value in memory
        self._loaded_generation = -1
        self._generation = 0
        self._task: asyncio.Task | None = None
        self._task_generation = -1
        self.error: str | None = None  # why the last refresh failed (None once one succeeds)

    def invalidate(self) -> None:
        self._generation += 1

    def age(self) -> float | None:
        return None if self._loaded_at is None else self.clock() - self._loaded_at

    async def get(self) -> tuple[Any, float | None]:
        """(value, None) when fresh; (value in memory, its age) when the source did not answer in
        time; (None, None) only before the first load ever finished."""
        age = self.age()
        if age is not None and self._loaded_generation == self._generation and age < 2 * self.ttl:
            if age >= self.ttl:
                self._refresh()
            return self.value, None
        written = self._loaded_at is not None and self._loaded_generation != self._generation
        task = self._refresh()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.write_wait if written else self.wait)
        if task.done() and task.result():
            return self.value, None
        return self.value, self.age()

    def _refresh(self) -> asyncio.Task:
        if self._task is None or self._task.done() or self._task_generation != self._generation:
            self._task_generation = self._generation
            self._task = asyncio.create_task(self._reload(self._generation))
        return self._task

    async def _reload(self, generation: int) -> bool:
        try:
            value = await self.load()
        except Exception as exc:  # served from memory meanwhile; the next request retries
            if self.error is None:
                log.warning("%s cannot be read (%s); answering from memory until it can", self.what, exc)
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return False
        if self.error is not None:
            log.info("%s can be read again", self.what)
            self.error = None
        if generation >= self._loaded_generation:
            self.value, self._loaded_at, self._loaded_generation = value, self.clock(), generation
        return True


class Overview:
    """What /status and /metrics report, in two parts kept apart so that one failing source does
    not age the other: the database's (counts and jobs) and the model registry's (a file, or the
    bucket). Each is a :class:`Fresh` value; ``stale`` names the parts served from memory."""

    def __init__(self, settings: Settings, dataset: Any, store: JobStore, ttl: float, wait: float = 1.0):
        self.database = Fresh(ttl, lambda: database_facts(dataset, store), "the database", wait)
        self.models = Fresh(
            ttl, lambda: asyncio.to_thread(model_facts, settings, True), "the model registry", wait
        )

    def invalidate(self) -> None:
        self.database.invalidate()
        self.models.invalidate()

    async def prime(self) -> None:
        """At start-up: both parts once (the database has just answered the start-up checks)."""
        await asyncio.gather(self.database.get(), self.models.get())

    async def get(self) -> dict[str, Any]:
        (db, db_age), (models, models_age) = await asyncio.gather(self.database.get(), self.models.get())
        stale = {}
        for name, part, age in (("database", self.database, db_age), ("models", self.models, models_age)):
            if age is not None or part.value is None:
                stale[name] = {"age_s": None if age is None else round(age, 1), "reason": _reason(part)}
        if db is None:
            raise HTTPException(
                503,
                detail=f"the database has not answered since start-up ({_reason(self.database)}); "
                "retry later",
                headers={"Retry-After": "5"},
            )
        return {**combine(db, models or NO_MODELS), "stale": stale or None}


def _reason(part: Fresh) -> str:
    if part.error:
        return f"{part.what} cannot be read: {part.error}"
    return f"{part.what} did not answer within {part.wait:g} s"


def dataset_counts(counts: dict) -> dict[str, int]:
    return {key: int(counts.get(key, 0)) for key in COUNT_KEYS}


def model_facts(settings: Settings, raise_storage_errors: bool = False) -> dict[str, Any]:
    """Registry facts: entries, the served model (the champion alias), the newest training time.

    A corrupt registry reads as none (with a log line); a store that cannot be reached raises
    StorageError when ``raise_storage_errors`` (the overview then answers from memory)."""
    try:
        registry = ModelRegistry(settings)
        entries: list = registry.entries()
        promoted: Any = registry.champion()
    except StorageError:
        if raise_storage_errors:
            raise
        entries, promoted = [], None
    except ValueError as exc:  # a corrupt registry.json must not take /status down
        log.error("cannot read the model registry: %s", exc)
        entries, promoted = [], None
    timestamps = [e.get("timestamp") for e in entries if e.get("timestamp")]
    latest = None
    if promoted:
        latest = {
            key: promoted.get(key)
            for key in ("model", "version", "timestamp", "val_acc", "val_auc", "val_auc_ci95", "eval_n")
        }
    newest = entries[-1] if entries else {}
    return {
        "models_trained": len(entries),
        "last_training": max(timestamps) if timestamps else None,
        "promoted": latest,
        "shortcut_warning": newest.get("shortcut_warning"),
    }


async def job_facts(store: JobStore) -> dict[str, Any]:
    last = await store.latest_by_kind()
    succeeded = await store.latest_by_kind(state="succeeded")
    return {
        "last_jobs": last,
        "last_scrape": (succeeded.get("scrape") or {}).get("finished_at"),
        "last_train_job": (succeeded.get("train") or {}).get("finished_at"),
    }


async def database_facts(dataset: Any, store: JobStore) -> dict[str, Any]:
    return {"counts": await dataset.counts(), "jobs": await job_facts(store)}


NO_MODELS = {"models_trained": 0, "last_training": None, "promoted": None, "shortcut_warning": None}


async def collect_status(settings: Settings, dataset: Any, store: JobStore) -> dict[str, Any]:
    """The time-independent part of /status, read now (the CLI; the service keeps an :class:`Overview`)."""
    models = await asyncio.to_thread(model_facts, settings)  # the registry may be in the bucket
    return combine(await database_facts(dataset, store), models)


def combine(db: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    counts, jobs = db["counts"], db["jobs"]
    return {
        "last_scrape": jobs["last_scrape"],
        "last_train": models["last_training"] or jobs["last_train_job"],
        "dataset_counts": dataset_counts(counts),
        "by_source": counts.get("by_source") or {},
        "last_jobs": jobs["last_jobs"],
        "latest_model": models["promoted"],
        "models_trained": models["models_trained"],
        "shortcut_warning": models["shortcut_warning"],
    }
