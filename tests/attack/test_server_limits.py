"""Attack 2: bounded before auth. Real uvicorn on loopback with the limits `exposr-trainer serve`
sets (HTTP_READ_TIMEOUT is 1 s here); raw sockets send what a hostile or broken client sends, and
/healthz must keep answering throughout."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import httpx

from tests.app.conftest import AUTH

IMAGE_PATH = f"/images/{uuid.uuid4()}"


def healthy(server) -> bool:
    return httpx.get(f"{server.url}/healthz", timeout=30).json() == {"status": "ok"}


def read_answer(sock: socket.socket, seconds: float = 10) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def closed_by_server(sock: socket.socket, seconds: float = 30) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_an_oversized_header_is_refused_and_the_connection_closed(live_server):
    with live_server.raw() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 256 * 1024 + b"\r\n\r\n")
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 400") and closed_by_server(sock)
    assert healthy(live_server)


def test_an_oversized_request_line_is_refused(live_server):
    with live_server.raw() as sock:
        sock.sendall(b"GET /" + b"a" * 64 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # in one piece
        assert read_answer(sock).startswith(b"HTTP/1.1 414")
    with live_server.raw() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 431")
    with live_server.raw() as sock:
        sock.sendall(b"GET /" + b"a" * 64 * 1024)  # in pieces: h11 stops buffering at 16 KiB
        time.sleep(0.2)
        sock.sendall(b"a" * 64 * 1024)
        assert read_answer(sock).startswith(b"HTTP/1.1 400") and closed_by_server(sock)
    assert healthy(live_server)


def test_too_many_headers_are_refused_with_431(live_server):
    headers = {f"x-h{i}": "1" for i in range(150)}
    response = httpx.get(f"{live_server.url}/healthz", headers=headers, timeout=5)
    assert response.status_code == 431 and "headers" in response.json()["detail"]
    assert healthy(live_server)


def test_an_oversized_unauthenticated_body_is_refused_without_being_read(live_server):
    with live_server.raw() as sock:
        sock.sendall(
            f"PATCH {IMAGE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 200000000\r\n\r\n".encode()
            + b"[" * 65536
        )
        answer = read_answer(sock)  # answered after 64 KB of the announced 200 MB
    assert answer.startswith(b"HTTP/1.1 413") and b"POST /upload" in answer
    assert healthy(live_server)


def test_a_chunked_body_over_the_cap_is_cut_off(live_server):
    def body():
        for _ in range(64):
            yield b"[" * 65536

    response = httpx.patch(f"{live_server.url}{IMAGE_PATH}", headers=AUTH, content=body(), timeout=10)
    assert response.status_code in (400, 413)  # cut off at 64 KB, before the JSON parser
    assert healthy(live_server)


def test_auth_is_checked_before_the_body_is_read(live_server):
    for method, path in (("PATCH", IMAGE_PATH), ("POST", "/upload")):
        with live_server.raw() as sock:
            # The body is announced and never sent: an answer proves the server did not wait for it.
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 60000\r\n\r\n".encode()
            )
            answer = read_answer(sock, seconds=5)
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])
        assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")


def test_slow_clients_are_disconnected_and_healthz_keeps_answering(quick_timeout_server, caplog):
    caplog.set_level(logging.INFO)
    server = quick_timeout_server
    slow = [server.raw(source="127.0.0.2") for _ in range(12)]  # under the per-client cap
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
        assert all(healthy(server) for _ in range(5))
        assert all(closed_by_server(sock, seconds=60) for sock in slow)  # HTTP_READ_TIMEOUT is 2 s here
    finally:
        for sock in slow:
            sock.close()
    assert any("HTTP_READ_TIMEOUT" in r.getMessage() for r in caplog.records)
    assert healthy(server)


def test_a_stalled_upload_body_is_dropped_as_an_info_line_not_a_500(quick_timeout_server, caplog):
    caplog.set_level(logging.INFO)
    with quick_timeout_server.raw() as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'.encode()
            + b"\xff\xd8" * 100
        )
        assert closed_by_server(sock)
    _wait_for_log(caplog, "disconnected before its request was read")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(" 500 " in r.getMessage() for r in caplog.records)
    assert healthy(quick_timeout_server)


def test_a_client_aborting_an_upload_is_an_info_line_not_a_500(live_server, caplog):
    caplog.set_level(logging.INFO)
    with live_server.raw() as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'.encode()
            + b"\xff\xd8" * 5000
        )
    _wait_for_log(caplog, "disconnected before its request was read")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert healthy(live_server)


def _wait_for_log(caplog, text: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}: {[r.getMessage() for r in caplog.records]}")


def test_plain_uvicorn_with_the_hardened_protocol_reads_http_read_timeout(monkeypatch, tmp_path):
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from app.server import HardenedH11Protocol
    from config.settings import get_settings

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("HTTP_READ_TIMEOUT", "7")
    get_settings.cache_clear()
    try:
        config = uvicorn.Config(app=lambda scope, receive, send: None, http=HardenedH11Protocol)
        config.load()
        loop = asyncio.new_event_loop()
        try:
            protocol = HardenedH11Protocol(
                config=config, server_state=ServerState(), app_state={}, _loop=loop
            )
        finally:
            loop.close()
        assert protocol.read_timeout == 7.0
    finally:
        get_settings.cache_clear()
