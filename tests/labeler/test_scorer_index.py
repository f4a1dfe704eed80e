"""The index records who scored each image, so a label run finds its work with one query.

Covers the column's migration on a dedupe.db from before it existed, and the labeler's skip, which
must not need the metadata files (a run with nothing new used to read every one of them).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
import respx

from dataset.index import DedupeIndex
from dataset.manager import DatasetManager
from labeler.scoring import run_labeler
from tests.images import jpeg

ENDPOINT = "https://core.test/api/v1/analyze"
CORE_3 = {"ai_probability": 0.5, "model_version": "core-3"}

# The images table as the first release created it: no scorer column.
OLD_SCHEMA = """
CREATE TABLE images (
    seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, id VARCHAR(36) NOT NULL UNIQUE,
    sha256 VARCHAR(64) NOT NULL UNIQUE, phash BIGINT NOT NULL, label VARCHAR(16) NOT NULL,
    confidence FLOAT, source VARCHAR(64) NOT NULL, image_key VARCHAR(200) NOT NULL,
    meta_key VARCHAR(200) NOT NULL, format VARCHAR(16) NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, created_at VARCHAR(32) NOT NULL
);
INSERT INTO images (id, sha256, phash, label, confidence, source, image_key, meta_key, format, width,
                    height, created_at)
VALUES ('00000000-0000-4000-8000-000000000001', 'ab', -5, 'real', 0.25, 'pexels', 'images/a.jpg',
        'meta/a.json', 'JPEG', 64, 48, '2025-01-01T00:00:00Z');
"""


def old_index(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    return f"sqlite+aiosqlite:///{path}"


async def test_an_older_index_gains_the_scorer_column_and_keeps_its_rows(tmp_path):
    url = old_index(tmp_path / "dedupe.db")
    index = DedupeIndex(url)
    await index.open()
    try:
        row = await index.get("00000000-0000-4000-8000-000000000001")
        assert (row["label"], row["confidence"], row["phash"]) == ("real", 0.25, 2**64 - 5)
        assert row["scorer"] is None
        await index.update(row["id"], scorer='{"name":"x"}')
        assert (await index.get(row["id"]))["scorer"] == '{"name":"x"}'
    finally:
        await index.close()


async def test_two_processes_opening_an_older_index_at_once_both_succeed(tmp_path):
    url = old_index(tmp_path / "dedupe.db")
    first, second = DedupeIndex(url), DedupeIndex(url)
    try:
        await asyncio.gather(first.open(), second.open())
        assert (await second.get("00000000-0000-4000-8000-000000000001"))["scorer"] is None
    finally:
        await first.close()
        await second.close()


async def test_set_score_records_the_scorer_in_the_index(make_settings):
    async with DatasetManager(make_settings()) as dm:
        image_id = (await dm.ingest(jpeg(1), {"source": "pexels", "label": "real"})).id
        await dm.set_score(image_id, 0.7, {"name": "local-model", "model": "vit", "version": "v2"})
        [sample] = await dm.samples()
    assert json.loads(sample.scorer) == {"name": "local-model", "model": "vit", "version": "v2"}
    assert sample.confidence == 0.7


@pytest.fixture
def core_settings(make_settings):
    return make_settings(exposr_core_endpoint=ENDPOINT)


async def store_images(settings, n: int) -> list[str]:
    async with DatasetManager(settings) as dm:
        return [(await dm.ingest(jpeg(seed), {"source": "upload", "label": "real"})).id for seed in range(n)]


async def delete_metadata_files(settings) -> None:
    async with DatasetManager(settings) as dm:
        for sample in await dm.samples():
            dm.storage.delete(sample.meta_key)


@respx.mock
async def test_a_run_with_nothing_new_skips_from_the_index_alone(core_settings):
    await store_images(core_settings, 3)
    route = respx.post(ENDPOINT).respond(json=CORE_3)
    assert (await run_labeler(core_settings))["scored"] == 3
    await delete_metadata_files(core_settings)  # a run that read them would count errors

    again = await run_labeler(core_settings)
    assert (again["skipped"], again["pending"], again["scored"], again["errors"]) == (3, 0, 0, {})
    assert route.call_count == 4  # three scores, then only the probe


@respx.mock
async def test_scores_from_before_the_column_are_read_once_and_copied_into_the_index(core_settings):
    ids = await store_images(core_settings, 3)
    route = respx.post(ENDPOINT).respond(json=CORE_3)
    await run_labeler(core_settings)
    async with DatasetManager(core_settings) as dm:
        for image_id in ids:  # as an index migrated from the first release: scores, no scorers
            await dm.index.update(image_id, scorer=None)

    upgraded = await run_labeler(core_settings)
    assert (upgraded["skipped"], upgraded["scored"], upgraded["errors"]) == (3, 0, {})
    assert route.call_count == 4  # the metadata files said core-3 scored them: no new requests
    async with DatasetManager(core_settings) as dm:
        assert {json.loads(s.scorer)["version"] for s in await dm.samples()} == {"core-3"}
    await delete_metadata_files(core_settings)
    assert (await run_labeler(core_settings))["skipped"] == 3  # from now on the index alone decides


@respx.mock
async def test_a_scorer_column_with_unknown_content_means_score_again(core_settings):
    [image_id] = await store_images(core_settings, 1)
    respx.post(ENDPOINT).respond(json=CORE_3)
    await run_labeler(core_settings)
    async with DatasetManager(core_settings) as dm:
        await dm.index.update(image_id, scorer="not json")

    assert (await run_labeler(core_settings))["scored"] == 1
