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

    def __init__(self, settings, job_kinds: dict | None = None) -> None:
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
            **server_options(settings),
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

    def raw(self, timeout: float = 10):
        import socket

        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@pytest.fixture
def live_server(make_settings):
    with LiveServer(make_settings(http_read_timeout=1.0)) as server:
        yield server
