"""What one client may hold of the server, and a log that no client can flood.

* :class:`ClientTable` (one per server): open connections per client address, and among them the
  *half-open* ones, which have not yet sent a complete request head. A new connection beyond
  ``HTTP_MAX_CONNECTIONS_PER_CLIENT`` or ``HTTP_MAX_HALF_OPEN_PER_CLIENT`` (or beyond
  :data:`MAX_HALF_OPEN` half-open connections from everyone) is refused: never read, closed after
  :data:`REFUSE_DELAY_S` (so a client that reconnects at once cannot spin the server's accept loop).
  Request slots (``limit_concurrency``) count only requests whose head is complete: a half-open
  connection holds a file descriptor and at most 16 KiB of head, never a slot.
* :class:`ClientLog`: lines about what a client did wrong (a malformed request, a head that never
  came, a refused connection) at ``info``, without traceback, at most :data:`LOG_BURST` per client
  and :data:`LOG_WINDOW_S`; the lines held back are counted in that client's next line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

MAX_HALF_OPEN = 4096  # half-open connections from all clients together (file descriptors, buffers)
REFUSE_DELAY_S = 10.0
MAX_REFUSED_HELD = 2048  # refused connections held open (not read) until REFUSE_DELAY_S
LOG_BURST = 5
LOG_WINDOW_S = 60.0
LOG_CLIENTS = 10_000  # clients remembered by the log's rate limit (the oldest forgotten first)


class ClientTable:
    """Open and half-open connections per client address, for one server."""

    def __init__(
        self,
        per_client: int,
        half_open_per_client: int,
        logger: logging.Logger,
        half_open_total: int = MAX_HALF_OPEN,
    ) -> None:
        self.per_client, self.half_open_per_client = per_client, half_open_per_client
        self.log = ClientLog(logger)  # what the server says about its clients
        self.half_open_total = half_open_total
        self.open: Counter[str] = Counter()
        self.half_open: Counter[str] = Counter()
        self.half_open_count = 0
        self.refused_held = 0

    def admit(self, client: str) -> str | None:
        """Count a new (half-open) connection from ``client``, or say why it is refused."""
        if self.open[client] >= self.per_client:
            return f"{self.per_client} connections open (HTTP_MAX_CONNECTIONS_PER_CLIENT)"
        if self.half_open[client] >= self.half_open_per_client:
            return (
                f"{self.half_open_per_client} connections without a complete request "
                "(HTTP_MAX_HALF_OPEN_PER_CLIENT)"
            )
        if self.half_open_count >= self.half_open_total:
            return f"{self.half_open_total} connections without a complete request from all clients"
        self.open[client] += 1
        self.half_open[client] += 1
        self.half_open_count += 1
        return None

    def head_complete(self, client: str) -> None:
        """The connection's first request head arrived: it no longer counts as half-open."""
        _decrement(self.half_open, client)
        self.half_open_count -= 1

    def closed(self, client: str, half_open: bool) -> None:
        _decrement(self.open, client)
        if half_open:
            self.head_complete(client)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # the table holds only clients with connections open


class ClientLog:
    """``info`` lines about clients, at most ``burst`` per client per ``window`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = LOG_BURST,
        window: float = LOG_WINDOW_S,
        max_clients: int = LOG_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.burst, self.window, self.max_clients = logger, burst, window, max_clients
        self.clock = clock
        self._clients: OrderedDict[str, list[float]] = OrderedDict()  # client -> [window start, lines, held]

    def info(self, client: str, message: str, *args: object) -> None:
        now = self.clock()
        entry = self._clients.pop(client, None)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry else 0
            entry = [now, 0, held]
        self._clients[client] = entry  # most recent last: the oldest are forgotten first
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        if entry[1] >= self.burst:
            entry[2] += 1
            return
        entry[1] += 1
        if entry[2]:
            message += f" ({int(entry[2])} more such lines from this client were held back)"
            entry[2] = 0
        self.logger.info(message, *args)


def client_address(client: tuple[str, int] | None) -> str:
    return client[0] if client else "unknown"
