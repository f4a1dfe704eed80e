"""Every error answer is JSON with a ``detail`` a person can act on, and none shows internals.

- :func:`public_text` replaces the absolute paths of DATASET_DIR, MODELS_DIR and LOG_DIR (and the
  current directory) with the setting's name: answers say ``DATASET_DIR/images/...`` and the log
  keeps the full text for the operator.
- The database (SQLAlchemy) failing under a request (disk full, locked past its timeout, server
  gone) is ``503`` with the reason, and so is storage or the file system failing (StorageError,
  OSError: a full disk, a bucket down); a client that goes away before its request was read is an
  ``info`` line, not an error; anything else is a ``500`` JSON that says where to look, with the
  traceback in the log only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.connections import ClientLog
from config.settings import Settings
from dataset.storage import StorageError

log = logging.getLogger(__name__)


def _path_names(settings: Settings) -> list[tuple[str, str]]:
    pairs = []
    for name in ("dataset_dir", "models_dir", "log_dir"):
        path = Path(getattr(settings, name))
        for form in {str(path.resolve()), str(path.absolute())}:
            pairs.append((form, name.upper()))
    pairs.append((os.getcwd(), "."))
    # Longest first, so DATASET_DIR inside the working directory is named, not "./datasets".
    return sorted({p for p in pairs if len(p[0]) > 1}, key=lambda p: len(p[0]), reverse=True)


def public_text(text: str, settings: Settings) -> str:
    for path, name in _path_names(settings):
        text = text.replace(path, name)
    return text


def public(value: Any, settings: Settings) -> Any:
    """``public_text`` applied to every string in a JSON-like value."""
    if isinstance(value, str):
        return public_text(value, settings)
    if isinstance(value, dict):
        return {k: public(v, settings) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public(v, settings) for v in value]
    return value


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if isinstance(exc.detail, str | dict | list):
        exc.detail = public(exc.detail, request.app.state.settings)
    return await http_exception_handler(request, exc)


async def _database_error(request: Request, exc: SQLAlchemyError) -> Response:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    log.error("%s %s: database unavailable: %s", request.method, request.url.path, reason)
    detail = (
        f"the database is unavailable ({public_text(reason, request.app.state.settings)}): nothing "
        "was changed; free disk space or wait for the other writer, then retry"
    )
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "30"})


async def _environment_error(request: Request, exc: Exception) -> Response:
    """Storage or the file system failing (disk full, permissions, a bucket down): not the client's
    fault and usually passing, so 503 with the reason."""
    reason = public_text(str(exc), request.app.state.settings)
    log.error("%s %s: storage unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"storage unavailable ({reason}); nothing was changed, retry later"},
        status_code=503,
        headers={"Retry-After": "30"},
    )


async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
    client = request.client.host if request.client else "unknown"
    request.app.state.client_log.info(  # a client can do this at will: rate limited per client
        client, "%s %s: the client disconnected before its request was read", request.method, request.url.path
    )
    return Response(status_code=499)  # nobody reads it; the request log shows 499


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {
            "detail": "internal error; nothing is known to have changed. The service log has "
            "the details (search for this path)"
        },
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.state.client_log = ClientLog(log)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(StorageError, _environment_error)
    app.add_exception_handler(OSError, _environment_error)
    app.add_exception_handler(Exception, _unexpected)
