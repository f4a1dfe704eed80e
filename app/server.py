"""Limits that hold before authentication: what one unauthenticated client can make the server do.

Protocol level (uvicorn with the pure-Python h11 parser; httptools has no header limit):
- the request line and headers together: at most MAX_HEAD_BYTES (h11's max_incomplete_event_size);
  a larger head is answered 400 and the connection closed, without buffering the rest;
- a request head must arrive within HTTP_READ_TIMEOUT seconds of the connection (or of the previous
  response), and a request body may pause for at most HTTP_READ_TIMEOUT between chunks: slow clients
  are disconnected instead of holding a connection for good;
- idle keep-alive connections close after HTTP_KEEPALIVE_TIMEOUT seconds;
- per client address, at most HTTP_MAX_CONNECTIONS_PER_CLIENT connections, of which at most
  HTTP_MAX_HALF_OPEN_PER_CLIENT have not yet sent a complete head (app/connections.py); further
  connections are refused;
- at most MAX_REQUESTS requests in flight (further ones get 503). Only requests whose head is
  complete count: connections still sending their head never hold a slot (uvicorn's own
  ``limit_concurrency`` counts every open connection, so 1,000 half-open sockets took it down);
- a client's protocol error (a malformed head, a bad chunk, also after the answer was sent) closes
  its connection with one ``info`` line, rate limited per client, never a traceback.

Application level (:class:`RequestGuard`, pure ASGI, before routing, auth or any body read):
- a request target (path and query) over MAX_TARGET_BYTES: 414; headers over MAX_HEAD_BYTES in
  all (h11 enforces its limit only on a head that arrives in pieces): 431;
- more than MAX_HEADERS header lines: 431;
- a body on any endpoint except POST /upload (which has its own UPLOAD_MAX_BYTES limit) larger than
  API_MAX_BODY_BYTES: 413 at once from Content-Length, or as soon as a chunked body passes it.

``exposr-trainer serve`` sets all of these; with plain uvicorn pass the same options (docs/hardening.md):
``uvicorn app.main:app --http app.server:HardenedH11Protocol --h11-max-incomplete-event-size 16384
--timeout-keep-alive 5 --limit-concurrency 1000``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.connections import MAX_REFUSED_HELD, REFUSE_DELAY_S, ClientTable, client_address
from app.errors import BodyTooLarge
from config.settings import Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024
API_MAX_BODY_BYTES = 64 * 1024
MAX_REQUESTS = 1000
# Routes that bound their own multipart bodies by UPLOAD_MAX_BYTES while they read them:
# app/routes/upload.py, and the console's upload form (app/ui/actions.py).
UNBOUNDED_BODY_ROUTES = {("POST", "/upload"), ("POST", "/ui/upload")}
# ... and POST /models/{name}/{version}/predict (app/routes/predict.py), whose path has parameters.
UNBOUNDED_BODY_PATTERNS = {"POST": re.compile(r"/models/[^/]+/[^/]+/predict")}


def bounds_its_own_body(method: str, path: str) -> bool:
    """Whether the route reads its (multipart) body within UPLOAD_MAX_BYTES itself."""
    if (method, path) in UNBOUNDED_BODY_ROUTES:
        return True
    pattern = UNBOUNDED_BODY_PATTERNS.get(method)
    return pattern is not None and pattern.fullmatch(path) is not None


UVICORN_INVALID_REQUEST = "Invalid HTTP request received."


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read timeout (the head must be complete, and body chunks must
    keep coming, within ``read_timeout`` seconds), per-client connection caps, request slots held
    only by complete heads, and client protocol errors answered without a traceback."""

    # None (plain uvicorn --http): read from the environment (HTTP_READ_TIMEOUT, HTTP_MAX_*).
    read_timeout: float | None = None
    max_per_client: int | None = None
    max_half_open_per_client: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if None in (self.read_timeout, self.max_per_client, self.max_half_open_per_client):
            from config.settings import get_settings

            settings = get_settings()
            self.read_timeout = settings.http_read_timeout
            self.max_per_client = settings.http_max_connections_per_client
            self.max_half_open_per_client = settings.http_max_half_open_per_client
        self._read_timer: asyncio.TimerHandle | None = None
        # uvicorn's check counts every open connection; ours counts requests (see the module docstring)
        if self.limit_concurrency is not None:
            self.app = RequestSlots(self.app, self.tasks, self.limit_concurrency, self._client, self._clients)
            self.limit_concurrency = None
        # uvicorn declares a Logger; the adapter has every method the protocol calls on it
        self.logger = _UvicornLog(self.logger)  # type: ignore[assignment]
        self._peer = "unknown"
        self._refused = False
        self._admitted = False
        self._half_open = False

    def _client(self) -> str:
        return self._peer

    def _clients(self) -> ClientTable:
        table = getattr(self.server_state, "exposr_clients", None)
        if table is None:  # one table per server: its protocols share the server's state
            assert self.max_per_client is not None and self.max_half_open_per_client is not None
            table = ClientTable(self.max_per_client, self.max_half_open_per_client, log)
            self.server_state.exposr_clients = table  # type: ignore[attr-defined]  # our own slot on uvicorn's state
        return table

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._peer = client_address(self.client)
        refused = self._clients().admit(self._peer)
        if refused:
            self._clients().log.info(
                self._peer, "refused a connection from %s: it has %s", self._peer, refused
            )
            self._refused = True  # never read; closed a little later, so it cannot reconnect at once
            table = self._clients()
            if table.refused_held >= MAX_REFUSED_HELD:
                transport.close()
                return
            table.refused_held += 1
            transport.pause_reading()
            self.loop.call_later(REFUSE_DELAY_S, self._close_refused, table)
            return
        self._admitted = self._half_open = True
        self._arm_read_timer()

    def _close_refused(self, table: ClientTable) -> None:
        table.refused_held -= 1
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # uvloop may deliver a first read despite pause_reading()
            return
        super().data_received(data)
        if self._half_open and self.cycle is not None:  # its first head is complete
            self._half_open = False
            self._clients().head_complete(self._peer)
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self.conn.their_state is h11.SEND_BODY or self._read_timer is None:
                self._arm_read_timer()  # waiting for a head (armed once) or for the next body chunk
        else:
            self._disarm_read_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._release()  # the connection leaves this protocol (and its accounting) here
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        """A protocol error from the client (uvicorn calls this when h11 refuses what it sent)."""
        self._clients().log.info(
            self._peer, "closed a connection from %s: it sent a malformed request", self._peer
        )
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's answer, if any is still coming, goes nowhere
            cycle.message_event.set()
        if answered or self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()  # an answer was sent already (or begun): nothing more to say
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        self._disarm_read_timer()  # the keep-alive timer takes over until the next byte
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self._clients().closed(self._peer, self._half_open)

    def _arm_read_timer(self) -> None:
        self._disarm_read_timer()
        assert self.read_timeout is not None
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        self._clients().log.info(
            self._peer,
            "closed a connection from %s: no complete request within %.0fs (HTTP_READ_TIMEOUT)",
            self._peer,
            self.read_timeout,
        )
        self.transport.close()


