"""The operator console (``/ui/``).

Modules: ``session`` (login cookie, CSRF), ``routes`` (pages), ``actions`` (labels, uploads,
thumbnails, live progress, downloads), ``views`` (what the pages show), ``charts`` (server-side
SVG), ``thumbnails`` (cached review thumbnails). Templates and static files ship inside this
package. Prometheus (app/prometheus.py) and the API docs (app/api_docs.py) are the service's own.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def install_console(app: FastAPI) -> None:
    """Routes, static files and exception handlers of the console on ``app``."""
    from app.ui import act, actions, pages, review, routes
    from app.ui.session import Revocations

    app.state.ui_revoked = Revocations()
    for router in (routes.router, actions.router, review.router, act.router):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for exc_class, handler in pages.EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
