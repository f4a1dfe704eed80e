"""Rendering for the console: Jinja2 templates (autoescaped), security headers, error pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from app.errors import ConsoleDisabled, CsrfRejected, LoginRequired
from app.ui import views

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["pretty"] = views.pretty
templates.env.filters["when"] = views.when
templates.env.globals["safe_url"] = views.safe_url

# The console's own pages run only our static script: markup that slipped into metadata cannot run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = (
    ("overview", "/ui/", "Overview"),
    ("models", "/ui/models", "Models"),
    ("jobs", "/ui/jobs", "Jobs"),
    ("review", "/ui/review", "Review"),
    ("upload", "/ui/upload", "Upload"),
    ("webhooks", "/ui/webhooks", "Webhooks"),
)


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200, session: dict | None = None
) -> HTMLResponse:
    context = {"nav": NAV, "session": session, "csrf": session["csrf"] if session else None, **context}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/ui/api/") or "application/json" in request.headers.get("accept", "")


async def console_disabled(request: Request, exc: ConsoleDisabled):
    message = (
        "TRAINER_API_KEY is not set on the server, so the console is disabled (as is the API); "
        "set it in the environment or .env and restart"
    )
    if wants_json(request):
        return JSONResponse({"detail": message}, status_code=503)
    return render(request, "disabled.html", {"message": message}, status_code=503)


async def login_required(request: Request, exc: LoginRequired):
    if wants_json(request):
        return JSONResponse(
            {"detail": "not logged in or the session expired: log in at /ui/login"}, status_code=401
        )
    return RedirectResponse("/ui/login", status_code=303)


async def csrf_rejected(request: Request, exc: CsrfRejected):
    message = "missing or wrong CSRF token: reload the page and try again (nothing was changed)"
    if wants_json(request):
        return JSONResponse({"detail": message}, status_code=403)
    return render(request, "error.html", {"title": "Refused", "message": message}, status_code=403)


# Starlette types a handler as taking any Exception; each of these takes its own class only.
EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
    ConsoleDisabled: console_disabled,
    LoginRequired: login_required,
    CsrfRejected: csrf_rejected,
}
