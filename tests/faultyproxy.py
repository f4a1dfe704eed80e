"""A TCP proxy on 127.0.0.1 that can turn into a faulty server: the bucket (or any server) that
hangs, refuses or answers garbage, for the attack tests.

``mode`` may change at any time; it applies to connections made from then on:

* ``pass``: bytes go both ways to the upstream (moto's S3 server);
* ``hang``: the connection is accepted and read, and never answered;
* ``refuse``: the connection is accepted and reset at once;
* ``garbage``: whatever is asked, the answer is bytes that are not HTTP, then the connection closes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

GARBAGE = b"\x00\xffNOT HTTP AT ALL\r\n\x17\x03\x03garbage" * 8


class FaultyProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()  # wakes accept()
        self._thread.join(5)
        self.listener.close()
        for sock in self._held:
            sock.close()

    def _accept(self) -> None:
        while not self._stop:
            conn, _ = self.listener.accept()
            if self._stop:
                conn.close()
                return
            mode = self.mode
            if mode == "refuse":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset
            elif mode == "hang":
                self._held.append(conn)
                threading.Thread(target=_drain, args=(conn,), daemon=True).start()
            elif mode == "garbage":
                threading.Thread(target=_garbage, args=(conn,), daemon=True).start()
            else:
                threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            conn.close()
            return
        threading.Thread(target=_copy, args=(up, conn), daemon=True).start()
        _copy(conn, up)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _drain(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def _garbage(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(GARBAGE)
    conn.close()
