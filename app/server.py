"""Limits that hold before authentication: what one unauthenticated client can make the server do.

Protocol level (uvicorn with the pure-Python h11 parser; httptools has no header limit):
- the request line and headers together: at most MAX_HEAD_BYTES (h11's max_incomplete_event_size);
  a larger head is answered 400 and the connection closed, without buffering the rest;
- a request head must arrive within HTTP_READ_TIMEOUT seconds of the connection (or of the previous
  response), and a request body may pause for at most HTTP_READ_TIMEOUT between chunks: slow clients
  are disconnected instead of holding a connection for good;
- idle keep-alive connections close after HTTP_KEEPALIVE_TIMEOUT seconds;
- at most MAX_CONNECTIONS connections and requests at once (further ones get 503).

Application level (:class:`RequestGuard`, pure ASGI, before routing, auth or any body read):
- a request target (path and query) over MAX_TARGET_BYTES: 414; headers over MAX_HEAD_BYTES in
  all (h11 enforces its limit only on a head that arrives in pieces): 431;
- more than MAX_HEADERS header lines: 431;
- a body on any endpoint except POST /upload (which has its own UPLOAD_MAX_BYTES limit) larger than
  API_MAX_BODY_BYTES: 413 at once from Content-Length, or as soon as a chunked body passes it.

``exposr-trainer serve`` sets all of these; with plain uvicorn pass the same options (README):
``uvicorn app.main:app --http app.server:HardenedH11Protocol --h11-max-incomplete-event-size 16384
--timeout-keep-alive 5 --limit-concurrency 1000``.
"""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.settings import Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024
API_MAX_BODY_BYTES = 64 * 1024
MAX_CONNECTIONS = 1000
# Routes that bound their own multipart bodies by UPLOAD_MAX_BYTES while they read them:
# app/routes/upload.py, and the console's upload form (app/ui/actions.py).
UNBOUNDED_BODY_ROUTES = {("POST", "/upload"), ("POST", "/ui/upload")}


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read timeout: the head must be complete, and body chunks must
    keep coming, within ``read_timeout`` seconds; otherwise the connection is closed."""

    read_timeout: float | None = None  # None (plain uvicorn --http): HTTP_READ_TIMEOUT from the environment

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.read_timeout is None:
            from config.settings import get_settings

            self.read_timeout = get_settings().http_read_timeout
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self.conn.their_state is h11.SEND_BODY or self._read_timer is None:
                self._arm_read_timer()  # waiting for a head (armed once) or for the next body chunk
        else:
            self._disarm_read_timer()

    def on_response_complete(self) -> None:
        self._disarm_read_timer()  # the keep-alive timer takes over until the next byte
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

    def _arm_read_timer(self) -> None:
        self._disarm_read_timer()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        log.info(
            "closed a connection from %s: no complete request within %.0fs (HTTP_READ_TIMEOUT)",
            _peer(self.client),
            self.read_timeout,
        )
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def server_options(settings: Settings) -> dict:
    """uvicorn.run / uvicorn.Config keyword arguments that apply the limits above."""
    protocol = type(
        "HardenedH11Protocol", (HardenedH11Protocol,), {"read_timeout": settings.http_read_timeout}
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": settings.http_keepalive_timeout,
        "limit_concurrency": MAX_CONNECTIONS,
    }


class BodyTooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware: header count and body size, checked before anything else reads the request."""

    def __init__(self, app, max_body: int = API_MAX_BODY_BYTES, max_headers: int = MAX_HEADERS) -> None:
        self.app, self.max_body, self.max_headers = app, max_body, max_headers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if target > MAX_TARGET_BYTES:  # h11's limit holds for heads that arrive in pieces; this for all
            return await _reject(send, 414, f"request target over {MAX_TARGET_BYTES} bytes")
        if sum(len(k) + len(v) for k, v in headers) > MAX_HEAD_BYTES:
            return await _reject(send, 431, f"request headers over {MAX_HEAD_BYTES} bytes; send fewer")
        if len(headers) > self.max_headers:
            return await _reject(send, 431, f"more than {self.max_headers} request headers; send fewer")
        if (scope["method"], scope["path"]) in UNBOUNDED_BODY_ROUTES:
            return await self.app(scope, receive, send)
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _reject(
                send,
                413,
                f"request body over {self.max_body} bytes: this endpoint "
                "takes small JSON bodies (images go to POST /upload)",
            )
        received, started = 0, False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(send, 413, f"request body over {self.max_body} bytes")


async def _reject(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
