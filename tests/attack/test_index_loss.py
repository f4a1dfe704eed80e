"""Attack 1: the dataset survives its index (truncated, garbled, lost), and repair never deletes an
image whose metadata file can give its row back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from dataset.check import check_dataset
from dataset.index import IndexUnusable
from dataset.manager import DatasetManager, run_check
from tests.dataset.conftest import meta_in
from tests.images import encode, jpeg, noise

ROOT = Path(__file__).resolve().parents[2]
COMPARED = (
    "id",
    "sha256",
    "phash",
    "label",
    "confidence",
    "scorer",
    "source",
    "image_key",
    "meta_key",
    "format",
    "width",
    "height",
    "created_at",
)


async def _fill(settings, n: int = 12) -> list[str]:
    async with DatasetManager(settings) as dm:
        ids = []
        for i in range(n):
            label = ("real", "ai", "unlabeled")[i % 3]
            data = jpeg(100 + i) if i % 2 else encode(noise(200 + i), "PNG")
            attribution = {"platform": "Test", "photographer": f"person {i}", "url": f"http://x/{i}"}
            out = await dm.ingest(data, meta_in(label, source=f"src{i % 2}", attribution=attribution))
            assert out.status == "stored", out
            ids.append(out.id)
        await dm.set_score(ids[0], 0.25, {"kind": "core", "endpoint": "http://core"})
        await dm.set_label(ids[1], "ai", {"by": "person"})
        return ids


async def _snapshot(settings) -> tuple[dict, dict]:
    async with DatasetManager(settings) as dm:
        rows = {r["id"]: {k: r[k] for k in COMPARED} for r in await dm.index.all_rows()}
        docs = {i: await dm.get_metadata(i) for i in rows}
    return rows, docs


async def _sizes(settings) -> dict:
    async with DatasetManager(settings) as dm:
        return {r["id"]: r["size_bytes"] for r in await dm.index.all_rows()}


def _db(settings) -> Path:
    return settings.dataset_dir / "dedupe.db"


def _truncate(db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATASET_DIR": str(settings.dataset_dir),
        "MODELS_DIR": str(settings.models_dir),
        "LOG_DIR": str(settings.log_dir),
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check", *args],
        env=env,
        cwd=settings.log_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_truncated_index_stops_start_up_and_the_documented_repair_gives_every_image_back(settings):
    ids = asyncio.run(_fill(settings))
    rows, docs = asyncio.run(_snapshot(settings))
    _truncate(_db(settings))

    with pytest.raises(IndexUnusable) as refused, TestClient(create_app(settings)):
        pass
    message = str(refused.value)
    assert str(_db(settings)) in message and "exposr-trainer check --rebuild-index" in message

    before = _cli(settings)  # the report alone: drift found, nothing changed
    assert before.returncode == 1 and "unindexed" in before.stdout
    repaired = _cli(settings, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr

    rebuilt, rebuilt_docs = asyncio.run(_snapshot(settings))
    assert rebuilt == rows and rebuilt_docs == docs and sorted(rebuilt) == sorted(ids)
    sizes = asyncio.run(_sizes(settings))
    assert all(
        size == (settings.dataset_dir / rows[i]["image_key"]).stat().st_size for i, size in sizes.items()
    )
    assert rebuilt_docs[ids[0]]["attribution"]["photographer"] == "person 0"
    files = sorted(p.stem for p in (settings.dataset_dir / "images").rglob("*.*"))
    assert files == sorted(ids)
    with TestClient(create_app(settings)) as client:
        counts = client.get("/status").json()["dataset_counts"]
    labels = [docs[i]["label"] for i in ids]
    assert counts == {
        "total": len(ids),
        "real": labels.count("real"),
        "ai_generated": labels.count("ai"),
        "unlabeled": labels.count("unlabeled"),
    }


def test_a_deleted_index_is_refused_too_and_rebuilt(settings):
    ids = asyncio.run(_fill(settings, 3))
    db = _db(settings)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    with pytest.raises(IndexUnusable, match="has no rows"), TestClient(create_app(settings)):
        pass
    assert _cli(settings, "--rebuild-index").returncode == 0
    assert sorted(asyncio.run(_snapshot(settings))[0]) == sorted(ids)


def test_garbled_index_names_the_file_and_rebuild_moves_it_aside(settings):
    ids = asyncio.run(_fill(settings, 4))
    rows, _ = asyncio.run(_snapshot(settings))
    db = _db(settings)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)

    report_only = _cli(settings)
    assert report_only.returncode == 2 and "Traceback" not in report_only.stderr
    assert str(db) in report_only.stderr and "--rebuild-index" in report_only.stderr
    rebuilt = _cli(settings, "--rebuild-index")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    aside = list(db.parent.glob("dedupe.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept for whoever wants to look
    assert asyncio.run(_snapshot(settings))[0] == rows and len(rows) == len(ids)


async def test_repair_refuses_to_delete_most_of_the_dataset_unless_forced(make_settings):
    settings = make_settings()
    ids = await _fill(settings, 24)
    async with DatasetManager(settings) as dm:
        lost = ids[:15]  # e.g. part of the storage is not mounted
        for image_id in lost:
            dm.storage.delete((await dm.index.get(image_id))["image_key"])
        report = await dm.check(repair=True)
        assert len(report["dead_rows"]) == 15 and "refused" in report["repaired"]
        assert "--force" in report["repaired"]["refused"] and not report["ok"]
        assert await dm.index.row_count() == 24  # nothing deleted
        assert len(report["deletion_candidates"]) == 15  # the list comes first
        report = await dm.check(repair=True, force=True)
        assert report["repaired"]["rows_deleted"] == 15 and await dm.index.row_count() == 9


async def test_an_image_with_valid_metadata_and_no_row_is_never_deleted(dm):
    out = await dm.ingest(jpeg(1), meta_in())
    await dm.index.delete(out.id)
    for kwargs in ({"repair": True}, {"repair": True, "force": True}):
        report = await dm.check(**kwargs)
        assert report["deletion_candidates"] == []
    assert await dm.get_metadata(out.id) is not None and await dm.read_image(out.id) == jpeg(1)


async def test_missing_metadata_file_is_written_again_from_the_row(dm):
    out = await dm.ingest(jpeg(1), meta_in("ai"))
    row = await dm.index.get(out.id)
    dm.storage.delete(row["meta_key"])
    report = await dm.check(repair=True)
    assert report["missing_meta"] == [{"id": out.id, "key": row["meta_key"]}]
    assert report["repaired"]["meta_rewritten"] == 1 and report["deletion_candidates"] == []
    doc = await dm.get_metadata(out.id)
    assert (doc["label"], doc["hash"], doc["rebuilt_from_index"]) == ("ai", row["sha256"], True)
    assert (await dm.check())["ok"] and await dm.read_image(out.id) == jpeg(1)


async def test_an_ingest_whose_row_a_rebuild_inserted_first_keeps_its_files(dm, monkeypatch):
    real_insert, raced = dm.index.insert, []

    async def rebuild_lands_first(row):
        if not raced:  # the ingest's own insert: a rebuild runs between its writes and its row
            raced.append(row["id"])
            report = await check_dataset(dm, repair=False, rebuild_index=True)
            assert report["repaired"]["rows_rebuilt"] == 1
        return await real_insert(row)

    monkeypatch.setattr(dm.index, "insert", rebuild_lands_first)
    out = await dm.ingest(jpeg(3), meta_in())
    monkeypatch.undo()
    assert out.status == "stored" and await dm.read_image(out.id) == jpeg(3)
    assert (await dm.check())["ok"] and await dm.index.row_count() == 1


async def test_metadata_that_is_not_its_images_record_is_kept_and_reported(make_settings):
    settings = make_settings()
    ids = await _fill(settings, 2)
    async with DatasetManager(settings) as dm:
        row = await dm.index.get(ids[0])
        await dm.index.delete(ids[0])
        dm.storage.put(row["meta_key"], b'{"id": "someone else"}')
        report = await run_check(settings, repair=True, force=True)
        assert [u["id"] for u in report["unreadable_meta"]] == [ids[0]]
        assert dm.storage.exists(row["image_key"]) and report["deletion_candidates"] == []


def test_serve_refuses_a_lost_index_with_a_message_not_a_traceback(settings, monkeypatch, capsys):
    from app import cli

    asyncio.run(_fill(settings, 2))
    _truncate(_db(settings))
    monkeypatch.chdir(settings.log_dir.parent)
    for name, value in (
        ("DATASET_DIR", settings.dataset_dir),
        ("MODELS_DIR", settings.models_dir),
        ("LOG_DIR", settings.log_dir),
        ("TRAINER_API_KEY", "k" * 20),
        ("SOURCES_CONFIG", settings.sources_config),
    ):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(cli, "configure_logging", lambda s: None)
    assert cli.main(["serve", "--port", "1"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(_db(settings)) in err and "check --rebuild-index" in err and "Traceback" not in err
