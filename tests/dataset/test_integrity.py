"""Failures injected at each ingest step, and `check` finding and repairing drift (both drivers)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from dataset.check import check_dataset
from dataset.manager import DatasetManager
from dataset.storage import StorageDriver, StorageError, make_storage
from tests.dataset.conftest import meta_in
from tests.images import encode, jpeg, scene


class FlakyStorage(StorageDriver):
    """The real driver, except that the Nth put (1-based) fails like a full disk; deletes can fail too."""

    def __init__(self, inner: StorageDriver, fail_put: int | None = None, fail_delete: bool = False):
        self.inner, self.fail_put, self.fail_delete, self.puts = inner, fail_put, fail_delete, 0

    def put(self, key, data):
        self.puts += 1
        if self.puts == self.fail_put:
            raise StorageError(f"cannot write {key}: No space left on device")
        self.inner.put(key, data)

    def delete(self, key):
        if self.fail_delete:
            raise StorageError(f"cannot delete {key}: connection reset")
        self.inner.delete(key)

    def get(self, key):
        return self.inner.get(key)

    def exists(self, key):
        return self.inner.exists(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def modified(self, key):
        return self.inner.modified(key)

    def describe(self):
        return self.inner.describe()


def files(storage) -> list[str]:
    return sorted(storage.list("images/")) + sorted(storage.list("meta/"))


@pytest.mark.parametrize("fail_put", [1, 2])  # 1: the image write, 2: the metadata write
async def test_storage_failure_is_an_error_outcome_and_leaves_nothing(driver_settings, fail_put):
    flaky = FlakyStorage(make_storage(driver_settings), fail_put=fail_put)
    async with DatasetManager(driver_settings, storage=flaky) as dm:
        out = await dm.ingest(jpeg(1), meta_in())
        assert (out.status, out.reason) == ("error", "storage_error")
        assert "No space left" in out.message
        assert files(flaky) == [] and (await dm.counts())["total"] == 0
        assert (await dm.ingest(jpeg(1), meta_in())).status == "stored"  # the next one goes on
        assert len(files(flaky)) == 2


async def test_unexpected_index_failure_removes_the_written_files(dm, monkeypatch):
    async def crash(row):
        raise RuntimeError("simulated crash in the index insert")

    monkeypatch.setattr(dm.index, "insert", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        await dm.ingest(jpeg(1), meta_in())
    assert files(dm.storage) == []
    monkeypatch.undo()
    assert (await dm.ingest(jpeg(1), meta_in())).status == "stored"


async def test_database_error_is_an_index_error_outcome(dm, monkeypatch):
    async def locked(row):
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(dm.index, "insert", locked)
    out = await dm.ingest(jpeg(1), meta_in())
    assert (out.status, out.reason) == ("error", "index_error")
    assert files(dm.storage) == []


async def test_crash_before_the_row_is_rebuilt_not_deleted(driver_settings, monkeypatch):
    # A crash after both writes, before the row, with cleanup impossible: the image and its
    # metadata are complete, so the metadata file gives the row back; nothing is deleted.
    flaky = FlakyStorage(make_storage(driver_settings), fail_delete=True)
    async with DatasetManager(driver_settings, storage=flaky) as dm:

        async def crash(row):
            raise RuntimeError("killed")

        monkeypatch.setattr(dm.index, "insert", crash)
        with pytest.raises(RuntimeError):
            await dm.ingest(jpeg(1), meta_in())
        monkeypatch.undo()
        flaky.fail_delete = False
        written = files(flaky)
        assert len(written) == 2 and (await dm.counts())["total"] == 0  # never a row without files

        # Unindexed, whatever their age; reporting changes nothing, the repair inserts the row.
        report = await dm.check()
        assert not report["ok"] and [u["image_key"] for u in report["unindexed"]] == written[:1]
        assert report["in_flight"] == report["deletion_candidates"] == [] and files(flaky) == written
        report = await dm.check(repair=True)
        assert report["repaired"]["rows_rebuilt"] == 1 and report["repaired"]["files_deleted"] == 0
        assert files(flaky) == written and (await dm.check())["ok"]
        assert (await dm.ingest(jpeg(1), meta_in())).status == "duplicate"


async def test_an_image_with_neither_metadata_nor_row_is_deleted_after_its_grace(driver_settings):
    async with DatasetManager(driver_settings) as dm:
        kept = await dm.ingest(jpeg(1), meta_in())
        stray = "images/2026/01/01/00000000-0000-4000-8000-000000000001.jpg"
        dm.storage.put(stray, jpeg(2))  # a crash between the image write and the metadata write
        report = await dm.check(repair=True)
        assert report["in_flight"] == [stray] and dm.storage.exists(stray)
        report = await check_dataset(dm, repair=False, grace=timedelta(0))
        assert report["orphan_images"] == [stray] and report["deletion_candidates"] == [stray]
        report = await check_dataset(dm, repair=True, grace=timedelta(0))
        assert report["repaired"]["files_deleted"] == 1 and not dm.storage.exists(stray)
        assert (await dm.check())["ok"] and await dm.read_image(kept.id) == jpeg(1)


async def test_force_includes_young_files_but_never_a_file_whose_row_has_arrived(dm, monkeypatch):
    stray = "images/2026/01/01/00000000-0000-4000-8000-000000000002.jpg"
    dm.storage.put(stray, jpeg(2))
    real_get = dm.index.get

    async def row_arrives_during_repair(image_id):  # the listing saw no row; by now there is one
        return {"id": image_id} if stray.endswith(f"{image_id}.jpg") else await real_get(image_id)

    monkeypatch.setattr(dm.index, "get", row_arrives_during_repair)
    report = await dm.check(repair=True, force=True)
    assert report["orphan_images"] == [stray]
    assert report["repaired"]["files_deleted"] == 0 and dm.storage.exists(stray)
    monkeypatch.undo()
    report = await dm.check(repair=True, force=True)
    assert report["repaired"]["files_deleted"] == 1 and not dm.storage.exists(stray)


async def test_a_row_whose_files_came_after_the_listing_is_not_dead(dm, monkeypatch):
    # check lists files, then reads rows: an ingest can write its files and insert its row between.
    real_list, late = dm.storage.list, []

    def list_then_ingest_lands(prefix):
        keys = list(real_list(prefix))
        if prefix == "meta/" and not late:
            late.append(asyncio.run_coroutine_threadsafe(dm.ingest(jpeg(2), meta_in()), loop).result())
        return iter(keys)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(dm.storage, "list", list_then_ingest_lands)
    report = await dm.check(repair=True)
    assert late[0].status == "stored" and report["dead_rows"] == [] and report["ok"]
    assert report["repaired"]["rows_deleted"] == 0 and await dm.get_metadata(late[0].id) is not None


async def test_dead_rows_are_found_and_repaired(dm):
    lost = await dm.ingest(jpeg(1), meta_in())
    kept = await dm.ingest(jpeg(2), meta_in())
    row = await dm.index.get(lost.id)
    dm.storage.delete(row["image_key"])
    report = await dm.check()
    assert [d["id"] for d in report["dead_rows"]] == [lost.id]
    assert report["dead_rows"][0]["missing"] == [row["image_key"]]
    report = await dm.check(repair=True)
    assert report["repaired"]["rows_deleted"] == 1
    assert [s.id for s in await dm.samples()] == [kept.id]
    assert not dm.storage.exists(row["meta_key"])
    # The removed image no longer counts as a duplicate or near-duplicate of anything.
    assert (await dm.ingest(jpeg(1), meta_in())).status == "stored"


async def test_metadata_disagreeing_with_the_index(dm):
    out = await dm.ingest(jpeg(1), meta_in("real"))
    row = await dm.index.get(out.id)
    doc = json.loads(dm.storage.get(row["meta_key"]))
    doc["label"] = "ai"  # e.g. set_label wrote the file, then the process died before the index
    dm.storage.put(row["meta_key"], json.dumps(doc).encode())
    report = await dm.check()
    assert report["mismatched"] == [{"id": out.id, "field": "label", "meta": "ai", "index": "real"}]
    await dm.check(repair=True)
    assert (await dm.index.get(out.id))["label"] == "ai" and (await dm.check())["ok"]


async def test_unreadable_metadata_is_reported_kept_aside_and_written_again_from_its_row(dm):
    # issue 21: --repair sets the file apart beside the index (nothing deleted) and writes the
    # record again from the index row, so the image can be labelled again
    out = await dm.ingest(jpeg(1), meta_in())
    row = await dm.index.get(out.id)
    dm.storage.put(row["meta_key"], b"{not json")
    report = await dm.check(repair=True)
    assert [u["id"] for u in report["unreadable_meta"]] == [out.id] and not report["ok"]
    [moved] = report["quarantined"]
    assert (Path(moved["to"]) / f"{out.id}.json").read_bytes() == b"{not json"
    rewritten = json.loads(dm.storage.get(row["meta_key"]))
    assert rewritten["id"] == out.id and rewritten["rebuilt_from_index"] is True
    assert (await dm.check())["ok"]


async def test_unreachable_bucket_is_a_storage_error_outcome(make_settings, s3_server, aws_env):
    settings = make_settings(
        storage_driver="s3", s3_bucket="bucket-that-does-not-exist", s3_endpoint_url=s3_server
    )
    async with DatasetManager(settings) as dm:
        out = await dm.ingest(jpeg(1), meta_in())
        assert (out.status, out.reason) == ("error", "storage_error")
        assert "bucket-that-does-not-exist" in out.message and "testing-secret" not in out.message
        assert (await dm.counts())["total"] == 0


async def test_a_row_inserted_after_the_last_row_was_deleted_is_still_seen(dm):
    # SQLite reuses the largest rowid once it is deleted; the pHash cache reads rows by "seq > last
    # seen", so a reused seq would hide the new image from near-duplicate checks for good.
    kept = await dm.ingest(jpeg(1, (200, 150)), meta_in())
    lost = await dm.ingest(jpeg(2), meta_in())
    assert (await dm.ingest(near_copy(1), meta_in())).id == kept.id  # the cache has seen `lost`
    dm.storage.delete((await dm.index.get(lost.id))["image_key"])
    assert (await dm.check(repair=True))["repaired"]["rows_deleted"] == 1
    fresh = await dm.ingest(jpeg(3, (200, 150)), meta_in())
    near = await dm.ingest(near_copy(3), meta_in())
    assert (near.status, near.id) == ("near_duplicate", fresh.id)


def near_copy(seed: int) -> bytes:
    return encode(scene(seed, (200, 150)).resize((150, 112)), "JPEG", quality=70)


async def test_temp_file_of_a_killed_write_is_removed_once_stale(make_settings):
    # kill -9 during a local put leaves its `.tmp-*` file: hidden from listings (never a visible
    # half-written file), and removed by check --repair once it is older than the grace period.
    async with DatasetManager(make_settings()) as dm:
        kept = await dm.ingest(jpeg(1), meta_in())
        temp = dm.storage.root / "images/2026/01/01/.tmp-k1ll3d"
        temp.parent.mkdir(parents=True)
        temp.write_bytes(b"half an image")
        report = await dm.check(repair=True)
        assert report["ok"] and report["stale_temp_files"] == [] and temp.exists()  # may be in flight
        report = await check_dataset(dm, repair=False, grace=timedelta(0))
        assert not report["ok"] and report["stale_temp_files"] == ["images/2026/01/01/.tmp-k1ll3d"]
        report = await check_dataset(dm, repair=True, grace=timedelta(0))
        assert report["repaired"]["temp_files_deleted"] == 1 and not temp.exists()
        assert (await dm.check())["ok"] and await dm.read_image(kept.id) == jpeg(1)
