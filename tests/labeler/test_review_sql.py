"""The review queue ranked, filtered, paged and counted by the database gives exactly the pages the
ranking in Python gave (same items, same order, same totals, same facets), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import uuid

import pytest

from dataset.manager import DatasetManager
from dataset.storage import image_key, meta_key
from labeler.review import ReviewFilter, fill_person_labels, review_queue, review_queue_in_python

SCORES = (None, 0.0, 0.05, 0.15, 0.2, 0.3, 0.45, 0.5, 0.55, 0.7, 0.8, 0.85, 0.95, 1.0, 0.25, 0.75)
TIMES = ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00.5Z", "2026-11-01T10:00:01Z", "2026-11-02T09:59:59Z")
SOURCES = ("pexels", "civitai", "upload")
GENERATORS = (None, "", "camera", "SDXL 1.0")


def rows_and_files(n: int, seed: int = 26) -> tuple[list[dict], list[tuple[str, bytes]]]:
    """``n`` rows with many ties (score, time) and some person labels; a third of the rows say
    nothing of whose label they hold (``person_label`` NULL, as rows indexed before the column)."""
    rng = random.Random(seed)
    rows, files = [], []
    for i in range(n):
        image_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        label = rng.choice(("unlabeled", "unlabeled", "real", "ai"))
        score = rng.choice(SCORES)
        when = rng.choice(TIMES)
        person = label != "unlabeled" and rng.random() < 0.3
        meta = {
            "id": image_id,
            "source": rng.choice(SOURCES),
            "label": label,
            "confidence": score,
            "timestamp": when,
            "generator": rng.choice(GENERATORS),
            "attribution": {"platform": "test", "n": i},
        }
        if person:
            meta["label_source"] = {"kind": "person", "by": "test"}
        elif label != "unlabeled" and rng.random() < 0.5:
            meta["label_source"] = {"kind": "scraper"}
        sha = hashlib.sha256(image_id.encode()).hexdigest()
        stored = datetime_of(when)
        row = {
            "id": image_id,
            "sha256": sha,
            "phash": rng.getrandbits(63),
            "label": label,
            "confidence": score,
            "source": meta["source"],
            "image_key": image_key(image_id, "jpg", stored),
            "meta_key": meta_key(image_id, stored),
            "format": "JPEG",
            "width": 64,
            "height": 48,
            "created_at": when,
            "generator": meta["generator"],
        }
        if i % 3:
            row["person_label"] = int(person)
        rows.append(row)
        files.append((row["meta_key"], json.dumps(meta).encode()))
    return rows, files


def datetime_of(when: str):
    from datetime import datetime

    return datetime.fromisoformat(when.replace("Z", "+00:00"))


FILTERS = (
    ReviewFilter(),
    ReviewFilter(label="unlabeled"),
    ReviewFilter(label="real"),
    ReviewFilter(source="civitai"),
    ReviewFilter(generator="camera"),
    ReviewFilter(min_score=0.2, max_score=0.8),
    ReviewFilter(min_score=0.5),
    ReviewFilter(max_score=0.15, source="pexels"),
)


@pytest.fixture
async def seeded(make_settings):
    settings = make_settings(review_real_max_score=0.8, review_ai_min_score=0.2)
    rows, files = rows_and_files(300)
    async with DatasetManager(settings) as dataset:
        await asyncio.to_thread(dataset.storage.put_many, files)
        for row in rows:  # one by one: rows without person_label leave it NULL
            await dataset.index.insert(row)
        yield settings, dataset


async def test_the_database_pages_match_the_ranking_in_python(seeded):
    settings, dataset = seeded
    pairs = 0
    for kind, sort, filters in itertools.product(("all", "disagreement", "unlabeled"), SORTS, FILTERS):
        for limit, offset in ((50, 0), (50, 37), (500, 0), (20, 140)):
            query = dict(kind=kind, sort=sort, filters=filters, limit=limit, offset=offset)
            old = await review_queue_in_python(dataset, settings, **query)
            new = await review_queue(dataset, settings, **query)
            assert new == old, (kind, sort, filters, limit, offset)
            pairs += 1
    assert pairs == 3 * 3 * len(FILTERS) * 4
    everything = await review_queue(dataset, settings, limit=500)
    assert everything["total"] > 100 and {i["reason"] for i in everything["items"]} == {
        "disagreement",
        "unlabeled",
    }


SORTS = ("disagreement", "uncertainty", "newest")


async def test_unknown_person_labels_are_read_once_and_a_new_label_is_kept(seeded):
    settings, dataset = seeded
    assert await fill_person_labels(dataset, settings) > 0
    assert await fill_person_labels(dataset, settings) == 0  # filled in: no file is read again
    first = (await review_queue(dataset, settings, kind="disagreement", limit=1))["items"][0]
    before = (await review_queue(dataset, settings, kind="disagreement"))["total"]
    await dataset.set_label(first["id"], first["label"], {"kind": "person", "by": "test"})
    after = await review_queue(dataset, settings, kind="disagreement")
    assert after["total"] == before - 1 and first["id"] not in {i["id"] for i in after["items"]}
    assert after == await review_queue_in_python(dataset, settings, kind="disagreement")
