"""The batched ingest (DatasetManager.ingest_stream): the same outcomes as one image at a time, the same
crash guarantees, with the group commit and one transaction per batch (both drivers, both databases)."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from dataset.manager import DatasetManager, IngestOutcome
from dataset.storage import LocalStorage, StorageError, make_storage
from tests.dataset.conftest import meta_in
from tests.dataset.test_integrity import FlakyStorage, files
from tests.images import encode, jpeg, scene

ROOT = Path(__file__).resolve().parents[2]


def near_copy(seed: int) -> bytes:
    """The same scene smaller and re-encoded: a few bits of pHash away, another SHA-256."""
    return encode(scene(seed, (96, 72)).resize((80, 60)), "JPEG", quality=70)


def truncated(seed: int) -> bytes:
    data = jpeg(seed)
    return data[: len(data) // 2]


def mixed_batch() -> list[tuple[bytes, dict]]:
    """Every kind of outcome, with repeats inside the batch and of images stored before it."""
    return [
        (jpeg(1), meta_in()),  # a duplicate of an image stored before the batch
        (near_copy(2), meta_in()),  # a near duplicate of one stored before
        (jpeg(10), meta_in()),  # new
        (jpeg(11), meta_in(label="maybe")),  # a bad label
        (truncated(12), meta_in()),  # a truncated file
        (jpeg(13), meta_in()),  # new
        (jpeg(10), meta_in()),  # the same as the third, inside the batch
        (near_copy(13), meta_in()),  # a near copy of the sixth, inside the batch
        (jpeg(14), meta_in(label="ai")),  # new
    ]


async def ingest_all(dm: DatasetManager, items: list[tuple[bytes, dict]]) -> list[IngestOutcome]:
    """A list through the public door: what has arrived is one batch (the list, up to INGEST_BATCH)."""

    async def fed() -> AsyncIterator[tuple[bytes, dict]]:
        for item in items:
            yield item

    return [outcome async for outcome in dm.ingest_stream(fed())]


async def _before(dm: DatasetManager) -> None:
    assert (await dm.ingest(jpeg(1), meta_in())).status == "stored"
    assert (await dm.ingest(jpeg(2), meta_in())).status == "stored"


async def test_a_batch_gets_the_outcomes_of_one_image_at_a_time(make_settings, tmp_path, db_backend, request):
    other_database = (
        None if db_backend == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    )
    one = make_settings(dataset_dir=tmp_path / "one")
    many = make_settings(dataset_dir=tmp_path / "many", database_url=other_database)
    async with DatasetManager(one) as a, DatasetManager(many) as b:
        await _before(a)
        await _before(b)
        singly = [await a.ingest(data, meta) for data, meta in mixed_batch()]
        batched = await ingest_all(b, mixed_batch())
    shape = [(o.status, o.reason, o.distance) for o in batched]
    assert shape == [(o.status, o.reason, o.distance) for o in singly]
    assert [o.status for o in batched] == [
        "duplicate",
        "near_duplicate",
        "stored",
        "rejected",
        "rejected",
        "stored",
        "duplicate",
        "near_duplicate",
        "stored",
    ]
    assert (batched[3].reason, batched[4].reason) == ("bad_label", "truncated")
    assert batched[6].id == batched[2].id and batched[7].id == batched[5].id  # named after the batch's own


async def test_a_batch_stores_files_and_rows_that_check_finds_consistent(dm):
    await _before(dm)
    outs = await ingest_all(dm, mixed_batch())
    stored = [o.id for o in outs if o.status == "stored"]
    assert len(stored) == 3 and (await dm.counts())["total"] == 5
    assert len(files(dm.storage)) == 10  # an image and a metadata file for each row, nothing more
    for out, (data, meta) in zip(outs, mixed_batch(), strict=True):
        if out.status == "stored":
            assert await dm.read_image(out.id) == data
            doc = await dm.get_metadata(out.id)
            assert (doc["id"], doc["label"], doc["source"]) == (out.id, meta["label"], "test")
    assert (await dm.check())["ok"]


async def test_a_failed_batch_write_falls_back_to_one_image_at_a_time(driver_settings):
    # The third put of the batch fails (the second image's file): which image it was is only known
    # one at a time, so the batch is undone and each image gets its own outcome; a full disk fails
    # the image whose write fails, and the others are stored.
    flaky = FlakyStorage(make_storage(driver_settings), fail_put=3)
    async with DatasetManager(driver_settings, storage=flaky) as dm:
        batch = [(jpeg(20 + i), meta_in()) for i in range(4)]
        outs = await ingest_all(dm, batch)
        assert [o.status for o in outs] == ["stored"] * 4  # the disk had room again
        assert (await dm.counts())["total"] == 4 and len(files(flaky)) == 8  # the first try's are gone
        assert (await dm.check())["ok"]


async def test_a_full_disk_during_the_fallback_fails_only_that_image(driver_settings):
    # Put 3 fails in the batch; one at a time, puts 4-5 store image 1 and put 6 (image 2's) fails.
    flaky = FlakyStorage(make_storage(driver_settings))
    real_put = flaky.put
    failing = {3, 6}

    def put(key, data):
        if flaky.puts + 1 in failing:
            flaky.puts += 1
            raise StorageError(f"cannot write {key}: No space left on device")
        real_put(key, data)

    flaky.put = put  # type: ignore[method-assign]
    async with DatasetManager(driver_settings, storage=flaky) as dm:
        outs = await ingest_all(dm, [(jpeg(30 + i), meta_in()) for i in range(4)])
        assert [(o.status, o.reason) for o in outs] == [
            ("stored", None),
            ("error", "storage_error"),
            ("stored", None),
            ("stored", None),
        ]
        assert "No space left" in outs[1].message
        assert (await dm.counts())["total"] == 3 and len(files(flaky)) == 6
        assert (await dm.check())["ok"]


async def test_a_crash_before_the_rows_leaves_no_row_without_files(dm, monkeypatch):
    async def crash(rows):
        raise RuntimeError("killed between the files and the rows")

    monkeypatch.setattr(dm.index, "insert_many", crash)
    outs = await ingest_all(dm, [(jpeg(40 + i), meta_in()) for i in range(3)])
    assert [(o.status, o.reason) for o in outs] == [("error", "RuntimeError")] * 3  # the stream goes on
    assert "killed" in (outs[0].message or "")
    assert files(dm.storage) == [] and (await dm.counts())["total"] == 0
    monkeypatch.undo()
    outs = await ingest_all(dm, [(jpeg(40 + i), meta_in()) for i in range(3)])
    assert [o.status for o in outs] == ["stored"] * 3


async def test_a_lost_exact_duplicate_race_refuses_that_image_only(dm, monkeypatch):
    # Another writer stores image 1 after the batch's exact check: the batch's insert fails on the
    # UNIQUE hash, and the rows go in one by one so that only the duplicate is refused.
    winner = await dm.ingest(jpeg(51), meta_in())

    async def nothing_known(shas):
        return {}

    monkeypatch.setattr(dm.index, "find_shas", nothing_known)
    monkeypatch.setattr(dm.settings, "near_dup_max_distance", 0)
    outs = await ingest_all(dm, [(jpeg(50), meta_in()), (jpeg(51), meta_in()), (jpeg(52), meta_in())])
    assert [(o.status, o.id == winner.id) for o in outs] == [
        ("stored", False),
        ("duplicate", True),
        ("stored", False),
    ]
    assert (await dm.counts())["total"] == 3 and len(files(dm.storage)) == 6
    assert (await dm.check())["ok"]


async def test_an_identical_image_stored_between_the_checks_is_a_duplicate(dm, monkeypatch):
    # Another source's batch stores image 71 after this batch's exact check and before its near
    # check (seen under load in the three-source scrape): it is a duplicate, not a near duplicate.
    real_find_shas, calls, landed = dm.index.find_shas, [], []

    async def the_other_batch_lands_after_the_exact_check(shas):
        calls.append(list(shas))
        known = await real_find_shas(shas)
        if len(calls) == 1:  # (the other ingest's own exact check comes through here as the 2nd call)
            landed.append(await dm.ingest(jpeg(71), meta_in()))
        return known

    monkeypatch.setattr(dm.index, "find_shas", the_other_batch_lands_after_the_exact_check)
    outs = await ingest_all(dm, [(jpeg(70), meta_in()), (jpeg(71), meta_in())])
    winner = landed[0]
    assert winner.status == "stored"
    assert [(o.status, o.id == winner.id) for o in outs] == [("stored", False), ("duplicate", True)]
    assert (await dm.counts())["total"] == 2


async def test_a_near_duplicate_stored_elsewhere_during_the_batch_wins(driver_settings, monkeypatch):
    # Another manager (another process) stores a near copy of image 2 after this batch caught up
    # with the index: the re-check after the batch's rows withdraws the later one, rows then files.
    async with DatasetManager(driver_settings) as a, DatasetManager(driver_settings) as b:
        real_insert, elsewhere = a.index.insert_many, []

        async def insert_after_the_other_writer(rows):
            elsewhere.append(await b.ingest(near_copy(61), meta_in()))
            return await real_insert(rows)

        monkeypatch.setattr(a.index, "insert_many", insert_after_the_other_writer)
        outs = await ingest_all(a, [(jpeg(60), meta_in()), (jpeg(61), meta_in()), (jpeg(62), meta_in())])
        assert elsewhere[0].status == "stored"
        assert [o.status for o in outs] == ["stored", "near_duplicate", "stored"]
        assert outs[1].id == elsewhere[0].id
        assert (await a.counts())["total"] == 3 and len(files(a.storage)) == 6
        assert (await a.check())["ok"]


def test_put_many_publishes_complete_files_and_no_temp_files(tmp_path):
    storage = LocalStorage(tmp_path)
    items = [(f"images/2026/01/0{i % 2 + 1}/{i}.bin", os.urandom(100_000 + i)) for i in range(6)]
    storage.put_many(items)
    for key, data in items:
        assert storage.get(key) == data
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert list(storage.temp_files("images/")) == []


def test_put_many_that_fails_names_the_key_and_leaves_no_temp_file(tmp_path):
    storage = LocalStorage(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "blocked").write_bytes(b"a file where a folder should be")
    items = [("images/ok/1.bin", b"1"), ("images/blocked/2.bin", b"2")]
    with pytest.raises(StorageError, match="images/blocked/2.bin"):
        storage.put_many(items)
    assert list(storage.temp_files("images/")) == []
    assert not storage.exists("images/ok/1.bin")  # nothing was published: the temp file is gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.sqlite_only  # it watches the SQLite file's row count to time the kill
def test_kill_9_during_a_folder_import_leaves_no_row_without_files(make_settings, tmp_path):
    # A real `exposr-trainer scrape` of a folder, killed with SIGKILL once some batches are in.
    folder = tmp_path / "photos"
    folder.mkdir()
    n = 160
    for i in range(n):
        Image.open(io.BytesIO(jpeg(1000 + i, (160, 120)))).save(folder / f"{i:03d}.jpg", quality=90)
    settings = make_settings()
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - name: folder\n    label: real\n    path: {folder}\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATASET_DIR": str(settings.dataset_dir),
        "MODELS_DIR": str(settings.models_dir),
        "SOURCES_CONFIG": str(sources),
        "TRAINER_API_KEY": "k" * 32,
        "MIN_IMAGE_SIDE": "16",
    }
    cmd = [sys.executable, "-m", "app.cli", "scrape", "--source", "folder"]
    db = settings.dataset_dir / "dedupe.db"
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _rows(db) < 40 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the import ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    killed_at = _rows(db)
    assert 40 <= killed_at < n

    import asyncio

    async def after_the_kill() -> dict:
        async with DatasetManager(settings) as dm:
            report = await dm.check()
            # Files without rows (the batch in flight) are allowed; a row without its files is not.
            assert report["dead_rows"] == [] and report["missing_meta"] == []
            for sample in await dm.samples():
                assert dm.storage.exists(sample.image_key) and dm.storage.exists(sample.meta_key)
            return report

    asyncio.run(after_the_kill())
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    async def after_the_rerun() -> None:
        async with DatasetManager(settings) as dm:
            assert (await dm.counts())["total"] == n  # every image once: the rest stored, none twice
            repaired = await dm.check(repair=True, force=True)  # the killed batch's files: indexed or removed
            report = await dm.check()
            assert report["ok"] and (await dm.counts())["total"] == n, (repaired, report)
            assert len(list(dm.storage.list("images/"))) == n

    asyncio.run(after_the_rerun())


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0


async def test_a_lone_writer_asks_the_index_for_no_rows_per_batch(driver_settings, monkeypatch):
    # One writer (a folder import): its own rows join memory as they are inserted, so neither a
    # catch-up nor the re-check after the insert reads rows from the database; near duplicates of
    # earlier batches are still found (from memory), and a hit costs one query for its row.
    monkeypatch.setattr("dataset.manager.UPLOAD_CATCH_UP_SECONDS", 60.0)  # the whole test
    async with DatasetManager(driver_settings) as dm:
        reads = []
        real_pull, real_between = dm.index._pull_into, dm.index.rows_between

        async def pull(cache):
            reads.append("catch-up")
            await real_pull(cache)

        async def between(*args, **kwargs):
            reads.append("re-check")
            return await real_between(*args, **kwargs)

        monkeypatch.setattr(dm.index, "_pull_into", pull)
        monkeypatch.setattr(dm.index, "rows_between", between)
        first = await ingest_all(dm, [(jpeg(70 + i), meta_in()) for i in range(4)])
        second = await ingest_all(
            dm, [(near_copy(71), meta_in()), (jpeg(80), meta_in()), (jpeg(81), meta_in())]
        )
        assert [o.status for o in first] == ["stored"] * 4
        assert [o.status for o in second] == ["near_duplicate", "stored", "stored"]
        assert second[0].id == first[1].id
        assert reads == []
        assert (await dm.check())["ok"] and (await dm.counts())["total"] == 6


async def test_the_stream_reads_at_most_read_ahead_beyond_the_outcome_taken(dm):
    pulled: list[int] = []

    async def fed() -> AsyncIterator[tuple[bytes, dict]]:
        for i in range(6):
            pulled.append(i)
            yield jpeg(90 + i), meta_in()

    stream = dm.ingest_stream(fed(), read_ahead=2)
    seen = []
    async for outcome in stream:
        # the outcome of item k is out: items up to k + 1 read at most (k's own place not yet freed)
        assert len(pulled) <= len(seen) + 2
        seen.append(outcome.status)
    assert seen == ["stored"] * 6


async def test_a_failing_source_gets_the_outcomes_of_what_arrived_then_its_error(dm):
    async def fed() -> AsyncIterator[tuple[bytes, dict]]:
        yield jpeg(95), meta_in()
        yield jpeg(96), meta_in()
        raise RuntimeError("the source broke")

    seen = []
    with pytest.raises(RuntimeError, match="the source broke"):
        async for outcome in dm.ingest_stream(fed()):
            seen.append(outcome.status)
    assert seen == ["stored", "stored"] and (await dm.counts())["total"] == 2


async def test_a_stream_closed_midway_leaves_no_row_without_files(dm):
    async def fed() -> AsyncIterator[tuple[bytes, dict]]:
        for i in range(40):
            yield jpeg(100 + i), meta_in()

    stream = dm.ingest_stream(fed())
    taken = [await anext(stream) for _ in range(3)]
    await stream.aclose()  # what was in flight is cancelled: at worst files without rows
    assert [o.status for o in taken] == ["stored"] * 3
    report = await dm.check(repair=True, force=True)
    assert report["dead_rows"] == [] and report["missing_meta"] == []
    assert (await dm.check())["ok"]
    assert len(list(dm.storage.list("images/"))) == (await dm.counts())["total"] >= 3
