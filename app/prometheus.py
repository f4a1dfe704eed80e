"""Prometheus text endpoint (``GET /metrics/prometheus``, bearer) built with prometheus-client.

Two kinds of series:

* counted in this process, in the app's own ``CollectorRegistry`` (so several apps in one process,
  as in the tests, never share or collide): request latency by route template
  (``exposr_http_request_duration_seconds``) and upload outcomes (``exposr_ingest_outcomes_total``
  with ``source="upload"``);
* read at scrape time from the shared state, so every replica reports the same numbers: images by
  label and source, scrape ingest outcomes by source and reason (summed over the scrape jobs'
  reports in the jobs table), jobs by kind and state, job durations, model versions.

The JSON ``GET /metrics`` is unchanged; this endpoint is for Prometheus.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from app.deps import Authorized
from dataset.db import jobs_table
from dataset.errors import StorageError
from trainer.model_store import model_store

# Label values come from closed sets, so no client can add series: h11 accepts any token as a method.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCRAPE_OUTCOMES = (("stored", "stored"), ("duplicates", "duplicate"), ("near_duplicates", "near_duplicate"))

router = APIRouter(tags=["status"])


class SharedState:
    """A collector whose values are gathered (async) just before each exposition."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self):
        snap = self.snapshot
        if not snap:
            return
        images = GaugeMetricFamily(
            "exposr_dataset_images", "Images in the dataset index", labels=["label", "source"]
        )
        for source, counts in sorted(snap["by_source"].items()):
            for label in ("real", "ai_generated", "unlabeled"):
                images.add_metric([label, source], counts.get(label, 0))
        yield images
        scraped = CounterMetricFamily(
            "exposr_scrape_ingest_outcomes",
            "Images from scrape jobs by outcome and reason (all recorded jobs)",
            labels=["source", "outcome", "reason"],
        )
        for (source, outcome, reason), n in sorted(snap["scrape_outcomes"].items()):
            scraped.add_metric([source, outcome, reason], n)
        yield scraped
        jobs = GaugeMetricFamily("exposr_jobs", "Recorded jobs by kind and state", labels=["kind", "state"])
        for (kind, state), n in sorted(snap["jobs"].items()):
            jobs.add_metric([kind, state], n)
        yield jobs
        durations = SummaryMetricFamily(
            "exposr_job_duration_seconds", "Run time of finished jobs", labels=["kind", "state"]
        )
        for (kind, state), (count, total) in sorted(snap["durations"].items()):
            durations.add_metric([kind, state], count_value=count, sum_value=total)
        yield durations
        yield from _model_families(snap["models"], snap["promoted"])
        yield from _live_families(snap.get("live"))


def _live_families(latest: dict | None):
    """The served version's latest monitoring week (app/monitoring.py)."""
    auc = GaugeMetricFamily(
        "exposr_model_live_auc",
        "AUC of the served model on the latest ended week's new labelled images",
        labels=["model", "version", "week"],
    )
    psi = GaugeMetricFamily(
        "exposr_score_psi",
        "PSI of the latest ended week's scores against the evaluation set's",
        labels=["model", "version", "week"],
    )
    degraded = GaugeMetricFamily(
        "exposr_model_degraded", "1 when the latest week says the served model degraded", labels=["model"]
    )
    if latest:
        key = [str(latest["model"]), str(latest["version"]), str(latest["week"])]
        if isinstance(latest.get("auc"), int | float):
            auc.add_metric(key, latest["auc"])
        if isinstance(latest.get("psi"), int | float):
            psi.add_metric(key, latest["psi"])
        degraded.add_metric([str(latest["model"])], 1 if latest.get("degraded") else 0)
    yield from (auc, psi, degraded)


