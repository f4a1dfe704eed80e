"""DatasetManager against both storage drivers and a real SQLite file."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from config.clock import utc_now
from dataset.manager import DatasetManager, IngestOutcome, Sample, UnknownImage, run_check
from tests.dataset.conftest import meta_in
from tests.images import encode, jpeg, png, scene


async def test_stored_image_has_files_metadata_and_row(dm):
    data = jpeg(1)
    out = await dm.ingest(data, meta_in("real", "pexels", photographer_note="kept"))
    assert out.status == "stored" and out.reason is None
    sample = (await dm.samples())[0]
    assert sample.id == out.id and sample.label == "real" and sample.source == "pexels"
    assert sample.image_key.startswith("images/") and sample.image_key.endswith(f"/{out.id}.jpg")
    assert sample.meta_key.endswith(f"/{out.id}.json") and (sample.width, sample.height) == (96, 72)
    assert await dm.read_image(out.id) == data
    meta = await dm.get_metadata(out.id)
    seed_fields = {"id", "source", "label", "confidence", "timestamp", "hash", "attribution", "api_data"}
    assert seed_fields <= set(meta)
    assert meta["id"] == out.id and meta["hash"] == sample.sha256 and meta["confidence"] is None
    assert meta["attribution"]["platform"] == "Test" and meta["api_data"] == {"photo_id": 1}
    assert meta["photographer_note"] == "kept" and meta["timestamp"].endswith("Z")
    assert json.loads(dm.storage.get(sample.meta_key)) == meta


async def test_exact_and_near_duplicates(dm):
    first = await dm.ingest(jpeg(1, (200, 150)), meta_in())
    again = await dm.ingest(jpeg(1, (200, 150)), meta_in("ai", "other"))
    assert (again.status, again.id) == ("duplicate", first.id)
    smaller = encode(scene(1, (200, 150)).resize((150, 112)), "JPEG", quality=70)
    near = await dm.ingest(smaller, meta_in())
    assert (near.status, near.id) == ("near_duplicate", first.id)
    assert 0 <= near.distance <= dm.settings.near_dup_max_distance
    distinct = await dm.ingest(jpeg(2, (200, 150)), meta_in())
    assert distinct.status == "stored"
    assert (await dm.counts())["total"] == 2


async def test_near_duplicate_detection_can_be_turned_off(make_settings):
    async with DatasetManager(make_settings(near_dup_max_distance=0)) as dm:
        await dm.ingest(jpeg(1), meta_in())
        assert (await dm.ingest(jpeg(1, quality=60), meta_in())).status == "stored"


@pytest.mark.parametrize("label", ["fake", "", None, "REAL"])
async def test_bad_label_is_a_rejection(dm, label):
    out = await dm.ingest(jpeg(1), {"source": "t", "label": label})
    assert (out.status, out.reason) == ("rejected", "bad_label")
    assert "real, ai, unlabeled" in out.message


async def test_bad_image_is_a_rejection_with_reason(dm):
    out = await dm.ingest(jpeg(1)[:300], meta_in())
    assert (out.status, out.reason) == ("rejected", "truncated")
    out = await dm.ingest(jpeg(1, (10, 10)), meta_in())
    assert (out.status, out.reason) == ("rejected", "too_small")
    assert (await dm.counts())["total"] == 0


async def test_counts_by_label_and_source(dm):
    for i, (label, source) in enumerate(
        [
            ("real", "pexels"),
            ("real", "unsplash"),
            ("ai", "civitai"),
            ("unlabeled", "upload"),
            ("real", "pexels"),
        ]
    ):
        assert (await dm.ingest(jpeg(10 + i), meta_in(label, source))).status == "stored"
    counts = await dm.counts()
    assert {k: counts[k] for k in ("total", "real", "ai_generated", "unlabeled")} == {
        "total": 5,
        "real": 3,
        "ai_generated": 1,
        "unlabeled": 1,
    }
    assert counts["by_source"]["pexels"] == {"total": 2, "real": 2, "ai_generated": 0, "unlabeled": 0}
    assert counts["by_source"]["upload"]["unlabeled"] == 1
    assert {s.label for s in await dm.samples()} == {"real", "ai"}
    assert [s.label for s in await dm.samples(("unlabeled",))] == ["unlabeled"]


async def test_set_label_records_who_and_updates_index(dm):
    out = await dm.ingest(jpeg(1), meta_in("unlabeled", "upload"))
    meta = await dm.set_label(out.id, "ai", {"by": "reviewer@example.org"})
    assert meta["label"] == "ai" and meta["label_source"]["by"] == "reviewer@example.org"
    assert meta["label_source"]["at"].endswith("Z")
    assert (await dm.get_metadata(out.id)) == meta
    assert [s.id for s in await dm.samples(("ai",))] == [out.id]
    with pytest.raises(ValueError, match="not one of"):
        await dm.set_label(out.id, "maybe", {"by": "x"})


async def test_set_score_never_changes_the_label(dm):
    out = await dm.ingest(jpeg(1), meta_in("real", "pexels"))
    meta = await dm.set_score(out.id, 0.93, {"by": "exposr-core", "model": "v3"})
    assert meta["label"] == "real" and meta["confidence"] == 0.93 and meta["scored_by"]["model"] == "v3"
    assert (await dm.samples())[0].label == "real"
    assert (await dm.index.get(out.id))["confidence"] == 0.93
    with pytest.raises(ValueError):
        await dm.set_score(out.id, 1.5, {"by": "x"})


async def test_unknown_id(dm):
    assert await dm.get_metadata("no-such-id") is None
    with pytest.raises(UnknownImage):
        await dm.read_image("no-such-id")
    with pytest.raises(KeyError):
        await dm.set_label("no-such-id", "real", {"by": "x"})


async def test_concurrent_identical_ingests_store_one(dm):
    data = png(7, (120, 90))
    outs = await asyncio.gather(*[dm.ingest(data, meta_in()) for _ in range(6)])
    stored = [o for o in outs if o.status == "stored"]
    assert len(stored) == 1
    assert all(o.status == "duplicate" and o.id == stored[0].id for o in outs if o is not stored[0])
    assert len(list(dm.storage.list("images/"))) == 1 and len(list(dm.storage.list("meta/"))) == 1


async def test_the_unique_constraint_decides_a_lost_race(dm, monkeypatch):
    # Widen the race window: the pre-check never sees the winner, only the UNIQUE insert does.
    async def never_seen(shas):
        return {}

    monkeypatch.setattr(dm.index, "find_shas", never_seen)
    monkeypatch.setattr(dm.settings, "near_dup_max_distance", 0)
    first = await dm.ingest(jpeg(3), meta_in())
    second = await dm.ingest(jpeg(3), meta_in())
    assert first.status == "stored" and (second.status, second.id) == ("duplicate", first.id)
    assert len(list(dm.storage.list("images/"))) == 1 and len(list(dm.storage.list("meta/"))) == 1


async def test_identical_image_arriving_between_the_checks_is_a_duplicate(dm, monkeypatch):
    first = await dm.ingest(jpeg(4), meta_in())
    real_find_shas, calls = dm.index.find_shas, []

    async def first_check_misses(shas):  # the winner's row lands just after the exact check
        calls.append(shas)
        return {} if len(calls) == 1 else await real_find_shas(shas)

    monkeypatch.setattr(dm.index, "find_shas", first_check_misses)
    out = await dm.ingest(jpeg(4), meta_in())
    assert (out.status, out.id) == ("duplicate", first.id)


async def test_two_managers_on_one_database_store_one(driver_settings):
    data = jpeg(8, (120, 90))
    async with DatasetManager(driver_settings) as a, DatasetManager(driver_settings) as b:
        outs = await asyncio.gather(*[m.ingest(data, meta_in()) for m in (a, b, a, b)])
        assert sorted(o.status for o in outs) == ["duplicate", "duplicate", "duplicate", "stored"]
        assert len({o.id for o in outs}) == 1
        # b sees a's rows for near-duplicates too (the in-memory hashes catch up from the DB).
        near = await b.ingest(encode(scene(8, (120, 90)), "JPEG", quality=60), meta_in())
        assert near.status == "near_duplicate"
        assert (await a.counts())["total"] == 1
        assert len(list(a.storage.list("images/"))) == 1


async def test_run_check_entry_point(settings):
    async with DatasetManager(settings) as dm:
        await dm.ingest(jpeg(1), meta_in())
    report = await run_check(settings, repair=False)
    assert report["ok"] and report["rows"] == 1 and report["image_files"] == 1


async def test_two_near_duplicates_racing_store_one(dm, monkeypatch):
    # Both near checks run before either row is inserted: only the re-check after the insert can
    # tell, and the later row must withdraw itself with its files.
    checked, real_check, real_insert = asyncio.Event(), dm.index.near_many, dm.index.insert
    calls = []

    async def counting_check(phashes, max_distance):
        result = await real_check(phashes, max_distance)
        calls.append(phashes)
        if len(calls) == 2:
            checked.set()
        return result

    async def insert_after_both_checks(row):
        await checked.wait()
        return await real_insert(row)

    monkeypatch.setattr(dm.index, "near_many", counting_check)
    monkeypatch.setattr(dm.index, "insert", insert_after_both_checks)
    big, small = jpeg(5, (200, 150)), encode(scene(5, (200, 150)).resize((150, 112)), "JPEG", quality=70)
    outs = await asyncio.gather(dm.ingest(big, meta_in()), dm.ingest(small, meta_in()))
    assert sorted(o.status for o in outs) == ["near_duplicate", "stored"]
    stored = next(o for o in outs if o.status == "stored")
    assert next(o for o in outs if o.status == "near_duplicate").id == stored.id
    assert [s.id for s in await dm.samples()] == [stored.id]
    assert len(list(dm.storage.list("images/"))) == 1 and len(list(dm.storage.list("meta/"))) == 1
    assert (await dm.check())["ok"]


async def test_near_duplicates_from_two_managers_at_once_store_one(driver_settings):
    # Two managers = two pHash caches, as two processes have; neither sees the other's row in time.
    big, small = jpeg(6, (200, 150)), encode(scene(6, (200, 150)).resize((150, 112)), "JPEG", quality=70)
    async with DatasetManager(driver_settings) as a, DatasetManager(driver_settings) as b:
        outs = await asyncio.gather(a.ingest(big, meta_in()), b.ingest(small, meta_in()))
        assert sorted(o.status for o in outs) == ["near_duplicate", "stored"]
        assert (await a.counts())["total"] == 1 and len(list(a.storage.list("images/"))) == 1


async def test_samples_read_a_page_at_a_time_equal_the_rows(dm):
    # samples() builds Samples page by page (keyset on seq) instead of from every row dict at once;
    # the result must be what the rows say, in seq order, for the labels asked for.
    for i, label in enumerate(["real", "ai", "unlabeled", "ai", "real", "real", "ai"]):
        assert (await dm.ingest(jpeg(300 + i), meta_in(label=label, generator="sd15"))).status == "stored"
    await dm.index.update((await dm.index.all_rows())[1]["id"], has_exif=1, split="eval")
    expected = [_sample(r) for r in await dm.index.all_rows(("real", "ai"))]
    assert await dm.samples() == expected and len(expected) == 6
    pages = [page async for page in dm.index.column_pages(("id", "phash"), ("ai",), page=2)]
    assert [len(p) for p in pages] == [2, 1]
    assert [row for page in pages for row in page] == [(s.id, s.phash) for s in expected if s.label == "ai"]
    assert all(0 <= phash < 2**64 for page in pages for _id, phash in page)


def _sample(row: dict) -> Sample:
    """The reference conversion: every Sample field from one row dict."""
    values = {name: row.get(name) for name in Sample.__dataclass_fields__}
    values["has_exif"] = None if values["has_exif"] is None else bool(values["has_exif"])
    return Sample(**values)


@pytest.mark.parametrize(
    "doc",
    [
        {"id": "a", "nested": [1, {"b": None, "c": True, "d": 0.93}], "empty": [], "none": {}},
        {"text": 'ünï 🎨 "quoted" \\ \n\t\u0001 \u2028', 7: "an int key", "big": 2**63 + 5},
        {"beyond 64 bits": 2**70, "negative": -(2**65)},  # orjson refuses these: json writes them
        {"numpy": [np.float64(0.25), np.int64(3)], "a dataclass": IngestOutcome("stored", id="x")},
    ],
)
def test_metadata_files_are_written_as_jsons_indented_text(doc):
    # json_bytes uses orjson for speed; the files must read exactly as json.dumps(indent=2) wrote them
    import datetime
    import uuid

    from dataset.manager import json_bytes

    doc = {
        **doc,
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "uuid": uuid.UUID(int=7),
    }
    assert json_bytes(doc) == json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode("utf-8")


@pytest.mark.parametrize("given", ["nan", float("inf"), -float("inf"), "not a number"])
async def test_a_confidence_that_is_no_number_is_stored_as_none(dm, given):
    out = await dm.ingest(jpeg(2), meta_in("real", confidence=given))
    row = await dm.index.get(out.id)
    assert row["confidence"] is None
    assert json.loads(dm.storage.get(row["meta_key"]))["confidence"] is None


async def test_a_stored_images_metadata_file_is_indented_json(dm):
    out = await dm.ingest(jpeg(1), meta_in("real", attribution={"photographer": "Zoë"}))
    row = await dm.index.get(out.id)
    text = dm.storage.get(row["meta_key"]).decode("utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) and "Zoë" in text


async def test_uploads_catch_up_once_a_second_and_still_yield_to_a_near_copy_stored_elsewhere(
    driver_settings, monkeypatch
):
    # One image at a time (an upload) does not ask the index for other writers' rows per image: a
    # look less than UPLOAD_CATCH_UP_SECONDS old is used. A near copy another process stored since
    # that look is then found by the re-check after the insert: same answer, files withdrawn.
    async with DatasetManager(driver_settings) as here, DatasetManager(driver_settings) as elsewhere:
        looks, real_pull = [], here.index._pull_into

        async def counted(cache):
            looks.append(1)
            await real_pull(cache)

        monkeypatch.setattr(here.index, "_pull_into", counted)
        monkeypatch.setattr("dataset.manager.UPLOAD_CATCH_UP_SECONDS", 60.0)  # the whole test
        assert (await here.ingest(jpeg(11, (200, 150)), meta_in())).status == "stored"
        original = await elsewhere.ingest(jpeg(12, (200, 150)), meta_in())
        smaller = encode(scene(12, (200, 150)).resize((150, 112)), "JPEG", quality=70)
        near = await here.ingest(smaller, meta_in())
        assert (near.status, near.id) == ("near_duplicate", original.id)  # through the re-check
        assert (await here.ingest(jpeg(13, (200, 150)), meta_in())).status == "stored"
        assert looks == []  # three uploads: each used the look made when the index was opened
        assert (await here.counts())["total"] == 3
        monkeypatch.setattr("dataset.manager.UPLOAD_CATCH_UP_SECONDS", 0.0)
        await here.ingest(jpeg(14, (200, 150)), meta_in())
        assert looks == [1]  # an old look is renewed
    report = await run_check(driver_settings, repair=False)
    assert report["ok"] and report["rows"] == 4 and report["image_files"] == 4, report


async def test_a_copy_of_an_indexed_image_left_by_a_crash_is_removed_by_repair(dm):
    # A crash between a batch's files and its rows, then the same image imported again: the first
    # pair is a byte-identical copy of an indexed image. Rebuilding its row would index the image
    # twice; repair removes the copy's files instead, and the indexed image stays.
    from dataset.storage import image_key, meta_key

    kept = await dm.ingest(jpeg(21, (200, 150)), meta_in())
    row = await dm.index.get(kept.id)
    copy_id = "00000000-0000-4000-8000-000000000021"
    now = utc_now()
    doc = {**json.loads(dm.storage.get(row["meta_key"])), "id": copy_id}
    copy_keys = (image_key(copy_id, "jpg", now), meta_key(copy_id, now))
    dm.storage.put(copy_keys[0], dm.storage.get(row["image_key"]))
    dm.storage.put(copy_keys[1], json.dumps(doc).encode())

    young = await dm.check()  # just written: maybe an ingest that is about to remove its own files
    assert young["duplicate_copies"] == [] and set(copy_keys) <= set(young["in_flight"])
    found = await dm.check(force=True)
    assert [c["copy_of"] for c in found["duplicate_copies"]] == [kept.id] and found["unindexed"] == []
    assert set(copy_keys) <= set(found["deletion_candidates"]) and not found["ok"]
    await dm.check(repair=True, force=True)
    after = await dm.check()
    assert after["ok"] and after["rows"] == 1 and after["image_files"] == 1, after
    assert not any(dm.storage.exists(key) for key in copy_keys)
    assert dm.storage.exists(row["image_key"]) and dm.storage.exists(row["meta_key"])


@pytest.mark.sqlite_only  # a damaged SQLite file is what check --rebuild-index moves aside
async def test_an_index_rebuilt_by_check_does_not_trust_the_old_near_file(make_settings, monkeypatch):
    # check --rebuild-index moves a damaged SQLite index aside and builds a new one from the metadata
    # files: its rows are numbered afresh, so the near-duplicate file beside it (written for the old
    # database) must be rebuilt -- counted -- and near copies of the rebuilt rows still be found.
    monkeypatch.setattr("dataset.nearindex.TAIL_MERGE_ROWS", 4)  # a file from 4 rows on
    settings = make_settings()
    async with DatasetManager(settings) as dm:
        stored = [await dm.ingest(jpeg(40 + i, (200, 150)), meta_in()) for i in range(6)]
        assert all(o.status == "stored" for o in stored)
        await dm.index.near_written()
    near_file = settings.dataset_dir / "dedupe.db.near"
    assert near_file.exists()
    db = settings.dataset_dir / "dedupe.db"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"not a database" * 100)
    report = await run_check(settings, rebuild_index=True)
    assert report["repaired"]["rows_rebuilt"] == 6 and report["index_moved_aside"]
    async with DatasetManager(settings) as dm:
        state = dm.index.near_state
        assert state.rebuilds == 1 and "another database" in state.reason
        smaller = encode(scene(43, (200, 150)).resize((150, 112)), "JPEG", quality=70)
        near = await dm.ingest(smaller, meta_in())
        assert (near.status, near.id) == ("near_duplicate", stored[3].id)
