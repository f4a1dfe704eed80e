"""POST /scrape, POST /train, POST /label (202 + job id, 409 when running), GET /jobs, GET /jobs/{id}."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, get_args

from fastapi import APIRouter, HTTPException, Query, status

from app.deps import Authorized, RunnerDep
from app.errors import JobBusy
from app.jobs import JOB_KINDS
from app.schemas import ErrorOut, JobAccepted, JobList, JobOut, JobState, Responses
from config.errors import ConfigError

router = APIRouter(tags=["jobs"], dependencies=[Authorized])

# The filters are enums in the OpenAPI schema (a wrong value is a 422 naming the allowed ones).
# mypy cannot see members made at import time: [misc] ("must be a literal") on both, nothing else.
JobKindFilter = Enum("JobKind", {kind: kind for kind in JOB_KINDS}, type=str)  # type: ignore[misc]
JobStateFilter = Enum("JobState", {state: state for state in get_args(JobState)}, type=str)  # type: ignore[misc]

_CONFLICT: Responses = {409: {"model": ErrorOut, "description": "a job of this kind is already running"}}


def enabled_sources(settings) -> list[str]:
    """The names of the enabled entries of sources.yaml (ConfigError when it cannot be read)."""
    from config.sources import load_sources
    from scraper.fetcher_manager import FETCHERS

    return sorted({s.name for s in load_sources(settings.sources_config, FETCHERS).enabled()})


async def start_job(runner, kind: str, trigger: str = "manual", source: str | None = None) -> dict:
    """Start a job for the API and the console alike: 409 naming the running job when its kind is
    busy; ``source`` (scrape only): just that enabled source, 400 naming the enabled ones otherwise."""
    options = None
    if source is not None:
        try:
            names = enabled_sources(runner.settings)
        except ConfigError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
        if source not in names:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                detail=f"no enabled source called {source[:64]!r}; enabled: {', '.join(names) or 'none'}",
            )
        options = {"only": [source]}
    try:
        job = await runner.submit(kind, trigger=trigger, options=options)
    except JobBusy as busy:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"a {kind} job is already {busy.job['state']}: {busy.job['id']}; "
            f"follow it at /jobs/{busy.job['id']} and retry when it has finished",
        ) from busy
    except ValueError as exc:  # options for a kind that a worker runs
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return {"job_id": job["id"], "kind": kind, "state": job["state"], "status_url": f"/jobs/{job['id']}"}


@router.post(
    "/scrape",
    status_code=202,
    response_model=JobAccepted,
    responses={**_CONFLICT, 400: {"model": ErrorOut, "description": "source is not an enabled source"}},
    summary="Start a scrape of every enabled source (or of one, with ?source=)",
)
async def post_scrape(
    runner: RunnerDep,
    source: Annotated[str | None, Query(max_length=64, description="only this enabled source")] = None,
) -> dict:
    return await start_job(runner, "scrape", source=source)


@router.post(
    "/train",
    status_code=202,
    response_model=JobAccepted,
    responses=_CONFLICT,
    summary="Start a training run (separate process)",
)
async def post_train(runner: RunnerDep) -> dict:
    return await start_job(runner, "train")


@router.post(
    "/label",
    status_code=202,
    response_model=JobAccepted,
    responses=_CONFLICT,
    summary="Score images that lack a score from the current scorer (Exposr-Core or local model)",
)
async def post_label(runner: RunnerDep) -> dict:
    return await start_job(runner, "label")


@router.get("/jobs", response_model=JobList, summary="Job history, newest first")
async def list_jobs(
    runner: RunnerDep,
    limit: int = Query(50, ge=1, le=500),
    kind: Annotated[JobKindFilter | None, Query(description="only jobs of this kind")] = None,
    state: Annotated[JobStateFilter | None, Query(description="only jobs in this state")] = None,
) -> dict:
    return {"jobs": await runner.list(limit=limit, kind=kind and kind.value, state=state and state.value)}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={404: {"model": ErrorOut}},
    summary="One job: state, timestamps, progress, result or error",
)
async def get_job(job_id: str, runner: RunnerDep) -> dict:
    job = await runner.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}; list jobs at /jobs")
    return job
