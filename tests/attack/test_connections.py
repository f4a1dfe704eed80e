"""Issue 21, attacks 1 and 8: connections that never finish their head, and protocol errors that
flood the log. Real uvicorn on loopback with the limits of `exposr-trainer serve`; other clients
are other loopback addresses (127.0.0.2, ...), the prober is 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import time

import httpx

from tests.attack.conftest import LiveServer
from tests.attack.test_server_limits import closed_by_server, read_answer

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"  # and never the blank line that ends the head


def probe(server, n: int = 20) -> list[int]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return [client.get("/healthz").status_code for _ in range(n)]


def open_half(server, source: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = server.raw(timeout=30, source=source)
        sock.sendall(HALF_HEAD)
        socks.append(sock)
    return socks


def still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def test_half_open_connections_hold_no_request_slot(make_settings):
    # 60 half-open sockets from 12 addresses (5 each: under the per-client cap) against 20 slots:
    # uvicorn's own limit counted them and answered 503; only complete heads take a slot now.
    settings = make_settings(http_read_timeout=60.0)  # why: the sockets must outlive the probes
    with LiveServer(settings, limit_concurrency=20) as server:  # why: 20 slots, so 60 sockets would fill them
        socks = [s for i in range(12) for s in open_half(server, f"127.0.0.{i + 2}", 5)]
        try:
            assert probe(server) == [200] * 20
            assert sum(still_open(s) for s in socks) == 60  # held, not dropped to make room
        finally:
            for sock in socks:
                sock.close()


def test_a_client_over_its_half_open_cap_is_refused_and_others_are_served(make_settings):
    settings = make_settings(http_read_timeout=60.0)  # why: only the cap may close these
    with LiveServer(settings) as server:
        socks = open_half(server, "127.0.0.2", 40)
        try:
            refused = socks[16:]  # HTTP_MAX_HALF_OPEN_PER_CLIENT is 16 by default
            assert all(closed_by_server(s, seconds=30) for s in refused)
            assert all(still_open(s) for s in socks[:16])
            assert probe(server) == [200] * 20
        finally:
            for sock in socks:
                sock.close()
        # once the client's connections are gone, it is served again
        with server.raw(source="127.0.0.2") as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 200")


def test_a_client_over_its_connection_cap_is_refused(make_settings):
    settings = make_settings(
        http_max_connections_per_client=8,  # why: the cap under test, small enough to reach
        http_keepalive_timeout=60,  # why: the served connections must stay open meanwhile
    )
    with LiveServer(settings) as server:
        kept = [server.raw(source="127.0.0.3") for _ in range(8)]
        try:
            for sock in kept:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(sock).startswith(b"HTTP/1.1 200")
            with server.raw(source="127.0.0.3") as extra:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(extra, seconds=30) == b""  # closed unanswered
            assert probe(server, 5) == [200] * 5
        finally:
            for sock in kept:
                sock.close()


def test_protocol_errors_are_rate_limited_info_lines_without_traceback(live_server, caplog):
    # a bad chunk after the early answer: uvicorn tried to answer 400 on a finished response and
    # asyncio logged an ERROR with a traceback, for ~80 bytes from anyone
    caplog.set_level(logging.INFO)
    for _ in range(40):
        with live_server.raw() as sock:
            sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 405")
            sock.sendall(b"zz\r\nbad\r\n")
            assert closed_by_server(sock)
    for _ in range(10):  # and a head that is not HTTP at all: 400, same line
        with live_server.raw() as sock:
            sock.sendall(b"NOT HTTP\r\n\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 10
    while not _malformed(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert not [r for r in caplog.records if r.exc_info]
    lines = _malformed(caplog)
    assert 1 <= len(lines) <= 5  # 50 errors from one client: at most 5 lines a minute
    assert all(r.levelno == logging.INFO and "127.0.0.1" in r.getMessage() for r in lines)
    assert probe(live_server, 3) == [200] * 3


def _malformed(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "malformed request" in r.getMessage()]


def test_rate_limited_lines_say_how_many_were_held_back():
    from app.connections import ClientLog

    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("tests.clientlog")
    logger.addHandler(Sink())
    logger.setLevel(logging.INFO)
    now = [0.0]
    log = ClientLog(logger, burst=2, window=60, clock=lambda: now[0])
    for i in range(10):
        log.info("10.0.0.1", "line %d", i)
    log.info("10.0.0.2", "other client")
    assert records == ["line 0", "line 1", "other client"]
    now[0] = 61
    log.info("10.0.0.1", "later")
    assert records[-1] == "later (8 more such lines from this client were held back)"
