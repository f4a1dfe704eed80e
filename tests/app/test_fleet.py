"""The deploy/ topology as processes on 127.0.0.1: PostgreSQL, an S3 server (moto), two API replicas
(uvicorn, each with its own folders) and one `exposr-trainer worker`, sharing only DATABASE_URL and
the bucket, exactly as docs/scaling-out.md configures them.

Checks: concurrent POST /train on both replicas -> one training (on the worker); /models/latest and
the weights identical from every replica; the schedule fires once per interval across the fleet;
kill -9 of the worker -> its job interrupted, and the next one (a new worker) succeeds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from dataset.manager import DatasetManager
from tests.images import encode, jpeg
from tests.pgserver import free_port
from tests.trainer.builders import textured

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer fleet-token-0123456789"}
SCRAPE_EVERY_SECONDS = 10
N_PER_CLASS = 24


@pytest.fixture
def fleet_env(postgres_server, s3_bucket, tmp_path) -> dict[str, str]:
    endpoint, bucket = s3_bucket
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources: []\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "UNSPLASH_ACCESS_KEY"}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": postgres_server.new_database(),
            "STORAGE_DRIVER": "s3",
            "S3_BUCKET": bucket,
            "S3_PREFIX": "fleet/",
            "S3_ENDPOINT_URL": endpoint,
            "TRAINER_API_KEY": "fleet-token-0123456789",
            "SOURCES_CONFIG": str(sources),
            "SCHEDULER_ENABLED": "true",
            "SCRAPE_EVERY_HOURS": str(SCRAPE_EVERY_SECONDS / 3600),
            "TRAIN_EVERY_DAYS": "365",
            "WORKER_KINDS": "train,label",
            "JOB_SWEEP_SECONDS": "1",
            "WORKER_POLL_SECONDS": "0.2",
            "EXPOSR_CORE_ENDPOINT": f"http://127.0.0.1:{free_port()}/api/v1/analyze",
            "TRAIN_ARCH": "resnet10t",
            "TRAIN_PRETRAINED": "false",
            "TRAIN_IMAGE_SIZE": "32",
            "TRAIN_EPOCHS": "5",
            "TRAIN_BATCH_SIZE": "8",
            "TRAIN_LR": "0.003",
            "TRAIN_SEED": "1",
            "MIN_TRAIN_SAMPLES": "8",
            "VAL_FRACTION": "0.25",
            "MIN_IMAGE_SIDE": "16",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


class Fleet:
    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.procs: list[subprocess.Popen] = []

    def host_env(self, name: str) -> dict[str, str]:
        host = self.root / name
        host.mkdir(exist_ok=True)
        return {
            **self.env,
            "DATASET_DIR": str(host / "datasets"),
            "MODELS_DIR": str(host / "models"),
            "LOG_DIR": str(host / "logs"),
        }

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.host_env(name),
            cwd=self.root / name,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def replica(self, name: str) -> str:
        port = free_port()
        self.start(name, ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"replica {name} did not start; see {self.root / (name + '.log')}")

    def worker(self, name: str) -> subprocess.Popen:
        return self.start(name, ["-c", "import sys; from app.cli import main; sys.exit(main(['worker']))"])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def fill(env: dict[str, str], root: Path, make_settings) -> None:
    settings = make_settings(
        dataset_dir=root / "loader",
        database_url=env["DATABASE_URL"],
        storage_driver="s3",
        s3_bucket=env["S3_BUCKET"],
        s3_prefix="fleet/",
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
    )
    async with DatasetManager(settings) as dm:
        for i in range(2 * N_PER_CLASS):
            label = ("real", "ai")[i % 2]
            data = jpeg(100 + i) if label == "real" else encode(textured(200 + i, "ai", size=(72, 72)), "PNG")
            assert (await dm.ingest(data, {"source": "folder", "label": label})).status == "stored"


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=10).json()


def wait_state(url: str, job_id: str, states: tuple[str, ...], seconds: float = 900) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = job(url, job_id)
        if row["state"] in states:
            return row
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job(url, job_id)['state']} after {seconds}s")


def post_train(url: str) -> httpx.Response:
    return httpx.post(f"{url}/train", headers=AUTH, timeout=30)


def test_two_replicas_and_a_worker_behave_as_one_service(fleet_env, tmp_path, make_settings, aws_env):
    asyncio.run(fill(fleet_env, tmp_path, make_settings))
    fleet = Fleet(fleet_env, tmp_path)
    try:
        urls = [fleet.replica("api1"), fleet.replica("api2")]
        worker = fleet.worker("worker1")

        with ThreadPoolExecutor(2) as pool:  # both replicas at once
            answers = list(pool.map(post_train, urls))
        codes = sorted(a.status_code for a in answers)
        assert codes == [202, 409], [a.text for a in answers]
        accepted = next(a for a in answers if a.status_code == 202).json()["job_id"]
        refused = next(a for a in answers if a.status_code == 409).json()["detail"]
        assert accepted in refused
        first = wait_state(urls[1], accepted, ("succeeded", "failed", "interrupted"))
        assert first["state"] == "succeeded", first["error"]
        assert first["result"]["promoted"] is True, first["result"].get("promotion_reason")
        trains = httpx.get(f"{urls[0]}/jobs", params={"kind": "train"}, headers=AUTH).json()["jobs"]
        assert [j["id"] for j in trains] == [accepted]  # one training ran, no second row at all

        for url in urls:  # images stored through another host count on every replica
            assert httpx.get(f"{url}/status").json()["dataset_counts"]["total"] == 2 * N_PER_CLASS
        latest = [httpx.get(f"{url}/models/latest", headers=AUTH).json() for url in urls]
        assert latest[0] == latest[1] and latest[0]["model_version"] == "v1"
        weights = [httpx.get(url + latest[0]["download_url"], headers=AUTH) for url in urls]
        assert weights[0].content == weights[1].content
        assert weights[0].headers["etag"] == weights[1].headers["etag"] == f'"{latest[0]["sha256"]}"'
        assert weights[0].headers["content-length"] == weights[1].headers["content-length"]

        second = post_train(urls[0]).json()["job_id"]
        wait_state(urls[0], second, ("running",))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
        cut = wait_state(urls[1], second, ("interrupted", "succeeded", "failed"), seconds=60)
        assert cut["state"] == "interrupted", cut
        fleet.worker("worker2")
        third = post_train(urls[1]).json()["job_id"]
        assert wait_state(urls[0], third, ("succeeded", "failed", "interrupted"))["state"] == "succeeded"

        # The schedule: scrapes every SCRAPE_EVERY_SECONDS, fired by one replica for the fleet.
        deadline = time.monotonic() + 2.5 * SCRAPE_EVERY_SECONDS
        while time.monotonic() < deadline:
            scheduled = scheduled_scrapes(urls[0])
            if len(scheduled) >= 2:
                break
            time.sleep(1)
        assert len(scheduled) >= 2
        gaps = [(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:], strict=False)]
        assert min(gaps) >= 0.6 * SCRAPE_EVERY_SECONDS, gaps  # never two replicas' ticks together
    finally:
        fleet.stop()


def scheduled_scrapes(url: str) -> list[datetime]:
    rows = httpx.get(f"{url}/jobs", params={"kind": "scrape", "limit": 100}, headers=AUTH).json()["jobs"]
    times = [
        datetime.fromisoformat(j["created_at"].replace("Z", "+00:00"))
        for j in rows
        if j["trigger"] == "scheduled"
    ]
    return sorted(times)