def _model_families(entries: list[dict], promoted: dict | None):
    info = GaugeMetricFamily(
        "exposr_model_version_info",
        "Registered model versions (value 1)",
        labels=["model", "version", "architecture", "promoted"],
    )
    auc = GaugeMetricFamily("exposr_model_val_auc", "Validation AUC per version", labels=["model", "version"])
    acc = GaugeMetricFamily(
        "exposr_model_val_acc", "Validation accuracy per version", labels=["model", "version"]
    )
    for e in entries:
        key = [str(e.get("model")), str(e.get("version"))]
        info.add_metric([*key, str(e.get("architecture") or ""), str(bool(e.get("promoted"))).lower()], 1)
        if isinstance(e.get("val_auc"), int | float):
            auc.add_metric(key, e["val_auc"])
        if isinstance(e.get("val_acc"), int | float):
            acc.add_metric(key, e["val_acc"])
    served = GaugeMetricFamily(
        "exposr_model_served_info", "The promoted (served) version (value 1)", labels=["model", "version"]
    )
    if promoted:
        served.add_metric([str(promoted["model"]), str(promoted["version"])], 1)
    yield from (info, auc, acc, served)


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "exposr_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.uploads = CounterMetric(
            "exposr_ingest_outcomes",
            "Uploads (API and console) by outcome and reason",
            ["source", "outcome", "reason"],
            registry=self.registry,
        )
        self.shared = SharedState()
        self.registry.register(self.shared)

    def count_ingest(self, status: str, reason: str | None = None, source: str = "upload") -> None:
        self.uploads.labels(source, status, reason or "").inc()

    def observe_request(self, request: Request, status: int, seconds: float) -> None:
        """Latency by method (``other`` outside the standard ones), route template (``/jobs/{job_id}``,
        not the id; ``unmatched`` for unknown paths) and status: every label from a closed set.
        Called by the service's one request timer (app.main.time_requests)."""
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        method = request.method if request.method in METHODS else "other"
        self.latency.labels(method, path, str(status)).observe(seconds)


async def _job_facts(engine) -> tuple[Counter, dict, Counter]:
    states: Counter = Counter()
    durations: dict[tuple[str, str], tuple[int, float]] = {}
    scrape: Counter = Counter()
    count = select(jobs_table.c.kind, jobs_table.c.state, func.count()).group_by(
        jobs_table.c.kind, jobs_table.c.state
    )
    timed = select(
        jobs_table.c.kind,
        jobs_table.c.state,
        jobs_table.c.started_at,
        jobs_table.c.finished_at,
    ).where(jobs_table.c.finished_at.is_not(None), jobs_table.c.started_at.is_not(None))
    reports = select(jobs_table.c.result).where(
        jobs_table.c.kind == "scrape", jobs_table.c.state == "succeeded"
    )
    async with engine.connect() as conn:
        for kind, state, n in (await conn.execute(count)).all():
            states[(kind, state)] = n
        for kind, state, started, finished in (await conn.execute(timed)).all():
            seconds = _seconds(started, finished)
            if seconds is not None:
                n, total = durations.get((kind, state), (0, 0.0))
                durations[(kind, state)] = (n + 1, total + seconds)
        for (result,) in (await conn.execute(reports)).all():
            _add_scrape_outcomes(scrape, result or {})
    return states, durations, scrape


def _add_scrape_outcomes(counter: Counter, result: dict) -> None:
    for source, report in (result.get("sources") or {}).items():
        if not isinstance(report, dict):
            continue
        for field, outcome in SCRAPE_OUTCOMES:
            counter[(source, outcome, "")] += int(report.get(field) or 0)
        for reason, n in (report.get("rejected") or {}).items():
            counter[(source, "rejected", str(reason))] += int(n)
        for kind, n in (report.get("errors") or {}).items():
            counter[(source, "error", str(kind))] += int(n)


def _seconds(started: str, finished: str) -> float | None:
    try:
        return (
            datetime.fromisoformat(finished.replace("Z", "+00:00"))
            - datetime.fromisoformat(started.replace("Z", "+00:00"))
        ).total_seconds()
    except (AttributeError, ValueError):
        return None


@router.get(
    "/metrics/prometheus",
    dependencies=[Authorized],
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        }
    },
    summary="Metrics for Prometheus (text format)",
)
async def prometheus_metrics(request: Request) -> Response:
    state = request.app.state
    counts = await state.dataset.counts()
    states, durations, scrape = await _job_facts(state.runner.store.engine)
    try:  # MODELS_DIR, or the bucket (STORAGE_DRIVER=s3)
        entries = await run_in_threadpool(model_store(state.settings).load_registry)
    except (ValueError, StorageError):  # a corrupt registry must not take the metrics down
        entries = []
    metrics: ConsoleMetrics = state.metrics
    metrics.shared.snapshot = {
        "by_source": counts.get("by_source") or {},
        "jobs": states,
        "durations": durations,
        "scrape_outcomes": scrape,
        "models": entries,
        "promoted": (await state.overview.get())["latest_model"],  # from memory: never a wait here
        "live": getattr(getattr(state, "monitor", None), "latest", None),
    }
    page = await run_in_threadpool(generate_latest, metrics.registry)  # never on the event loop
    return Response(page, media_type=CONTENT_TYPE_LATEST)
