"""Metadata read-modify-write is exclusive across processes: a label and a score written to the
same image at the same time by two processes (the API and the label job) both survive."""

from __future__ import annotations

import asyncio
import multiprocessing

from dataset.manager import DatasetManager
from tests.images import jpeg

ROUNDS = 60


def _score_many(settings, image_id: str) -> None:
    async def run() -> None:
        async with DatasetManager(settings) as dm:
            for i in range(ROUNDS):
                await dm.set_score(image_id, i / ROUNDS, {"name": "test-scorer", "version": str(i)})

    asyncio.run(run())


async def test_label_and_score_from_two_processes_both_survive(settings):
    async with DatasetManager(settings) as dm:
        image_id = (await dm.ingest(jpeg(1), {"source": "upload", "label": "unlabeled"})).id
        worker = multiprocessing.get_context("spawn").Process(target=_score_many, args=(settings, image_id))
        worker.start()
        labels = ["real", "ai"]
        i = 0
        while worker.is_alive() or i < ROUNDS:
            await dm.set_label(image_id, labels[i % 2], {"by": "reviewer"})
            i += 1
        worker.join(timeout=60)
        assert worker.exitcode == 0
        final_label = labels[(i - 1) % 2]
        doc = await dm.get_metadata(image_id)
        # Neither writer's last change may be lost to the other's stale read.
        assert doc["label"] == final_label
        assert doc["confidence"] == (ROUNDS - 1) / ROUNDS
        assert doc["scored_by"]["version"] == str(ROUNDS - 1)
        assert (await dm.index.get(image_id))["label"] == final_label
