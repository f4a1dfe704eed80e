"""Every error answer is JSON with a ``detail`` a person can act on, and none shows internals; and
the service branch of the exception tree (drawn in config/errors.py): ``ServiceError``, the
service's own refusals.

- :func:`public_text` replaces the absolute paths of DATASET_DIR, MODELS_DIR and LOG_DIR (and the
  current directory) with the setting's name: answers say ``DATASET_DIR/images/...`` and the log
  keeps the full text for the operator.
- The answers key on branches, never on a list of leaf classes (:data:`ANSWERS`).
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
from config.errors import ExposrError
from config.settings import Settings
from dataset.errors import StorageError

log = logging.getLogger(__name__)


class ServiceError(ExposrError):
    """The service refused or could not run something; the message says what and why."""


class JobBusy(ServiceError):
    """A job of that kind is already queued or running (``job`` is its row)."""

    def __init__(self, job: dict) -> None:
        super().__init__(f"a {job['kind']} job is already {job['state']}: {job['id']}")
        self.job = job


class UnknownJobKind(ServiceError, KeyError):
    """No job of that kind (the message lists the known ones)."""


class ChildFailed(ServiceError):
    """The child's function raised (message for a person) or the child died without a result."""


class BodyTooLarge(ServiceError):
    """A request body grew past its limit while being read (the route or the guard answers 413)."""


class UnknownOriginal(ServiceError, ValueError):
    """``edit_of`` names an id no stored image has (the message says what to do)."""


class ConsoleDisabled(ServiceError):
    """TRAINER_API_KEY is not set: nobody can log in."""


class LoginRequired(ServiceError):
    """No valid session: the page redirects to the login form."""


class CsrfRejected(ServiceError):
    """A state-changing request without the right CSRF token."""


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


# What escapes a route, by branch (Starlette picks the handler of the nearest class in the MRO):
# the project's StorageError branch and the file system's OSError are 503, the database's errors
# too; anything else is a 500 without internals. Routes turn the other branches into their own
# 4xx answers where they call them (an alias move's AliasError carries its status).
ANSWERS: dict[type[Exception], Any] = {
    HTTPException: _http_error,
    SQLAlchemyError: _database_error,
    ClientDisconnect: _client_gone,
    StorageError: _environment_error,
    OSError: _environment_error,
    Exception: _unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    app.state.client_log = ClientLog(log)
    for exc_class, handler in ANSWERS.items():
        app.add_exception_handler(exc_class, handler)