class _UvicornLog(logging.LoggerAdapter):
    """uvicorn.error, less the warning uvicorn writes for every malformed request (the protocol
    writes its own line instead: ``info``, rate limited per client)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    @property
    def level(self) -> int:  # uvicorn reads it to decide on its trace lines
        return self.logger.level

    def warning(self, msg, *args, **kwargs) -> None:
        if msg != UVICORN_INVALID_REQUEST:
            self.logger.warning(msg, *args, **kwargs)


class RequestSlots:
    """ASGI wrapper: at most ``limit`` requests in flight in this server (``tasks`` holds one per
    request whose head is complete, this one included), else 503."""

    def __init__(self, app, tasks: set, limit: int, client, clients) -> None:
        self.app, self.tasks, self.limit, self.client, self.clients = app, tasks, limit, client, clients

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and len(self.tasks) > self.limit:
            self.clients().log.info(
                self.client(), "answered 503 to %s: %d requests in flight", self.client(), self.limit
            )
            return await _reject(
                send, 503, f"the server has {self.limit} requests in flight; retry in a second", retry=1
            )
        return await self.app(scope, receive, send)


def server_options(settings: Settings) -> dict:
    """uvicorn.run / uvicorn.Config keyword arguments that apply the limits above."""
    protocol = type(
        "HardenedH11Protocol",
        (HardenedH11Protocol,),
        {
            "read_timeout": settings.http_read_timeout,
            "max_per_client": settings.http_max_connections_per_client,
            "max_half_open_per_client": settings.http_max_half_open_per_client,
        },
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": settings.http_keepalive_timeout,
        "limit_concurrency": MAX_REQUESTS,
        "ws": "none",  # no WebSocket routes: an Upgrade header is an ordinary request
    }


class RequestGuard:
    """ASGI middleware: header count and body size, checked before anything else reads the request."""

    def __init__(self, app, max_body: int = API_MAX_BODY_BYTES, max_headers: int = MAX_HEADERS) -> None:
        self.app, self.max_body, self.max_headers = app, max_body, max_headers

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        send = _relative_redirects(send, next((v for k, v in headers if k == b"host"), b""))
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if target > MAX_TARGET_BYTES:  # h11's limit holds for heads that arrive in pieces; this for all
            return await _reject(send, 414, f"request target over {MAX_TARGET_BYTES} bytes")
        if sum(len(k) + len(v) for k, v in headers) > MAX_HEAD_BYTES:
            return await _reject(send, 431, f"request headers over {MAX_HEAD_BYTES} bytes; send fewer")
        if len(headers) > self.max_headers:
            return await _reject(send, 431, f"more than {self.max_headers} request headers; send fewer")
        if bounds_its_own_body(scope["method"], scope["path"]):
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


def _relative_redirects(send, host: bytes):
    """Redirect targets as paths, never built from the client's ``Host`` header (starlette's
    trailing-slash redirect writes ``http://<Host>/path/``: a forged Host would be reflected)."""

    async def relative_send(message) -> None:
        if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
            message = {**message, "headers": [_relative(k, v, host) for k, v in message.get("headers", [])]}
        await send(message)

    return relative_send


def _relative(name: bytes, value: bytes, host: bytes) -> tuple[bytes, bytes]:
    if name.lower() != b"location" or not value.lower().startswith((b"http://", b"https://")):
        return name, value
    parts = urlsplit(value.decode("latin-1"))
    if parts.netloc.encode("latin-1").lower() != host.lower():
        return name, value  # a redirect elsewhere, chosen by the app
    path = "/" + parts.path.lstrip("/")  # never "//host": that would be absolute again
    return name, (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


async def _reject(send, status: int, detail: str, retry: int | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
