"""A fetcher's or a person's label survives every path that writes metadata.

Paths: ingest of an exact or near duplicate, set_score, the labeler job, check --repair.
"""

from __future__ import annotations

import pytest
import respx

from dataset.manager import DatasetManager
from labeler.review import record_person_label
from labeler.scoring import run_labeler
from tests.images import encode, jpeg, scene

ENDPOINT = "https://core.test/api/v1/analyze"


@pytest.fixture(params=["fetcher", "person"])
async def labelled(request, make_settings):
    """(settings, image id, expected label, expected label_source) for a fetcher's or a person's label."""
    settings = make_settings(exposr_core_endpoint=ENDPOINT)
    async with DatasetManager(settings) as dm:
        if request.param == "fetcher":
            outcome = await dm.ingest(jpeg(1), {"source": "pexels", "label": "real"})
            return settings, outcome.id, "real", None
        outcome = await dm.ingest(jpeg(1), {"source": "upload", "label": "unlabeled"})
        doc = await record_person_label(dm, outcome.id, "ai", "ann")
        return settings, outcome.id, "ai", doc["label_source"]


async def assert_label_kept(settings, image_id: str, label: str, label_source: dict | None) -> dict:
    async with DatasetManager(settings) as dm:
        meta = await dm.get_metadata(image_id)
        assert meta["label"] == label
        assert meta.get("label_source") == label_source
        assert [s.label for s in await dm.samples(labels=("real", "ai", "unlabeled"))] == [label]
    return meta


async def test_ingest_of_a_duplicate_keeps_the_label(labelled):
    settings, image_id, label, source = labelled
    other = "ai" if label == "real" else "real"
    async with DatasetManager(settings) as dm:
        exact = await dm.ingest(jpeg(1), {"source": "civitai", "label": other})
        near = await dm.ingest(encode(scene(1), "JPEG", quality=70), {"source": "civitai", "label": other})
    assert (exact.status, exact.id) == ("duplicate", image_id)
    assert (near.status, near.id) == ("near_duplicate", image_id)
    await assert_label_kept(settings, image_id, label, source)


async def test_set_score_keeps_the_label(labelled):
    settings, image_id, label, source = labelled
    disagreeing = 0.99 if label == "real" else 0.01
    async with DatasetManager(settings) as dm:
        await dm.set_score(image_id, disagreeing, {"name": "exposr-core", "version": "x"})
    meta = await assert_label_kept(settings, image_id, label, source)
    assert meta["confidence"] == disagreeing


@respx.mock
async def test_the_labeler_job_keeps_the_label(labelled):
    settings, image_id, label, source = labelled
    respx.post(ENDPOINT).respond(json={"ai_probability": 0.5})
    report = await run_labeler(settings)
    assert report["scored"] == 1
    meta = await assert_label_kept(settings, image_id, label, source)
    assert meta["confidence"] == 0.5


async def test_check_repair_keeps_the_label(labelled):
    settings, image_id, label, source = labelled
    async with DatasetManager(settings) as dm:
        await dm.index.update(image_id, label="unlabeled")  # index drifted from the metadata file
        dm.storage.put("meta/2025/01/01/00000000-0000-4000-8000-000000000000.json", b"{}")  # an orphan
        report = await dm.check(repair=True, force=True)  # force: the orphan was written just now
    assert report["repaired"]["rows_updated"] == 1 and report["repaired"]["files_deleted"] == 1
    await assert_label_kept(settings, image_id, label, source)  # the file's label won, in the index too
