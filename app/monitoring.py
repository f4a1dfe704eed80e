"""Live monitoring of the served model (design.md §13): weekly rows of the champion on the images
stored after it was trained and labelled since, kept in ``model_monitoring`` (same DATABASE_URL as
the jobs), and ``model.degraded`` when the latest week says so.

The figures are trainer/monitoring.py's. A row is written once, when its week has ended, and never
recomputed: a later re-score or relabel changes later weeks only (``GET
/models/{name}/{version}/monitoring`` serves the rows as written). The monitor runs after every
finished label job (new images have just been scored). A newly written latest row that degrades
the model (its AUC's upper bound below the promotion's lower bound, or PSI > 0.25) is logged,
recorded in the row, told to webhook subscribers (``model.degraded`` through the outbox), and with
``RETRAIN_ON_DEGRADATION=true`` queues a training (one at a time, as always: a busy kind is
recorded as skipped). ``latest`` (the newest row of the served version) feeds ``/metrics`` and the
Prometheus gauges ``exposr_model_live_auc`` and ``exposr_score_psi``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.concurrency import run_in_threadpool

from config.clock import iso_micro, utc_now
from config.settings import Settings
from dataset.db import monitoring_table
from dataset.errors import StorageError
from trainer.errors import ArtifactMissing
from trainer.model_store import ModelRegistry
from trainer.monitoring import Observation, degradation, parse_time, weekly_rows

log = logging.getLogger(__name__)


def scorer_name(stored: str | None) -> str:
    """``local vit v3`` / ``exposr-core <version>`` from the index's scorer JSON (labeler/scoring.py)."""
    try:
        scorer = json.loads(stored) if stored else None
    except json.JSONDecodeError:
        scorer = None
    if not isinstance(scorer, dict):
        return "unknown"
    parts = [str(scorer[k]) for k in ("name", "model", "version") if scorer.get(k)]
    return " ".join(parts) or "unknown"


class Monitor:
    """The service's monitor: ``run()`` after each label job; ``rows()`` for the API."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        dataset: Any,
        emit: Callable[[list[tuple[str, dict]]], Awaitable[Any]] | None = None,
        retrain: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.settings, self.engine, self.dataset = settings, engine, dataset
        self.emit, self.retrain = emit, retrain
        self.latest: dict | None = None  # {model, version, week, auc, auc_ci95, psi, ks_p, degraded}

    async def rows(self, model: str, version: str) -> list[dict]:
        query = (
            select(monitoring_table.c.row, monitoring_table.c.degraded)
            .where(monitoring_table.c.model == model, monitoring_table.c.version == version)
            .order_by(monitoring_table.c.week)
        )
        async with self.engine.connect() as conn:
            return [{**row, "degraded": degraded} for row, degraded in (await conn.execute(query)).all()]

    async def load_latest(self) -> dict | None:
        """At start-up: the newest written row of the served version (no computation)."""
        champion = await run_in_threadpool(ModelRegistry(self.settings).champion)
        if champion is None:
            return None
        rows = await self.rows(champion["model"], champion["version"])
        key = {"model": champion["model"], "version": champion["version"]}
        self.latest = {**key, **rows[-1]} if rows else None
        return self.latest

    async def job_finished(self, job: dict) -> None:
        if job.get("kind") == "label" and job.get("state") == "succeeded":
            await self.run()

    async def run(self) -> dict | None:
        """Write the rows of the champion's ended weeks not written yet; tell of a degradation.
        Returns the newest row (None without a champion or a report)."""
        registry = ModelRegistry(self.settings)
        champion = await run_in_threadpool(registry.champion)
        if champion is None:
            self.latest = None
            return None
        entry: dict[str, Any] = dict(champion)
        reference = await run_in_threadpool(_reference_scores, registry, entry)
        if reference is None:
            return None
        trained = parse_time(str(entry.get("timestamp")))
        observations = [
            Observation(s.created_at, s.label, float(s.confidence), s.generator, scorer_name(s.scorer))
            for s in await self.dataset.samples(("real", "ai"))
            if s.confidence is not None and parse_time(s.created_at) > trained
        ]
        model, version = entry["model"], entry["version"]
        ended = weekly_rows(observations, reference, self.settings.eval_min_per_class, utc_now())
        written = {row["week"] for row in await self.rows(model, version)}
        new = [row for row in ended if row["week"] not in written]
        lower = (entry.get("val_auc_ci95") or [None])[0]
        for row in new:
            reason = degradation(row, lower) if row is new[-1] and row is ended[-1] else None
            if await self._insert(model, version, row, reason) and reason:
                await self._degraded(entry, row, reason)
        rows = await self.rows(model, version)
        newest = rows[-1] if rows else None
        self.latest = None if newest is None else {"model": model, "version": version, **newest}
        return newest

    async def _insert(self, model: str, version: str, row: dict, reason: str | None) -> bool:
        """False when another replica wrote this week first (its row stands)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    monitoring_table.insert().values(
                        model=model,
                        version=version,
                        week=row["week"],
                        row=row,
                        degraded=reason,
                        computed_at=iso_micro(),
                    )
                )
        except IntegrityError:
            return False
        return True

    async def _degraded(self, entry: dict, row: dict, reason: str) -> None:
        log.warning("model.degraded: %s %s: %s", entry["model"], entry["version"], reason)
        if self.emit is not None:
            from app.webhooks import version_data

            await self.emit(
                [("model.degraded", {**version_data(self.settings, entry), "week": row, "reason": reason})]
            )
        if self.settings.retrain_on_degradation and self.retrain is not None:
            log.info("RETRAIN_ON_DEGRADATION: a training is queued")
            await self.retrain()


def _reference_scores(registry: ModelRegistry, entry: dict) -> list[float] | None:
    """The champion's evaluation-set P(ai) (report.json), what the weeks' scores are compared with."""
    try:
        report = json.loads(registry.artifact(entry, "report.json").read())
        return [float(row["p_ai"]) for row in report["evaluation"]["images"]]
    except (ArtifactMissing, StorageError, OSError, ValueError, KeyError, TypeError) as exc:
        log.info("monitoring: %s %s has no usable report (%s)", entry.get("model"), entry.get("version"), exc)
        return None
