"""What /status, /metrics and ``exposr-trainer status`` report, built from cheap reads.

Counts come from the dataset index (GROUP BY), the registry from ``registry.json`` (no torch),
job facts from the jobs table. Each is a few milliseconds; a short cache keeps /status flat
under polling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.jobstore import JobStore
from config.settings import Settings
from dataset.storage import StorageError
from trainer.model_store import ModelRegistry

log = logging.getLogger(__name__)
COUNT_KEYS = ("total", "real", "ai_generated", "unlabeled")


class TTLCache:
    """One async value, served from memory; after ``ttl`` seconds it is refreshed in the background
    (callers keep getting the previous value meanwhile), after ``invalidate()`` it is reloaded
    before the next answer. So a poller never waits on the database except after a change."""

    def __init__(self, ttl: float, load: Callable[[], Awaitable[Any]]) -> None:
        self.ttl, self.load = ttl, load
        self._value: Any = None
        self._loaded = False
        self._expires = 0.0
        self._refresh: asyncio.Task | None = None
        self._generation = 0

    def invalidate(self) -> None:
        self._generation += 1
        self._loaded = False

    async def get(self) -> Any:
        if not self._loaded:
            return await self._reload()
        if time.monotonic() >= self._expires and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._reload_quietly())
        return self._value

    async def _reload(self) -> Any:
        generation = self._generation
        value = await self.load()
        if generation == self._generation:  # a load begun before an invalidate() is not kept
            self._value, self._loaded = value, True
            self._expires = time.monotonic() + self.ttl
        return value

    async def _reload_quietly(self) -> None:
        try:
            await self._reload()
        except Exception:  # the next request retries; the old value stays served meanwhile
            log.exception("refreshing the status overview failed")


def dataset_counts(counts: dict) -> dict[str, int]:
    return {key: int(counts.get(key, 0)) for key in COUNT_KEYS}


def model_facts(settings: Settings) -> dict[str, Any]:
    """Registry facts: entries, the served model (the champion alias), the newest training time."""
    try:
        registry = ModelRegistry(settings)
        entries: list = registry.entries()
        promoted: Any = registry.champion()
    except (ValueError, StorageError) as exc:  # a corrupt registry.json must not take /status down
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


async def collect_status(settings: Settings, dataset: Any, store: JobStore) -> dict[str, Any]:
    """The time-independent part of /status (the caller adds uptime and live jobs)."""
    counts = await dataset.counts()
    models = await asyncio.to_thread(model_facts, settings)  # the registry may be in the bucket
    jobs = await job_facts(store)
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
