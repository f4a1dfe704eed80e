"""Attack 4: faults answer in JSON and leave true records. The database refusing writes is real
SQLite refusing them (``PRAGMA query_only``, switched on each connection as it is checked out: the
same SQLITE_READONLY a read-only or full volume gives); storage failures are a real driver that
fails some writes; DNS failures are the resolver's error, raised at httpx's transport."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import respx
from sqlalchemy import event

from app import jobs as jobs_module
from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from config.sources import SourceConfig, SourcesFile
from dataset.manager import DatasetManager
from dataset.storage import LocalStorage, StorageError
from scraper.fetcher_manager import FetcherManager
from scraper.http import RetryPolicy, reset_buckets
from scraper.report import overall_status
from tests.app.conftest import AUTH
from tests.images import jpeg


class WriteSwitch:
    """Turns SQLite writes off and on for every connection an engine hands out."""

    def __init__(self, engine) -> None:
        self.refuse = False
        event.listen(engine.sync_engine, "checkout", self._apply)

    def _apply(self, dbapi_conn, _record, _proxy) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA query_only = {'ON' if self.refuse else 'OFF'}")
        cursor.close()


def test_job_submission_on_a_database_that_refuses_writes_is_a_503_with_the_reason(make_client, gate):
    client = make_client(job_kinds=gate.kinds())
    switch = WriteSwitch(client.app.state.runner.store.engine)
    switch.refuse = True
    response = client.post("/scrape", headers=AUTH)
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    detail = response.json()["detail"]
    assert "database is unavailable" in detail and "readonly" in detail and "retry" in detail
    assert client.get("/status").status_code == 200  # reads still answer
    switch.refuse = False
    gate.open = True
    accepted = client.post("/scrape", headers=AUTH)
    assert accepted.status_code == 202  # the refused submit left no claim behind


async def test_a_final_state_the_database_refused_is_written_once_it_takes_writes(settings, monkeypatch):
    monkeypatch.setattr(jobs_module, "FINAL_WRITE_RETRY_SECONDS", (0.05, 0.2))
    engine = make_engine(settings)
    switch = WriteSwitch(engine)

    async def scrape(settings_, progress):
        switch.refuse = True  # the disk fills up while the job runs
        return {"stored": 290, "notes": "x" * 10_000}

    runner = JobRunner(settings, JobStore(engine), {"scrape": scrape})
    await runner.start()
    try:
        job = await runner.submit("scrape")
        await _until(lambda: runner.get(job["id"]), lambda j: j["state"] == "succeeded")
        assert (await runner.store.get(job["id"]))["state"] == "running"  # not written yet ...
        assert [j["state"] for j in await runner.list()] == ["succeeded"]  # ... but the API tells the truth
        switch.refuse = False
        row = await _until(lambda: runner.store.get(job["id"]), lambda j: j["state"] == "succeeded")
        assert row["result"]["stored"] == 290 and row["finished_at"] and row["error"] is None
        assert runner._unwritten == {}
    finally:
        await runner.shutdown()
        await engine.dispose()


async def _until(read, done, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await read()
        if value and done(value):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached: {value}")


class FullDiskStorage(LocalStorage):
    """The real local driver, except that writes fail like a full disk after ``room`` images."""

    def __init__(self, root, room: int) -> None:
        super().__init__(root)
        self.room = room

    def put(self, key, data):
        if key.startswith("images/"):
            if self.room <= 0:
                raise StorageError(f"cannot write {key} under {self.root}: No space left on device")
            self.room -= 1
        super().put(key, data)

    def put_many(self, items):
        # A batch that does not fit fails whole (nothing of it written), as a group commit would.
        images = sum(key.startswith("images/") for key, _data in items)
        if images > self.room:
            raise StorageError(f"cannot write {items[0][0]} under {self.root}: No space left on device")
        self.room -= images
        super().put_many(items)


@pytest.mark.parametrize(("room", "status"), [(3, "partial"), (0, "failed")])
async def test_a_scrape_that_could_not_store_images_is_not_ok(settings, tmp_path, room, status):
    reset_buckets()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.jpg").write_bytes(jpeg(500 + i))
    storage = FullDiskStorage(settings.dataset_dir, room)
    async with DatasetManager(settings, storage=storage) as dm:
        entry = SourceConfig(name="folder", label="real", path=str(folder))
        report = await FetcherManager(settings, SourcesFile(sources=[entry]), dm).run()
    source = next(iter(report["sources"].values()))
    assert (source["status"], source["stored"]) == (status, room)
    assert source["errors"] == {"ingest_storage_error": 8 - room}
    assert "could not be stored" in source["message"] and report["status"] == status


def test_overall_status_of_a_run():
    assert overall_status([{"status": "ok"}, {"status": "skipped"}]) == "ok"
    assert overall_status([{"status": "ok"}, {"status": "partial"}]) == "partial"
    assert overall_status([{"status": "failed"}, {"status": "skipped"}]) == "failed"
    assert overall_status([{"status": "failed"}, {"status": "ok"}]) == "partial"


@respx.mock
async def test_a_dns_failure_stops_the_source_at_once_saying_offline(make_settings, sleeps):
    reset_buckets()
    settings = make_settings(unsplash_access_key="unsplash-test-key")

    def unresolvable(request):
        try:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        except socket.gaierror as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc

    route = respx.get(url__startswith="https://api.unsplash.com/").mock(side_effect=unresolvable)
    entry = SourceConfig(
        name="unsplash", label="real", queries=["a", "b", "c"], limit_per_query=30, rate_limit_per_hour=0
    )
    async with DatasetManager(settings) as dm:
        manager = FetcherManager(
            settings, SourcesFile(sources=[entry]), dm, sleep=sleeps, retry=RetryPolicy(attempts=5)
        )
        report = await manager.run()
    source = report["sources"]["unsplash"]
    assert source["status"] == "stopped" and "offline?" in source["message"]
    assert "api.unsplash.com" in source["message"] and source["errors"] == {"dns": 1}
    assert route.call_count == 1 and sleeps.calls == [] and source["retries"] == 0


async def test_a_scrape_job_that_could_store_nothing_fails_with_the_reason(make_settings, tmp_path):
    reset_buckets()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(700 + i))
    (tmp_path / "sources.yaml").write_text(f"sources:\n  - {{name: folder, label: real, path: '{folder}'}}\n")
    settings = make_settings(sources_config=tmp_path / "sources.yaml")
    settings.dataset_dir.mkdir(parents=True)
    (settings.dataset_dir / "images").write_bytes(b"")  # a file where the images folder must go
    with pytest.raises(RuntimeError, match=r"no image could be stored: 3 storage/index errors"):
        await jobs_module.scrape_job(settings, lambda event: None)


def test_public_status_tells_the_true_final_state_while_the_database_refuses_it(make_client, monkeypatch):
    monkeypatch.setattr(jobs_module, "FINAL_WRITE_RETRY_SECONDS", (0.05, 0.2))
    switches = []

    async def scrape(settings_, progress):
        switches[0].refuse = True
        return {"stored": 1}

    client = make_client(job_kinds={"scrape": scrape})
    switches.append(WriteSwitch(client.app.state.runner.store.engine))
    job_id = client.post("/scrape", headers=AUTH).json()["job_id"]
    deadline = time.monotonic() + 60
    while client.app.state.runner.unwritten_jobs() == [] and time.monotonic() < deadline:
        time.sleep(0.02)
    status = client.get("/status").json()
    assert status["last_jobs"]["scrape"]["state"] == "succeeded" and status["running_jobs"] == []
    assert client.get(f"/jobs/{job_id}", headers=AUTH).json()["state"] == "succeeded"
    switches[0].refuse = False
    while client.app.state.runner.unwritten_jobs() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.app.state.runner.unwritten_jobs() == []
    assert client.get("/status").json()["last_jobs"]["scrape"]["state"] == "succeeded"


def test_a_job_lock_that_cannot_be_created_is_a_503_not_a_500(make_client, gate):
    client = make_client(job_kinds=gate.kinds())
    lock = client.app.state.settings.dataset_dir / "job-scrape.lock"
    lock.mkdir(parents=True)  # where the lock file must go: the same OSError a full disk gives
    response = client.post("/scrape", headers=AUTH)
    assert response.status_code == 503 and "storage unavailable" in response.json()["detail"]
    assert str(client.app.state.settings.dataset_dir.resolve()) not in response.text
    lock.rmdir()
    gate.open = True
    assert client.post("/scrape", headers=AUTH).status_code == 202
