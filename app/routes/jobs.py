"""POST /scrape, POST /train, POST /label (202 + job id, 409 when running), GET /jobs, GET /jobs/{id}."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, get_args

from fastapi import APIRouter, HTTPException, Query, status

from app.deps import Authorized, RunnerDep
from app.jobs import JOB_KINDS, JobBusy
from app.schemas import ErrorOut, JobAccepted, JobList, JobOut, JobState

router = APIRouter(tags=["jobs"], dependencies=[Authorized])

# The filters are enums in the OpenAPI schema (a wrong value is a 422 naming the allowed ones).
JobKindFilter = Enum("JobKind", {kind: kind for kind in JOB_KINDS}, type=str)
JobStateFilter = Enum("JobState", {state: state for state in get_args(JobState)}, type=str)

_CONFLICT = {409: {"model": ErrorOut, "description": "a job of this kind is already running"}}


async def start_job(runner, kind: str) -> dict:
    try:
        job = await runner.submit(kind, trigger="manual")
    except JobBusy as busy:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"a {kind} job is already {busy.job['state']}: {busy.job['id']}; "
            f"follow it at /jobs/{busy.job['id']} and retry when it has finished",
        ) from busy
    return {"job_id": job["id"], "kind": kind, "state": job["state"], "status_url": f"/jobs/{job['id']}"}


@router.post(
    "/scrape",
    status_code=202,
    response_model=JobAccepted,
    responses=_CONFLICT,
    summary="Start a scrape of every enabled source",
)
async def post_scrape(runner: RunnerDep) -> dict:
    return await start_job(runner, "scrape")


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
