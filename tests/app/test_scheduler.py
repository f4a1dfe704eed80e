from __future__ import annotations

import logging

from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from app.scheduler import JobScheduler, misfire_grace
from config.filelock import ProcessLock


async def ok_job(settings, progress):
    return {}


def test_lock_is_exclusive_until_released(tmp_path):
    first, second = ProcessLock(tmp_path / "s.lock"), ProcessLock(tmp_path / "s.lock")
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_misfire_grace_suits_long_intervals():
    from datetime import timedelta

    assert misfire_grace(timedelta(hours=12)) == 3600
    assert misfire_grace(timedelta(minutes=20)) == 300


async def test_scheduler_adds_both_jobs_and_a_second_one_refuses(make_settings, caplog):
    settings = make_settings(scheduler_enabled=True, scrape_every_hours=12, train_every_days=7)
    engine = make_engine(settings)
    runner = JobRunner(settings, JobStore(engine), {"scrape": ok_job, "train": ok_job})
    await runner.start()
    first, second = JobScheduler(settings, runner), JobScheduler(settings, runner)
    try:
        await first.start()
        assert first.state == "running"
        jobs = {job.id: job for job in first.scheduler.get_jobs()}
        assert set(jobs) == {"scrape", "train"}
        assert jobs["scrape"].trigger.interval.total_seconds() == 12 * 3600
        assert jobs["train"].trigger.interval.total_seconds() == 7 * 86400
        for job in jobs.values():
            assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time == 3600
        assert set(first.next_runs()) == {"scrape", "train"}
        with caplog.at_level(logging.WARNING, logger="app.scheduler"):
            await second.start()
        assert second.state == "refused" and second.scheduler is None
        assert "scheduler NOT started" in caplog.text
    finally:
        await first.shutdown()
        await second.shutdown()
        await engine.dispose()


async def test_disabled_scheduler_does_not_start(settings):
    scheduler = JobScheduler(settings, runner=None)
    await scheduler.start()
    assert scheduler.state == "disabled" and scheduler.next_runs() == {}
