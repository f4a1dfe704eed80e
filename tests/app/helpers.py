"""Functions the job tests run in a spawned child process (importable by module path)."""

from __future__ import annotations

import os
import time


def quick(settings, progress):
    progress({"step": 1, "total": 2, "pid": os.getpid()})
    progress({"step": 2, "total": 2, "pid": os.getpid()})
    return {
        "pid": os.getpid(),
        "models_dir": settings.models_dir,
        "niceness": os.nice(0),
        "policy": os.sched_getscheduler(0),
    }


def too_small(settings, progress):
    raise ValueError(f"need at least {settings.min_train_samples} labelled images, found 3")


def slow(settings, progress):
    progress({"pid": os.getpid(), "state": "sleeping"})
    time.sleep(120)
    return {"never": True}


def hold_a_train_job(settings, ready, release):
    """A second service process: runs one train job until the file ``release`` exists, after
    writing the job's id to ``ready``."""
    import asyncio
    from pathlib import Path

    from app.jobs import JobRunner
    from app.jobstore import JobStore, make_engine

    async def held(s, progress):
        while not Path(release).exists():
            await asyncio.sleep(0.02)
        return {"held": True}

    async def main():
        engine = make_engine(settings)
        runner = JobRunner(settings, JobStore(engine), {"train": held})
        await runner.start()
        job = await runner.submit("train")
        Path(ready).write_text(job["id"])
        await runner.wait(job["id"])
        await engine.dispose()

    asyncio.run(main())


def run_a_worker(settings, ready):
    """``exposr-trainer worker`` with a train job that never ends (the test kills this process)."""
    import asyncio
    from pathlib import Path

    from app.worker import run_worker

    async def endless(s, progress):
        progress({"pid": os.getpid(), "state": "training"})
        Path(ready).write_text(str(os.getpid()))
        while True:
            await asyncio.sleep(0.05)

    asyncio.run(run_worker(settings, kinds={"train": endless, "label": endless}))
