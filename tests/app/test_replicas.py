"""Several replicas on one PostgreSQL: each has its own DATASET_DIR (its own host, as far as file
locks go); only the database is shared. Jobs run once across them, a live replica's job is never
marked interrupted, a dead one's is, and the schedule has one leader."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from app.jobs import JobBusy, JobRunner
from app.jobstore import JobStore, make_engine
from app.main import create_app
from app.scheduler import JobScheduler
from tests.app.conftest import AUTH
from tests.app.helpers import hold_a_train_job

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def replica_settings(make_settings, postgres_server, tmp_path):
    """Settings for replica ``n``: its own folders, the shared database."""
    url = postgres_server.new_database()

    def build(n: int, **overrides):
        root = tmp_path / f"host{n}"
        return make_settings(
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            log_dir=root / "logs",
            database_url=url,
            **overrides,
        )

    return build


def blocking_kinds(event: asyncio.Event):
    async def blocked(settings, progress):
        await event.wait()
        return {"released": True}

    return {"scrape": blocked, "train": blocked}


async def ok_job(settings, progress):
    return {"ok": True}


@pytest.fixture
async def engines():
    made = []

    def make(settings):
        made.append(make_engine(settings))
        return made[-1]

    yield make
    for engine in made:
        await engine.dispose()


async def test_a_kind_runs_once_across_replicas_and_a_live_job_is_left_alone(replica_settings, engines):
    release = asyncio.Event()
    a_settings, b_settings = replica_settings(1), replica_settings(2)
    a = JobRunner(a_settings, JobStore(engines(a_settings)), blocking_kinds(release))
    await a.start()
    job = await a.submit("train")
    b = JobRunner(b_settings, JobStore(engines(b_settings)), {"train": ok_job, "scrape": ok_job})
    await b.start()  # a replica starting up while A trains
    assert await b.sweep() == 0
    assert (await b.store.get(job["id"]))["state"] in ("queued", "running")
    with pytest.raises(JobBusy) as busy:
        await b.submit("train")
    assert busy.value.job["id"] == job["id"]
    skipped = await b.submit_scheduled("train")
    assert skipped["state"] == "skipped" and job["id"] in skipped["error"]
    assert (await b.wait((await b.submit("scrape"))["id"]))["state"] == "succeeded"  # other kinds run
    release.set()
    assert (await a.wait(job["id"]))["state"] == "succeeded"
    again = await b.submit("train")  # the lock went with A's job
    assert (await b.wait(again["id"]))["state"] == "succeeded"
    await a.shutdown()
    await b.shutdown()


async def test_a_killed_replicas_job_is_marked_interrupted_by_the_sweep(replica_settings, engines, tmp_path):
    dead_settings = replica_settings(1)
    ready, release = tmp_path / "ready", tmp_path / "release"
    other = multiprocessing.get_context("spawn").Process(
        target=hold_a_train_job, args=(dead_settings, ready, release)
    )
    other.start()
    live_settings = replica_settings(2, job_sweep_seconds=0.2)
    runner = None
    try:
        deadline = time.monotonic() + 3000
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        job_id = ready.read_text()
        runner = JobRunner(live_settings, JobStore(engines(live_settings)), {"train": ok_job})
        await runner.start()
        await asyncio.sleep(0.6)  # three sweeps while the holder lives: its job stays running
        assert (await runner.store.get(job_id))["state"] == "running"
        os.kill(other.pid, signal.SIGKILL)
        await asyncio.to_thread(other.join, 30)
        deadline = time.monotonic() + 300
        while (await runner.store.get(job_id))["state"] == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        row = await runner.store.get(job_id)
        assert row["state"] == "interrupted" and row["finished_at"]
        assert (await runner.wait((await runner.submit("train"))["id"]))["state"] == "succeeded"
    finally:
        if other.is_alive():
            other.kill()
        if runner:
            await runner.shutdown()


async def test_one_scheduler_leads_the_fleet_and_another_takes_over(replica_settings, engines):
    settings = [replica_settings(n, scheduler_enabled=True, job_sweep_seconds=0.2) for n in (1, 2)]
    runners = [JobRunner(s, JobStore(engines(s)), {"scrape": ok_job, "train": ok_job}) for s in settings]
    schedulers = [JobScheduler(s, r) for s, r in zip(settings, runners, strict=True)]
    for runner in runners:
        await runner.start()
    try:
        await schedulers[0].start()
        await schedulers[1].start()
        assert [s.state for s in schedulers] == ["running", "refused"]
        await schedulers[0].shutdown()  # the leader goes away
        deadline = time.monotonic() + 300
        while schedulers[1].state != "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert schedulers[1].state == "running" and set(schedulers[1].next_runs()) == {"scrape", "train"}
    finally:
        for scheduler in schedulers:
            await scheduler.shutdown()
        for runner in runners:
            await runner.shutdown()


def test_post_train_on_two_replicas_starts_one_job_and_409_names_it(replica_settings, gate):
    clients = [TestClient(create_app(replica_settings(n), job_kinds=gate.kinds())) for n in (1, 2)]
    for client in clients:
        client.__enter__()
    try:
        first = clients[0].post("/train", headers=AUTH)
        second = clients[1].post("/train", headers=AUTH)
        assert first.status_code == 202
        assert second.status_code == 409 and first.json()["job_id"] in second.json()["detail"]
        assert clients[1].get(f"/jobs/{first.json()['job_id']}", headers=AUTH).json()["state"] in (
            "queued",
            "running",
        )
        gate.open = True
    finally:
        for client in clients:
            client.__exit__(None, None, None)
