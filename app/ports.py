"""Is the port free? Asked by ``exposr-trainer serve`` before the heavy start-up (the app, torch,
the dataset check), so a busy port fails in a second with a hint instead of after everything."""

from __future__ import annotations

import errno
import socket

from config.errors import ConfigError


def ensure_port_free(host: str, port: int) -> None:
    """Bind (host, port) once as uvicorn would, and let go; ConfigError with a hint when it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host}: not an address of this machine ({exc.strerror}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(_hint(host, port, exc)) from exc


def _hint(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another exposr-trainer serve, or another "
            f"program: `ss -ltnp 'sport = :{port}'` shows which); stop it, or choose another port: "
            f"exposr-trainer serve --port {port + 1}, or make run PORT={port + 1}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"port {port} on {host}: permission denied (ports below 1024 need privileges); "
            f"choose a port from 1024 up, e.g. --port 8001"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
