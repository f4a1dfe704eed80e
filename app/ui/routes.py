"""The console's pages: login/logout, overview, models, jobs, review, upload (``/ui/...``).

Thin handlers: each reads through app.ui.views (or the functions the JSON API uses) and renders
a template. State changes (labels, uploads) are in app.ui.actions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from app.jobs import JOB_KINDS
from app.jobstore import ACTIVE_STATES, FINAL_STATES
from app.routes.models import registered_artifact
from app.routes.status import running_jobs
from app.ui import views
from app.ui.pages import render
from app.ui.session import (
    LOGIN_COOKIE,
    LOGIN_FORM_SECONDS,
    SESSION_COOKIE,
    api_key,
    check_csrf,
    clear_cookie,
    current_session,
    issue_token,
    keys_match,
    read_token,
    set_cookie,
)
from labeler.review import review_queue

router = APIRouter(prefix="/ui", include_in_schema=False)
Session = Annotated[dict, Depends(current_session)]
REVIEW_PAGE = 48
JOB_STATES = ACTIVE_STATES + FINAL_STATES


def _login_page(request: Request, message: str | None = None, status_code: int = 200):
    token, payload = issue_token(api_key(request), "login", LOGIN_FORM_SECONDS)
    response = render(
        request, "login.html", {"login_csrf": payload["csrf"], "message": message}, status_code=status_code
    )
    set_cookie(request, response, LOGIN_COOKIE, token, LOGIN_FORM_SECONDS)
    return response


@router.get("/login")
async def login_form(request: Request):
    return _login_page(request)


@router.post("/login")
async def login(
    request: Request,
    api_key_field: Annotated[str, Form(alias="api_key")] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    key = api_key(request)
    form = read_token(key, "login", request.cookies.get(LOGIN_COOKIE))
    if form is None or not keys_match(form["csrf"], csrf_token):
        return _login_page(
            request,
            "The login form expired or was not sent from this page: enter the key again.",
            status_code=403,
        )
    if not keys_match(key, api_key_field):
        return _login_page(request, "Wrong key: enter the server's TRAINER_API_KEY.", status_code=401)
    hours = request.app.state.settings.ui_session_hours
    token, _ = issue_token(key, "session", hours * 3600)
    response = RedirectResponse("/ui/", status_code=303)
    set_cookie(request, response, SESSION_COOKIE, token, hours * 3600)
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, session: Session, csrf_token: Annotated[str, Form()] = ""):
    check_csrf(session, csrf_token)
    request.app.state.ui_revoked.revoke(session)
    response = RedirectResponse("/ui/login", status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    return response


@router.get("")
async def ui_root():
    return RedirectResponse("/ui/", status_code=303)


@router.get("/")
async def overview(request: Request, session: Session):
    state = request.app.state
    status = await state.overview.get()
    running = [views.progress_view(job) for job in running_jobs(state.runner, status)]
    context = {
        "active": "overview",
        "status": status,
        "running": running,
        "chart": views.growth_chart(await views.growth(state.dataset)),
        "scrapes": await views.last_scrape_reports(state.runner.store),
        "scheduler": {"state": state.scheduler.state, "next_runs": state.scheduler.next_runs()},
    }
    return render(request, "overview.html", context, session=session)


@router.get("/models")
async def models(request: Request, session: Session):
    return await models_page(request, session)


async def models_page(request: Request, session: dict, message: str | None = None, status_code: int = 200):
    """Every version with the aliases naming it, a "serve this version" form each, and the trail."""
    settings = request.app.state.settings
    entries = views.model_entries(settings)
    aliases, trail = await run_in_threadpool(views.alias_trail, settings)
    return render(
        request,
        "models.html",
        {
            "active": "models",
            "entries": entries,
            "chart": views.models_chart(entries),
            "metrics": views.MODEL_METRICS,
            "aliases": aliases,
            "trail": trail,
            "message": message,
        },
        session=session,
        status_code=status_code,
    )


@router.get("/models/{name}/{version}")
async def model_detail(name: str, version: str, request: Request, session: Session):
    settings = request.app.state.settings
    entry = (await run_in_threadpool(registered_artifact, settings, name, version, "weights.pt")).entry
    card = await run_in_threadpool(views.artifact_json, settings, entry, "model.json")
    report = await run_in_threadpool(views.artifact_json, settings, entry, "report.json")
    context = {"active": "models", "entry": entry, "card": card, "report": report}
    return render(request, "model.html", context, session=session)


@router.get("/webhooks")
async def webhooks(request: Request, session: Session, state: str = ""):
    return await webhooks_page(request, session, state=state)


async def webhooks_page(
    request: Request, session: dict, state: str = "", message: str | None = None, status_code: int = 200
):
    """Each webhook delivery: event, subscriber, state, attempts with their status codes, next try."""
    states = ("pending", "delivered", "failed")
    if state and state not in states:
        message, state, status_code = f"unknown state {state!r}: choose one of {', '.join(states)}", "", 400
    webhooks = request.app.state.webhooks
    total, rows = await webhooks.outbox.list(limit=200, state=state or None)
    context = {
        "active": "webhooks",
        "deliveries": rows,
        "total": total,
        "state": state,
        "states": states,
        "subscribers": [s.label for s in webhooks.outbox.subscribers],
        "message": message,
    }
    return render(request, "webhooks.html", context, session=session, status_code=status_code)


@router.get("/jobs")
async def jobs(request: Request, session: Session, kind: str = "", state: str = ""):
    kinds = sorted(request.app.state.runner.kinds) or sorted(JOB_KINDS)
    message = None
    if kind and kind not in kinds:
        message, kind = f"unknown job kind {kind!r}: choose one of {', '.join(kinds)}", ""
    if state and state not in JOB_STATES:
        message, state = f"unknown job state {state!r}: choose one of {', '.join(JOB_STATES)}", ""
    rows = await request.app.state.runner.list(limit=200, kind=kind or None, state=state or None)
    for row in rows:
        row["duration"] = views.duration(row)
        row["progress_text"] = views.describe_progress(row.get("progress") or {})
    context = {
        "active": "jobs",
        "jobs": rows,
        "kinds": kinds,
        "states": JOB_STATES,
        "kind": kind,
        "state": state,
        "message": message,
    }
    return render(request, "jobs.html", context, session=session, status_code=400 if message else 200)


async def review_page(request: Request, session: dict, message: str | None = None, status_code: int = 200):
    state = request.app.state
    page = await review_queue(state.dataset, state.settings, kind="all", limit=REVIEW_PAGE)
    counts = (await state.overview.get())["dataset_counts"]
    return render(
        request,
        "review.html",
        {"active": "review", "page": page, "counts": counts, "message": message},
        session=session,
        status_code=status_code,
    )


@router.get("/review")
async def review(request: Request, session: Session):
    return await review_page(request, session)


@router.get("/upload")
async def upload_form(request: Request, session: Session):
    return render(
        request,
        "upload.html",
        {"active": "upload", "results": None, "max_bytes": request.app.state.settings.upload_max_bytes},
        session=session,
    )
