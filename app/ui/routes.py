"""The console's pages: login/logout, overview, models, jobs, review, upload (``/ui/...``).

Thin handlers: each reads through app.ui.views (or the functions the JSON API uses) and renders
a template. State changes (labels, uploads) are in app.ui.actions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from app.jobs import JOB_KINDS
from app.jobstore import ACTIVE_STATES, FINAL_STATES
from app.routes.status import running_jobs
from app.ui import act, evidence, views
from app.ui import compare as compare_versions
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
    login_throttle,
    read_token,
    set_cookie,
)

router = APIRouter(prefix="/ui", include_in_schema=False)
Session = Annotated[dict, Depends(current_session)]
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
    client, throttle = request.client.host if request.client else "unknown", login_throttle(request)
    if wait := throttle.retry_after(client):
        response = _login_page(request, f"Too many failed logins: try again in {wait} s.", status_code=429)
        response.headers["Retry-After"] = str(wait)
        return response
    form = read_token(key, "login", request.cookies.get(LOGIN_COOKIE))
    if (
        form is None
        or not keys_match(form["csrf"], csrf_token)
        or not await request.app.state.ui_revoked.revoke(request, form)  # each form is used once
    ):
        throttle.failed(client)
        return _login_page(
            request,
            "The login form expired, was already used or was not sent from this page: enter the key again.",
            status_code=403,
        )
    if not keys_match(key, api_key_field):
        throttle.failed(client)
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
    await request.app.state.ui_revoked.revoke(request, session)
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
        "served": views.served_line(status, await run_in_threadpool(views.model_entries, state.settings)),
        "actions": [kind for kind in ("scrape", "train", "label") if kind in state.runner.kinds],
        "sources": (await run_in_threadpool(act.sources_or_none, state.settings))[0],
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
            "served": (await request.app.state.overview.get())["latest_model"],
            "chart": views.models_chart(entries),
            "benchmark_chart": await run_in_threadpool(views.benchmark_chart, request, settings),
            "metrics": views.MODEL_METRICS,
            "aliases": aliases,
            "trail": trail,
            "message": message,
        },
        session=session,
        status_code=status_code,
    )


@router.get("/models/compare")
async def compare(request: Request, session: Session, a: str = "", b: str = "", name: str = ""):
    """Two versions side by side: ``?a=v1&b=v2`` (``name``: the model, MODEL_NAME by default)."""
    settings = request.app.state.settings
    name = name or settings.model_name
    entries = [e for e in views.model_entries(settings) if e.get("model") == name]
    context: dict = {"active": "models", "name": name, "versions": [e.get("version") for e in entries]}
    context.update(a=a, b=b, compared=None)
    if not (a and b):
        return render(request, "compare.html", context, session=session)
    if a == b:
        context["message"] = f"choose two different versions (both were {a[:40]!r})"
        return render(request, "compare.html", context, session=session, status_code=400)
    try:
        sides = [await views.version_files(settings, name, version) for version in (a, b)]
    except HTTPException as exc:
        context["message"] = f"{exc.detail}; choose versions from the lists below"
        return render(request, "compare.html", context, session=session, status_code=exc.status_code)
    (entry_a, card_a, report_a), (entry_b, card_b, report_b) = sides
    context["compared"] = {
        "a": entry_a,
        "b": entry_b,
        "metrics": compare_versions.side_by_side(entry_a, entry_b),
        "changes": compare_versions.changes(entry_a, entry_b, card_a, card_b),
        "paired": compare_versions.paired(report_a, report_b),
    }
    return render(request, "compare.html", context, session=session)


@router.get("/models/{name}/{version}")
async def model_detail(name: str, version: str, request: Request, session: Session):
    settings = request.app.state.settings
    try:
        entry, card, report = await views.version_files(settings, name, version)
    except HTTPException as exc:
        return render(
            request,
            "error.html",
            {"title": "No such version", "message": f"{exc.detail}", "back": ("/ui/models", "all versions")},
            session=session,
            status_code=exc.status_code,
        )
    others = [e.get("version") for e in views.model_entries(settings) if e.get("model") == name]
    context = {
        "active": "models",
        "entry": entry,
        "card": card,
        "report": report,
        "decision": views.decision_text(entry),
        "evidence": await run_in_threadpool(evidence.model_evidence, report, card),
        "others": [v for v in others if v != version],
        "monitoring": await _monitoring(request, name, version),
    }
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


async def _monitoring(request: Request, name: str, version: str) -> dict:
    """The version's monitoring rows as a plot and its latest degradation (app/monitoring.py)."""
    rows = await request.app.state.monitor.rows(name, version)
    return {"plot": evidence.monitoring(rows), "degraded": rows[-1]["degraded"] if rows else None}


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
        row["tables"] = views.result_tables(row) if row.get("state") == "succeeded" else []
    rows.sort(key=lambda row: row.get("state") not in ACTIVE_STATES)  # running jobs first, then newest
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


@router.get("/upload")
async def upload_form(request: Request, session: Session):
    return render(
        request,
        "upload.html",
        {"active": "upload", "results": None, "max_bytes": request.app.state.settings.upload_max_bytes},
        session=session,
    )
