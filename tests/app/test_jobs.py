from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest

from app.jobs import JobBusy, JobRunner, UnknownJobKind
from app.jobstore import JobStore, make_engine
from app.processes import run_in_process
from tests.app.helpers import hold_a_train_job


async def ok_job(settings, progress):
    progress({"step": 1, "total": 1})
    return {"stored": 3}


async def failing_job(settings, progress):
    raise ValueError("dataset too small: 3 images, MIN_TRAIN_SAMPLES is 50")


def blocking_kinds(event: asyncio.Event):
    async def blocked(settings, progress):
        progress({"waiting": True})
        await event.wait()
        return {"released": True}

    return {"scrape": blocked, "train": blocked}


@pytest.fixture
async def store(settings):
    engine = make_engine(settings)
    yield JobStore(engine)
    await engine.dispose()


async def make_runner(settings, store, kinds):
    runner = JobRunner(settings, store, kinds)
    await runner.start()
    return runner


async def test_job_succeeds_with_result_and_progress(settings, store):
    runner = await make_runner(settings, store, {"scrape": ok_job})
    job = await runner.submit("scrape")
    assert job["state"] == "queued" and job["trigger"] == "manual"
    final = await runner.wait(job["id"])
    assert final["state"] == "succeeded"
    assert final["result"] == {"stored": 3}
    assert final["progress"] == {"step": 1, "total": 1}
    assert final["started_at"] <= final["finished_at"]
    assert runner.running("scrape") is None


async def test_failing_job_records_the_reason(settings, store):
    runner = await make_runner(settings, store, {"train": failing_job})
    final = await runner.wait((await runner.submit("train"))["id"])
    assert final["state"] == "failed"
    assert "MIN_TRAIN_SAMPLES" in final["error"]


async def test_second_job_of_a_kind_is_refused_and_scheduled_one_skipped(settings, store):
    release = asyncio.Event()
    runner = await make_runner(settings, store, blocking_kinds(release))
    first = await runner.submit("scrape")
    with pytest.raises(JobBusy) as busy:
        await runner.submit("scrape")
    assert busy.value.job["id"] == first["id"]
    skipped = await runner.submit_scheduled("scrape")
    assert skipped["state"] == "skipped" and first["id"] in skipped["error"]
    other = await runner.submit("train")  # another kind is independent
    release.set()
    assert (await runner.wait(first["id"]))["state"] == "succeeded"
    assert (await runner.wait(other["id"]))["state"] == "succeeded"
    states = sorted(j["state"] for j in await runner.list())
    assert states == ["skipped", "succeeded", "succeeded"]


async def test_unknown_kind_names_the_known_ones(settings, store):
    runner = await make_runner(settings, store, {"scrape": ok_job})
    with pytest.raises(UnknownJobKind, match="known kinds: scrape"):
        await runner.submit("dance")


async def test_shutdown_interrupts_and_restart_marks_leftovers(settings, store):
    runner = await make_runner(settings, store, blocking_kinds(asyncio.Event()))
    job = await runner.submit("train")
    await asyncio.sleep(0)
    await runner.shutdown()
    row = await store.get(job["id"])
    assert row["state"] == "interrupted" and "shutdown" in row["error"]
    # A process killed with -9 leaves its row running: the next start marks it interrupted.
    await store.insert(id="left-over", kind="scrape", trigger="manual", state="running")
    await make_runner(settings, store, {"scrape": ok_job})
    assert (await store.get("left-over"))["state"] == "interrupted"


async def test_process_job_reports_progress_and_result(settings):
    seen = []
    result = await run_in_process("tests.app.helpers:quick", settings, seen.append)
    assert [p["step"] for p in seen] == [1, 2]
    assert result["pid"] != os.getpid() and result["pid"] == seen[0]["pid"]
    assert result["models_dir"] == str(settings.models_dir)  # made JSON-safe
    # The child yields the CPU to the service (nice 10), in the normal class: SCHED_IDLE starved it
    # on a busy machine.
    assert result["policy"] == os.SCHED_OTHER and result["niceness"] >= 10
    foreground = await run_in_process("tests.app.helpers:quick", settings, seen.append, background=False)
    assert foreground["niceness"] == os.nice(0)  # the CLI's training: the user's own priority


async def test_process_job_error_message_reaches_the_job_row(settings, store):
    async def too_small(s, progress):
        return await run_in_process("tests.app.helpers:too_small", s, progress)

    runner = await make_runner(settings, store, {"train": too_small})
    final = await runner.wait((await runner.submit("train"))["id"])
    assert final["state"] == "failed"
    assert final["error"] == "need at least 50 labelled images, found 3"


async def test_shutdown_terminates_the_child_process(settings, store):
    async def slow(s, progress):
        return await run_in_process("tests.app.helpers:slow", s, progress)

    runner = await make_runner(settings, store, {"train": slow})
    job = await runner.submit("train")
    for _ in range(600):  # wait until the child has reported its pid (spawn + imports)
        if (runner.running("train") or {}).get("progress"):
            break
        await asyncio.sleep(0.05)
    pid = runner.running("train")["progress"]["pid"]
    await runner.shutdown()
    assert (await store.get(job["id"]))["state"] == "interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_second_live_process_leaves_the_first_ones_running_jobs_alone(settings, store):
    first = await make_runner(settings, store, blocking_kinds(asyncio.Event()))
    job = await first.submit("train")
    await asyncio.sleep(0)
    await make_runner(settings, store, {"train": ok_job})  # a second worker starting up
    assert (await store.get(job["id"]))["state"] == "running"
    await first.shutdown()
    assert (await store.get(job["id"]))["state"] == "interrupted"


