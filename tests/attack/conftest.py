"""Attack-suite fixtures: the dataset ones (both storage drivers) plus a local-only manager."""

from __future__ import annotations

import pytest

from dataset.manager import DatasetManager
from tests.app.conftest import gate, make_client  # noqa: F401 - fixtures reused
from tests.dataset.conftest import driver_settings  # noqa: F401 - fixtures reused (s3_bucket is in tests/conftest.py)


@pytest.fixture
async def dm(driver_settings):  # noqa: F811
    async with DatasetManager(driver_settings) as manager:
        yield manager


class LiveServer:
    """The app served by real uvicorn (with the limits of ``exposr-trainer serve``) on loopback, in a
    thread of this process: raw sockets can misbehave against it, and caplog sees its log."""

    def __init__(self, settings, job_kinds: dict | None = None, **options) -> None:
        import socket

        import uvicorn

        from app.main import create_app
        from app.server import server_options

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.settings = settings
        self.app = create_app(settings, job_kinds=job_kinds)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            **{**server_options(settings), **options},
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(120)

    def raw(self, timeout: float = 10, source: str | None = None):
        """A socket to the server, from ``source`` (another loopback address: another client) if given."""
        import socket

        return socket.create_connection(
            ("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0) if source else None
        )


@pytest.fixture
def live_server(make_settings):
    """The server as shipped (HTTP_READ_TIMEOUT 30 s). A 1 s read timeout here once cut a request
    whose head was already sent: on a loaded machine the server's read timer fired before its
    event loop got to the socket, and the client saw the connection reset."""
    with LiveServer(make_settings()) as server:
        yield server


@pytest.fixture
def quick_timeout_server(make_settings):
    """For the tests whose subject is HTTP_READ_TIMEOUT firing: 2 s, so they end in seconds."""
    with LiveServer(make_settings(http_read_timeout=2.0)) as server:
        yield server


@pytest.fixture
def storage(tmp_path):
    from dataset.storage import LocalStorage

    return LocalStorage(tmp_path / "datasets")
