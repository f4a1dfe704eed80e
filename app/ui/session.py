"""Console logins for people: a signed, expiring session cookie and CSRF tokens.

The session cookie holds ``{"sid", "csrf", "exp"}``, signed (itsdangerous, HMAC-SHA256) with a
key derived from ``TRAINER_API_KEY``: rotating the key logs every console out, and replicas that
share the key accept each other's sessions. The cookie is ``HttpOnly`` and ``SameSite=Strict``
(``Secure`` when served over HTTPS). Every state change carries the session's CSRF token, as the
form field ``csrf_token`` or the header ``X-CSRF-Token``; the login form, which comes before any
session, carries the token of a short-lived signed login cookie instead. Logout revokes the
session id in this process until it would have expired anyway.

Exceptions (handled in :mod:`app.ui.routes`): :class:`ConsoleDisabled` (no key configured: fail
closed), :class:`LoginRequired` (no, forged, expired or revoked session), :class:`CsrfRejected`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque

from fastapi import Request
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from app.errors import ConsoleDisabled, CsrfRejected, LoginRequired
from dataset.db import revocations_table

SESSION_COOKIE = "exposr_session"
LOGIN_COOKIE = "exposr_login"
LOGIN_FORM_SECONDS = 3600
LOGIN_TRIES, LOGIN_WINDOW_S = 10, 60.0  # failed logins per client address, then 429
COOKIE_PATH = "/ui"


def _serializer(api_key: str, purpose: str) -> URLSafeSerializer:
    # A key of its own, so a cookie is never a usable bearer token nor the other way round.
    secret = hmac.new(api_key.encode(), b"exposr-console-cookies", hashlib.sha256).hexdigest()
    return URLSafeSerializer(secret, salt=purpose, signer_kwargs={"digest_method": hashlib.sha256})


def issue_token(api_key: str, purpose: str, seconds: float, now: float | None = None) -> tuple[str, dict]:
    """(signed cookie value, payload) of a fresh session or login form."""
    now = time.time() if now is None else now
    payload = {"sid": secrets.token_urlsafe(16), "csrf": secrets.token_urlsafe(24), "exp": int(now + seconds)}
    return _serializer(api_key, purpose).dumps(payload), payload


def read_token(api_key: str, purpose: str, value: str | None, now: float | None = None) -> dict | None:
    """The payload of a cookie signed by us for ``purpose`` and not expired; None otherwise."""
    if not value:
        return None
    try:
        payload = _serializer(api_key, purpose).loads(value)
    except BadSignature:
        return None
    now = time.time() if now is None else now
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int) or payload["exp"] <= now:
        return None
    if not all(isinstance(payload.get(k), str) for k in ("sid", "csrf")):
        return None
    return payload


def keys_match(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def api_key(request: Request) -> str:
    key = request.app.state.settings.trainer_api_key
    if not key or not key.get_secret_value():
        raise ConsoleDisabled
    return key.get_secret_value()


class Revocations:
    """Session ids logged out and login forms used, in the database beside the jobs (every replica
    and every restart sees them), each kept until it would have expired anyway."""

    async def revoke(self, request: Request, payload: dict) -> bool:
        """Record ``payload``'s id as used; False if it already was (a form sent twice)."""
        engine = _engine(request)
        async with engine.begin() as conn:
            await conn.execute(delete(revocations_table).where(revocations_table.c.until < int(time.time())))
        try:
            async with engine.begin() as conn:
                await conn.execute(insert(revocations_table).values(sid=payload["sid"], until=payload["exp"]))
        except IntegrityError:
            return False
        return True

    async def contains(self, request: Request, sid: str) -> bool:
        query = select(revocations_table.c.sid).where(revocations_table.c.sid == sid)
        async with _engine(request).connect() as conn:
            return (await conn.execute(query)).first() is not None


def _engine(request: Request):
    return request.app.state.runner.store.engine  # the jobs' database (DATABASE_URL)


class LoginThrottle:
    """At most ``tries`` failed logins per client address in ``window`` seconds; then 429."""

    def __init__(self, tries: int = LOGIN_TRIES, window: float = LOGIN_WINDOW_S, clients: int = 10_000):
        self.tries, self.window, self.clients = tries, window, clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str, now: float | None = None) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        failures = self._failures.get(client)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures or len(failures) < self.tries:
            return 0
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._failures.pop(client, None) or deque(maxlen=self.tries)
        failures.append(now)
        self._failures[client] = failures  # most recent last: the oldest clients are forgotten first
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)


def login_throttle(request: Request) -> LoginThrottle:
    state = request.app.state
    if getattr(state, "ui_login_throttle", None) is None:
        state.ui_login_throttle = LoginThrottle()
    return state.ui_login_throttle


async def current_session(request: Request) -> dict:
    """The request's valid session; LoginRequired (or ConsoleDisabled) otherwise."""
    payload = read_token(api_key(request), "session", request.cookies.get(SESSION_COOKIE))
    if payload is None or await request.app.state.ui_revoked.contains(request, payload["sid"]):
        raise LoginRequired
    return payload


def check_csrf(session: dict, presented: str | None) -> None:
    if not keys_match(session["csrf"], presented):
        raise CsrfRejected


def set_cookie(request: Request, response, name: str, value: str, seconds: float) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(seconds),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
