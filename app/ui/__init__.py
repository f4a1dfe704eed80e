"""The operator console (``/ui/``), the Prometheus endpoint and the offline API docs.

Modules: ``session`` (login cookie, CSRF), ``routes`` (pages), ``actions`` (labels, uploads,
thumbnails, live progress, downloads), ``views`` (what the pages show), ``charts`` (server-side
SVG), ``thumbnails`` (cached review thumbnails), ``metrics`` (Prometheus), ``docs`` (/docs, /redoc).
Templates and static files (with the vendored Swagger UI and Redoc) ship inside this package.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def install_console(app: FastAPI) -> None:
    """Routes, static files, exception handlers and metrics of the console on ``app``."""
    from app import prometheus as metrics
    from app.ui import actions, docs, pages, routes
    from app.ui.session import Revocations

    app.state.metrics = metrics.ConsoleMetrics()
    app.state.ui_revoked = Revocations()
    app.middleware("http")(metrics.measure_requests)
    for router in (routes.router, actions.router, metrics.router, docs.router):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for exc_class, handler in pages.EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    docs.install_openapi(app)
