"""exposr-trainer worker: API replicas queue train jobs (WORKER_KINDS), a worker on another "host"
(its own folders) claims and runs them; progress and result come back through the database; a
killed worker's job is marked interrupted by the sweep, and the next one succeeds."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time

import pytest

from app.jobs import JobBusy, JobRunner
from app.jobstore import JobStore, make_engine
from app.worker import run_worker
from tests.app.helpers import run_a_worker

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def replica_settings(make_settings, postgres_server, tmp_path):
    url = postgres_server.new_database()

    def build(n: int, **overrides):
        root = tmp_path / f"host{n}"
        values = dict(
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            log_dir=root / "logs",
            database_url=url,
            worker_kinds="train",
            job_sweep_seconds=0.2,
            worker_poll_seconds=0.05,
        )
        return make_settings(**{**values, **overrides})

    return build


async def api_must_not_run(settings, progress):
    raise AssertionError("an API replica ran a job meant for the worker")


async def trained(settings, progress):
    progress({"epoch": 1, "of": 1, "worker_dir": str(settings.dataset_dir)})
    return {"version": "v1", "promoted": True, "ran_on": str(settings.dataset_dir)}


async def wait_for(predicate, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    return await predicate()


async def test_api_replicas_queue_and_the_worker_runs_once(replica_settings):
    api_settings = [replica_settings(1), replica_settings(2)]
    engines = [make_engine(s) for s in api_settings]
    apis = [
        JobRunner(s, JobStore(e), {"train": api_must_not_run})
        for s, e in zip(api_settings, engines, strict=True)
    ]
    for api in apis:
        await api.start()
    queued = await apis[0].submit("train")
    assert queued["state"] == "queued" and queued["runner"] == "worker"
    with pytest.raises(JobBusy) as busy:  # the other replica: 409 naming the queued job
        await apis[1].submit("train")
    assert busy.value.job["id"] == queued["id"]
    assert await apis[1].sweep() == 0  # a queued job waiting for a worker is not a leftover

    stop = asyncio.Event()
    worker_settings = replica_settings(3)
    worker = asyncio.create_task(run_worker(worker_settings, stop, kinds={"train": trained}))
    try:

        async def finished():
            row = await apis[1].store.get(queued["id"])
            return row if row["state"] not in ("queued", "running") else None

        row = await wait_for(finished)
        assert row["state"] == "succeeded"
        assert row["result"]["ran_on"] == str(worker_settings.dataset_dir)
        assert row["progress"] == {"epoch": 1, "of": 1, "worker_dir": str(worker_settings.dataset_dir)}
        assert row["holder"] and row["holder"].endswith(f":{os.getpid()}")
    finally:
        stop.set()
        await worker
        for api in apis:
            await api.shutdown()
        for engine in engines:
            await engine.dispose()


async def test_a_killed_worker_leaves_an_interrupted_job_and_the_next_one_succeeds(
    replica_settings, tmp_path
):
    api_settings = replica_settings(1)
    engine = make_engine(api_settings)
    api = JobRunner(api_settings, JobStore(engine), {"train": api_must_not_run})
    await api.start()
    ready = tmp_path / "ready"
    process = multiprocessing.get_context("spawn").Process(
        target=run_a_worker, args=(replica_settings(2), ready)
    )
    process.start()
    stop = asyncio.Event()
    second = None
    try:
        job = await api.submit("train")

        async def running():
            state = (await api.store.get(job["id"]))["state"]
            return ready.exists() and ready.read_text() and state == "running"

        assert await wait_for(running)
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.join, 30)

        async def interrupted():
            return (await api.store.get(job["id"]))["state"] == "interrupted"

        assert await wait_for(interrupted)
        assert "stopped" in (await api.store.get(job["id"]))["error"]

        again = await api.submit("train")
        second = asyncio.create_task(run_worker(replica_settings(3), stop, kinds={"train": trained}))

        async def succeeded():
            return (await api.store.get(again["id"]))["state"] == "succeeded"

        assert await wait_for(succeeded)
    finally:
        if process.is_alive():
            process.kill()
        stop.set()
        if second:
            await second
        await api.shutdown()
        await engine.dispose()
