"""``exposr-trainer worker``: run queued train/label jobs on this host (a GPU box), without the API.

The API replicas (with ``WORKER_KINDS=train,label``) only queue those jobs: a row in ``jobs`` with
``runner='worker'``. A worker claims the oldest one of a kind no one else holds (the kind's lock,
app/locks.py, then a compare-and-set from ``queued`` to ``running``), runs it exactly as the service
would (training in a child process), and reports progress and the result through the same row, so
``GET /jobs/{id}`` on any replica shows them. SIGTERM/SIGINT stop it: a running job is cancelled
and recorded ``interrupted``. After kill -9 its database connection closes, the kind's lock is
free, and the next sweep of any replica or worker (JOB_SWEEP_SECONDS) records the job
``interrupted``; a training cut off that way leaves no registry entry (trainer/registry.py and
trainer/model_store.py publish last).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from app.webhooks import Webhooks
from config.settings import Settings
from config.webhooks import load_subscribers

log = logging.getLogger(__name__)

DEFAULT_KINDS = "train,label"


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, kinds: dict | None = None
) -> None:
    if not settings.worker_kind_set:
        settings = settings.model_copy(update={"worker_kinds": DEFAULT_KINDS})
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Not the main thread (tests): the caller sets ``stop`` itself.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    subscribers = load_subscribers(settings)  # a bad subscriber stops start-up, naming the field
    engine = make_engine(settings)
    runner = JobRunner(settings, JobStore(engine), kinds=kinds, worker=True)
    webhooks = Webhooks(settings, engine, subscribers)
    runner.on_finished.append(webhooks.job_finished)
    try:
        await runner.start()
        await webhooks.start()
        log.info("worker %s running %s jobs queued in the database", runner.holder, settings.worker_kinds)
        work = asyncio.create_task(runner.work(stop))
        await stop.wait()
        log.info("worker stopping: a running job is interrupted")
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
    finally:
        await runner.shutdown()
        await webhooks.stop()
        await engine.dispose()
