"""The scheduled training runs the path users run: the scheduler fires the real train job (a spawned
process, DataLoader workers and the training cache at their defaults) and it succeeds."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.jobs import JobRunner, train_job
from app.jobstore import JobStore, make_engine
from app.scheduler import JobScheduler
from dataset.manager import DatasetManager
from tests.images import encode
from tests.trainer.builders import textured

pytestmark = pytest.mark.slow


async def test_the_scheduler_fires_a_training_with_the_shipped_defaults(make_settings):
    settings = make_settings(
        scheduler_enabled=True,
        scrape_every_hours=1000,
        train_every_days=8 / 86400,  # every 8 s: the first run fires within the test
        train_arch="resnet10t",
        train_image_size=32,
        train_epochs=2,
        train_batch_size=8,
        min_train_samples=20,
        val_fraction=0.25,
    )
    assert settings.train_workers == 2 and settings.train_cache  # the defaults users train with
    async with DatasetManager(settings) as dm:
        for i in range(40):
            label = "ai" if i % 2 else "real"
            await dm.ingest(
                encode(textured(5200 + i, label, size=(64, 48)), "JPEG"), {"source": "folder", "label": label}
            )
    engine = make_engine(settings)
    runner = JobRunner(settings, JobStore(engine), {"train": train_job})
    await runner.start()
    scheduler = JobScheduler(settings, runner)
    try:
        await scheduler.start()
        deadline = time.monotonic() + 600  # a bound for a loaded machine; idle it takes ~20 s
        while time.monotonic() < deadline:
            rows = [r for r in await runner.list(kind="train") if r["trigger"] == "scheduled"]
            if rows and rows[-1]["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.5)
        first = rows[-1]
        assert first["state"] == "succeeded", first.get("error")
        assert first["result"]["version"] == "v1" and first["result"]["cache"]["built"] == 40
    finally:
        await scheduler.shutdown()
        await runner.shutdown()
        await engine.dispose()
