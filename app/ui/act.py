"""Acting from the console: start a scrape (all sources or one), a training or a labeler run, each
behind the session and its CSRF token and confirmed on a page of its own, answering with the job's
page (live progress, then its result as a table).

Jobs start through ``app.routes.jobs.start_job``, as ``POST /scrape``, ``/train`` and ``/label`` do,
with the trigger ``console``. Serving or rolling back a version is not here: it comes with the
model registry's aliases (the models page gets that action then).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from app.routes.jobs import enabled_sources, start_job
from app.ui import views
from app.ui.pages import render
from app.ui.session import check_csrf, current_session
from config.errors import ConfigError

router = APIRouter(prefix="/ui", include_in_schema=False)
Session = Annotated[dict, Depends(current_session)]
ACTIONS = {
    "scrape": "Scrape the sources",
    "train": "Train a new version",
    "label": "Score images without a score from the current scorer (labeler)",
}


def sources_or_none(settings) -> tuple[list[str], str | None]:
    try:
        return enabled_sources(settings), None
    except ConfigError as exc:
        return [], str(exc)


def confirm_page(
    request: Request, session: dict, kind: str, source: str, message: str | None = None, code: int = 200
):
    if kind not in ACTIONS or kind not in request.app.state.runner.kinds:
        known = ", ".join(k for k in ACTIONS if k in request.app.state.runner.kinds)
        context: dict[str, Any] = {
            "title": "No such action",
            "message": f"no action {kind[:30]!r}; the console can start: {known}",
        }
        return render(request, "error.html", context, session=session, status_code=404)
    sources, problem = sources_or_none(request.app.state.settings) if kind == "scrape" else ([], None)
    context = {
        "active": "overview",
        "kind": kind,
        "what": ACTIONS[kind],
        "source": source,
        "sources": sources,
        "message": message or problem,
    }
    return render(request, "confirm.html", context, session=session, status_code=code)


@router.get("/act/{kind}")
async def confirm(kind: str, request: Request, session: Session, source: str = ""):
    return confirm_page(request, session, kind, source)


@router.post("/act/{kind}")
async def act(
    kind: str,
    request: Request,
    session: Session,
    csrf_token: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
    source: Annotated[str, Form()] = "",
):
    check_csrf(session, csrf_token)
    if kind not in ACTIONS or kind not in request.app.state.runner.kinds:
        return confirm_page(request, session, kind, source)
    if confirm != "yes":
        return confirm_page(request, session, kind, source, "not started: confirm with the button", 400)
    try:
        answer = await start_job(
            request.app.state.runner, kind, "console", (source or None) if kind == "scrape" else None
        )
    except HTTPException as exc:
        return confirm_page(request, session, kind, source, f"not started: {exc.detail}", exc.status_code)
    return RedirectResponse(f"/ui/jobs/{answer['job_id']}", status_code=303)


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request, session: Session):
    job = await request.app.state.runner.get(job_id[:64])
    if job is None:
        context: dict[str, Any] = {
            "title": "No such job",
            "message": f"no job {job_id[:64]!r}",
            "back": ("/ui/jobs", "all jobs"),
        }
        return render(request, "error.html", context, session=session, status_code=404)
    context = {
        "active": "jobs",
        "job": job,
        "live": views.progress_view(job),
        "duration": views.duration(job),
        "result": views.result_tables(job),
    }
    return render(request, "job.html", context, session=session)


@router.get("/api/jobs/{job_id}")
async def job_json(job_id: str, request: Request, session: Session):
    job = await request.app.state.runner.get(job_id[:64])
    if job is None:
        return JSONResponse({"detail": f"no job {job_id[:64]!r}"}, status_code=404)
    return views.progress_view(job)
