from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Gate:
    """Job kinds whose jobs wait until the test opens the gate (thread-safe across TestClient's loop)."""

    def __init__(self) -> None:
        self.open = False

    def kinds(self) -> dict:
        async def held(settings, progress):
            progress({"waiting": True})
            while not self.open:
                await asyncio.sleep(0.01)
            return {"released": True}

        return {"scrape": held, "train": held}


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def make_client(make_settings):
    clients = []

    def build(job_kinds=None, **overrides) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides), job_kinds=job_kinds))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, gate) -> TestClient:
    return make_client(job_kinds=gate.kinds())