async def test_single_flight_holds_across_two_runners_on_one_dataset(settings, store):
    # Two uvicorn workers are two runners on one DATASET_DIR: the kind lock is shared through the file.
    release = asyncio.Event()
    first = await make_runner(settings, store, blocking_kinds(release))
    second = await make_runner(settings, store, {"train": ok_job, "scrape": ok_job})
    job = await first.submit("train")
    with pytest.raises(JobBusy) as busy:
        await second.submit("train")
    assert busy.value.job["id"] == job["id"] and busy.value.job["state"] in ("queued", "running")
    skipped = await second.submit_scheduled("train")
    assert skipped["state"] == "skipped" and job["id"] in skipped["error"]
    release.set()
    assert (await first.wait(job["id"]))["state"] == "succeeded"
    again = await second.submit("train")  # the lock went with the job
    assert (await second.wait(again["id"]))["state"] == "succeeded"


async def test_single_flight_holds_against_another_process(settings, store, tmp_path):
    ready, release = tmp_path / "ready", tmp_path / "release"
    other = multiprocessing.get_context("spawn").Process(
        target=hold_a_train_job, args=(settings, ready, release)
    )
    other.start()
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text():
                break
            await asyncio.sleep(0.05)
        runner = await make_runner(settings, store, {"train": ok_job})
        assert (await store.get(ready.read_text()))["state"] == "running"  # start() left it alone
        with pytest.raises(JobBusy) as busy:
            await runner.submit("train")
        assert busy.value.job["id"] == ready.read_text()
    finally:
        release.touch()
        await asyncio.to_thread(other.join, 60)
    assert other.exitcode == 0
    assert (await store.get(ready.read_text()))["state"] == "succeeded"
    assert (await runner.wait((await runner.submit("train"))["id"]))["state"] == "succeeded"


async def test_a_dead_processs_leftover_is_interrupted_when_a_live_worker_takes_the_kind(settings, store):
    runner = await make_runner(settings, store, {"train": ok_job})
    # Another worker died (kill -9) mid-training after this one started: its row is still running.
    await store.insert(id="dead-workers-job", kind="train", trigger="manual", state="running")
    final = await runner.wait((await runner.submit("train"))["id"])
    assert final["state"] == "succeeded"
    assert (await store.get("dead-workers-job"))["state"] == "interrupted"


async def test_a_job_runs_an_imported_function_in_the_child(settings):
    from tests.app.helpers import quick

    seen: list[dict] = []
    result = await run_in_process(quick, settings, seen.append)
    assert [p["step"] for p in seen] == [1, 2] and result["pid"] == seen[0]["pid"] != os.getpid()


async def test_the_train_job_hands_the_child_the_training_function_itself(settings, monkeypatch):
    import app.jobs as jobs
    from trainer.model_store import train_with_shared_store

    handed = []

    async def fake_run_in_process(target, settings, progress, name="job", background=True):
        handed.append(target)
        return {"version": "v1"}

    monkeypatch.setattr(jobs, "run_in_process", fake_run_in_process)
    await jobs.train_job(settings, lambda data: None)
    assert handed == [train_with_shared_store]


async def test_a_job_asked_for_just_after_the_last_one_finished_elsewhere_is_accepted(settings, store):
    """A worker writes its job's final row, then lets the kind's lock go: a client that saw
    "succeeded" in between and asks again is served, not refused with a made-up running job."""
    from app.jobs import kind_lock

    runner = await make_runner(settings, store, {"train": ok_job})
    await store.insert(id="finished-elsewhere", kind="train", trigger="manual", state="succeeded")
    holder = kind_lock(settings, store, "train")  # the other process, between its final row and release
    assert await holder.acquire()

    async def let_go_later() -> None:
        await asyncio.sleep(0.5)
        await holder.release()

    letting_go = asyncio.create_task(let_go_later())
    job = await runner.submit("train")
    await letting_go
    assert (await runner.wait(job["id"]))["state"] == "succeeded"
    assert (await store.get("finished-elsewhere"))["state"] == "succeeded"  # left as it was


async def test_a_lock_held_with_no_job_row_is_busy_after_the_wait(settings, store, monkeypatch):
    from app import jobs
    from app.jobs import kind_lock

    monkeypatch.setattr(jobs, "BUSY_ROW_WAIT_SECONDS", 0.3)
    runner = await make_runner(settings, store, {"train": ok_job})
    holder = kind_lock(settings, store, "train")
    assert await holder.acquire()
    try:
        with pytest.raises(JobBusy) as busy:
            await runner.submit("train")
        assert busy.value.job["id"] == "in-another-process"
        assert "train" not in runner._active  # the claim did not stay
    finally:
        await holder.release()
