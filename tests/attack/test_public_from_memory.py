"""Issue 21, attack 3 (and issue 20's fresh numbers on every replica): /status, /metrics and
/healthz answer from memory whatever the bucket or the database does, flagged with the age of what
they say; while the database answers, no replica serves figures older than twice the refresh.

Real parts: two uvicorn replicas on one PostgreSQL database (frozen with SIGSTOP to make it hang),
and a bucket behind a proxy of ours that can hang, refuse or answer garbage (moto behind it)."""

from __future__ import annotations

import json
import time

import boto3
import httpx
import pytest

from app.routes.status import STATUS_CACHE_SECONDS
from tests.app.conftest import AUTH
from tests.attack.conftest import LiveServer
from tests.faultyproxy import FaultyProxy
from tests.images import jpeg

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("attack.test_public_from_memory")

IDLE = 2 * STATUS_CACHE_SECONDS + 0.5  # an idle spell longer than twice the refresh interval


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL server of this module's own: it is frozen and restarted here."""
    from tests.conftest import missing_part
    from tests.pgserver import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        missing_part(reason)
    server = PostgresServer().start()
    yield server
    server.resume()
    server.stop()


def status(server) -> dict:
    response = httpx.get(f"{server.url}/status", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def upload(server, seed: int) -> None:
    response = httpx.post(
        f"{server.url}/upload",
        headers=AUTH,
        data={"label": "real"},
        files={"file": (f"{seed}.jpg", jpeg(seed))},
        timeout=60,
    )
    assert response.status_code == 201, response.text


def test_an_idle_replica_answers_fresh_counts_and_a_hanging_database_from_memory(
    own_postgres, make_settings, tmp_path
):
    url = own_postgres.new_database()
    settings = make_settings(database_url=url)  # why: two replicas on one PostgreSQL database
    with LiveServer(settings) as a, LiveServer(settings) as b:
        assert status(b)["dataset_counts"]["total"] == 0
        for seed in range(3):
            upload(a, seed)
        time.sleep(IDLE)  # b is idle meanwhile
        first = status(b)  # the first answer after the idle spell: what the database holds now
        assert first["dataset_counts"]["total"] == 3 and first["stale"] is None
        upload(a, 3)
        time.sleep(IDLE)
        own_postgres.pause()  # the database hangs: connections accepted, never answered
        try:
            hanging = status(b)
            metrics = httpx.get(f"{b.url}/metrics", headers=AUTH, timeout=60).json()
            health = httpx.get(f"{b.url}/healthz", timeout=60)
        finally:
            own_postgres.resume()
        assert hanging["dataset_counts"]["total"] == 3  # from memory ...
        assert hanging["stale"]["database"]["age_s"] >= IDLE  # ... and said to be old
        assert "did not answer within 1 s" in hanging["stale"]["database"]["reason"]
        assert "models" not in hanging["stale"]  # the registry answered: that part is fresh
        assert metrics["total_images"] == 3 and metrics["stale"]["database"]["age_s"] >= IDLE
        assert health.status_code == 200
        deadline = time.monotonic() + 60
        while (now := status(b))["stale"] is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert now["stale"] is None and now["dataset_counts"]["total"] == 4


@pytest.fixture
def faulty_bucket(s3_bucket):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    with FaultyProxy((host, int(port))) as proxy:
        yield proxy, endpoint, bucket


def register_in_bucket(endpoint: str, bucket: str) -> None:
    entry = {"model": "vit", "version": "v1", "timestamp": "2026-01-01T00:00:00Z", "promoted": True}
    entry |= {"val_acc": 0.9, "val_auc": 0.95}
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=bucket, Key="models/registry.json", Body=json.dumps([entry]).encode()
    )


@pytest.mark.parametrize("fault", ["hang", "refuse", "garbage"])
def test_a_faulty_bucket_never_holds_the_public_answers(faulty_bucket, make_settings, fault):
    proxy, endpoint, bucket = faulty_bucket
    register_in_bucket(endpoint, bucket)
    settings = make_settings(
        storage_driver="s3",  # why: the models are in the bucket under test
        s3_bucket=bucket,  # why: the bucket under test
        s3_endpoint_url=proxy.url,  # why: reached through the faulty proxy
        s3_timeout=2,  # why: a hanging bucket fails in seconds here, not the default 15 s
    )
    with LiveServer(settings) as server:
        assert status(server)["latest_model"]["version"] == "v1"
        proxy.mode = fault
        time.sleep(IDLE)
        answer = status(server)
        assert answer["latest_model"]["version"] == "v1"  # from memory, flagged
        assert answer["stale"]["models"]["age_s"] >= IDLE
        metrics = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=60).json()
        assert metrics["model_version"] == "v1" and metrics["stale"]["models"]["age_s"] >= IDLE
        assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
        latest = httpx.get(f"{server.url}/models/latest", headers=AUTH, timeout=120)
        assert latest.status_code == 503, latest.text  # JSON, naming the registry in the bucket
        assert f"s3://{bucket}/models/registry.json" in latest.json()["detail"]
        prometheus = httpx.get(f"{server.url}/metrics/prometheus", headers=AUTH, timeout=120)
        assert prometheus.status_code == 200 and 'exposr_model_served_info{model="vit",version="v1"}' in (
            prometheus.text
        )
        proxy.mode = "pass"
        deadline = time.monotonic() + 60
        while (now := status(server))["stale"] is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert now["stale"] is None
