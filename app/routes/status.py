"""GET /status (public), GET /healthz (public), GET /metrics (bearer)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.deps import Authorized, RunnerDep, SchedulerDep
from app.errors import public
from app.jobs import JobRunner
from app.jobstore import ACTIVE_STATES
from app.overview import Overview
from app.schemas import Health, MetricsOut, StatusOut

router = APIRouter(tags=["status"])
STATUS_CACHE_SECONDS = 1.0


async def overview_cache(state) -> Overview:
    """The overview in memory (app/overview.py): pollers must not turn into a query storm, an idle
    replica must not answer with old numbers, and a hanging source must not hold the answer.
    Job changes reset it."""
    overview = Overview(state.settings, state.dataset, state.runner.store, STATUS_CACHE_SECONDS)
    state.runner.on_change.append(overview.invalidate)
    await overview.prime()
    return overview


async def _overview(request: Request) -> dict:
    return await request.app.state.overview.get()


def running_jobs(runner: JobRunner, overview: dict) -> list[dict]:
    """This process's live jobs, then those another worker on the dataset runs (from the
    overview's job rows, at most a refresh old): with several workers, each one reports them all."""
    live = runner.active_jobs()
    kinds = {job["kind"] for job in live}
    finished = {job["id"] for job in runner.unwritten_jobs()}  # ended here; the row lags behind
    return live + [
        job
        for kind, job in overview["last_jobs"].items()
        if kind not in kinds and job["state"] in ACTIVE_STATES and job["id"] not in finished
    ]


@router.get("/status", response_model=StatusOut, summary="Service, dataset, scheduler and job overview")
async def get_status(request: Request, runner: RunnerDep, scheduler: SchedulerDep) -> dict:
    overview = await _overview(request)
    last_jobs = dict(overview["last_jobs"])
    running = running_jobs(runner, overview)
    for job in [*runner.unwritten_jobs(), *running]:  # live state beats the cached row
        if job["kind"] not in last_jobs or last_jobs[job["kind"]]["created_at"] <= job["created_at"]:
            last_jobs[job["kind"]] = job
    return public(
        {
            **overview,
            "uptime": round(time.monotonic() - request.app.state.started_monotonic, 3),
            "started_at": request.app.state.started_at,
            "scheduler": {"state": scheduler.state, "next_runs": scheduler.next_runs()},
            "last_jobs": last_jobs,
            "running_jobs": running,
        },
        request.app.state.settings,
    )  # a public page: settings' names, never the server's paths


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/metrics",
    response_model=MetricsOut,
    dependencies=[Authorized],
    summary="Dataset size and model quality, for Exposr-Core",
)
async def get_metrics(request: Request, runner: RunnerDep) -> dict:
    overview = await _overview(request)
    promoted = overview["latest_model"] or {}
    return {
        "total_images": overview["dataset_counts"]["total"],
        "models_trained": overview["models_trained"],
        "last_training": overview["last_train"],
        "validation_accuracy": promoted.get("val_acc"),
        "validation_auc": promoted.get("val_auc"),
        "validation_auc_ci95": promoted.get("val_auc_ci95"),
        "evaluation_n": promoted.get("eval_n"),
        "model_version": promoted.get("version"),
        "shortcut_warning": overview.get("shortcut_warning"),
        **live_figures(request, promoted.get("version")),
        "dataset_counts": overview["dataset_counts"],
        "by_source": overview["by_source"],
        "jobs_running": [job["kind"] for job in running_jobs(runner, overview)],
        "stale": overview["stale"],
    }


def live_figures(request: Request, version: str | None) -> dict:
    """The served version's latest monitoring week (app/monitoring.py), from memory."""
    monitor = getattr(request.app.state, "monitor", None)
    latest = getattr(monitor, "latest", None) or {}
    if not latest or latest.get("version") != version:
        return {}
    return {
        "live_auc": latest.get("auc"),
        "live_auc_ci95": latest.get("auc_ci95"),
        "live_week": latest.get("week"),
        "score_psi": latest.get("psi"),
        "model_degraded": latest.get("degraded"),
    }
