"""Two hosts, one PostgreSQL and one bucket: a person's label and a labeler's score written to the same
images at the same moment from different hosts are both kept (row lock, dataset/manager.py _edit).

Each manager has its own local DATASET_DIR, so no file lock is shared: only the database serialises.
"""

from __future__ import annotations

import asyncio

import pytest

from dataset.manager import DatasetManager
from tests.images import jpeg

pytestmark = pytest.mark.postgres_only
PAIRS = 40


async def test_no_label_or_score_is_lost_between_two_hosts(
    make_settings, postgres_server, s3_bucket, tmp_path
):
    endpoint, bucket = s3_bucket
    url = postgres_server.new_database()

    def host(n: int):
        return make_settings(
            dataset_dir=tmp_path / f"host{n}" / "datasets",
            database_url=url,
            storage_driver="s3",
            s3_bucket=bucket,
            s3_prefix="ds/",
            s3_endpoint_url=endpoint,
        )

    async with DatasetManager(host(1)) as a, DatasetManager(host(2)) as b:
        ids = []
        for seed in range(PAIRS):
            outcome = await a.ingest(jpeg(seed), {"source": "upload", "label": "unlabeled"})
            assert outcome.status == "stored", outcome
            ids.append(outcome.id)
        labels = {image_id: ("real", "ai")[i % 2] for i, image_id in enumerate(ids)}
        scores = {image_id: round(0.01 + i / (2 * PAIRS), 4) for i, image_id in enumerate(ids)}
        edits = []
        for image_id in ids:  # each pair starts together: host 1 labels while host 2 scores
            edits.append(a.set_label(image_id, labels[image_id], {"by": "reviewer"}))
            edits.append(b.set_score(image_id, scores[image_id], {"name": "core", "version": "9"}))
        await asyncio.gather(*edits)

        lost = 0
        for image_id in ids:
            for reader in (a, b):
                doc = await reader.get_metadata(image_id)
                row = await reader.index.get(image_id)
                kept = (
                    doc["label"] == labels[image_id]
                    and doc.get("confidence") == scores[image_id]
                    and doc["label_source"]["by"] == "reviewer"
                    and doc["scored_by"]["version"] == "9"
                    and row["label"] == labels[image_id]
                    and row["confidence"] == scores[image_id]
                )
                lost += not kept
        assert lost == 0, f"{lost} of {2 * PAIRS} reads show a lost label or score"
