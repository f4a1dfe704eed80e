"""The in-process scheduler: scrape every SCRAPE_EVERY_HOURS, train every TRAIN_EVERY_DAYS.

Runs go through the same :class:`JobRunner` as the API, so scheduled and manual runs never
overlap: a scheduled run that finds its kind busy is recorded as a ``skipped`` job row. A run the
scheduler missed (the process was busy past the grace time) is logged and recorded the same way.

Only one scheduler may run per deployment: with two workers (or two services on one DATASET_DIR)
the second cannot take the exclusive lock file ``DATASET_DIR/scheduler.lock`` and refuses to start,
with a log line saying so; its API still works. On PostgreSQL the lock is an advisory lock tied to
the leader's database connection (app/locks.py), so with N replicas the schedule fires once per
interval across the fleet; the others stand by and try to take over every JOB_SWEEP_SECONDS, so a
dead leader's replica takes over within that time (its intervals start again from the takeover).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.jobs import JobRunner
from app.locks import holder_lock
from config.settings import Settings

log = logging.getLogger(__name__)

LOCK_NAME = "scheduler.lock"


def job_intervals(settings: Settings) -> dict[str, timedelta]:
    return {
        "scrape": timedelta(hours=settings.scrape_every_hours),
        "train": timedelta(days=settings.train_every_days),
    }


def misfire_grace(interval: timedelta) -> int:
    """A run late by up to a quarter of its interval (at most an hour) still runs; later is missed."""
    return int(min(interval.total_seconds() / 4, 3600))


class JobScheduler:
    def __init__(self, settings: Settings, runner: JobRunner) -> None:
        self.settings = settings
        self.runner = runner
        self.lock = None if runner is None else holder_lock(settings, runner.store.engine, LOCK_NAME[:-5])
        self.scheduler: AsyncIOScheduler | None = None
        self.state = "disabled"
        self._standby: asyncio.Task | None = None

    async def start(self) -> None:
        if not self.settings.scheduler_enabled:
            log.info("scheduler disabled (SCHEDULER_ENABLED=false)")
            return
        if not await self.lock.acquire():
            self.state = "refused"
            log.warning(
                "scheduler NOT started: another process holds %s (a second worker, service or "
                "replica on the same dataset); this process serves the API only",
                self.lock.description,
            )
            if self.runner.store.engine.dialect.name == "postgresql" and self.settings.job_sweep_seconds > 0:
                self._standby = asyncio.create_task(self._take_over_when_free(), name="scheduler-standby")
            return
        self._start_scheduler()

    async def _take_over_when_free(self) -> None:
        while self.state == "refused":
            await asyncio.sleep(self.settings.job_sweep_seconds)
            try:
                if await self.lock.acquire():
                    log.warning("the scheduler's previous holder is gone: this replica runs the schedule now")
                    self._start_scheduler()
            except Exception as exc:  # database away for a moment: try again at the next turn
                log.warning("scheduler standby could not check the lock: %s", exc)

    def _start_scheduler(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        for kind, interval in job_intervals(self.settings).items():
            self.scheduler.add_job(
                self.runner.submit_scheduled,
                "interval",
                args=[kind],
                id=kind,
                seconds=interval.total_seconds(),
                coalesce=True,
                max_instances=1,
                misfire_grace_time=misfire_grace(interval),
                replace_existing=True,
            )
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.scheduler.start()
        self.state = "running"
        intervals = job_intervals(self.settings).items()
        log.info("scheduler started: %s", ", ".join(f"{k} every {v}" for k, v in intervals))

    def next_runs(self) -> dict[str, str | None]:
        if self.scheduler is None:
            return {}
        runs = {}
        for job in self.scheduler.get_jobs():
            runs[job.id] = job.next_run_time.isoformat() if job.next_run_time else None
        return runs

    async def shutdown(self) -> None:
        if self._standby is not None:
            self._standby.cancel()
            await asyncio.gather(self._standby, return_exceptions=True)
            self._standby = None
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None
        if self.lock is not None:
            await self.lock.release()
        if self.state == "running":
            self.state = "stopped"

    def _on_missed(self, event: JobExecutionEvent) -> None:
        log.warning(
            "scheduled %s run due at %s was missed (past its grace time); recording it as skipped",
            event.job_id,
            event.scheduled_run_time,
        )
        asyncio.get_running_loop().create_task(self._record_missed(event))

    async def _record_missed(self, event: JobExecutionEvent) -> None:
        due = event.scheduled_run_time.isoformat()
        await self.runner.store.record_skipped(
            event.job_id, f"missed: the run due at {due} was past its grace time"
        )
