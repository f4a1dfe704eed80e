"""Versioned schema (dataset/db.py + dataset/migrations), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect, text

from config.errors import DatabaseUnavailable, SchemaMismatch
from dataset.db import (
    current_revision,
    head_revision,
    images,
    index_state,
    jobs_table,
    make_engine,
    metadata,
    migrate,
)
from dataset.manager import DatasetManager
from tests.pgserver import free_port


@pytest.fixture
def url(database_url, tmp_path) -> str:
    return database_url or f"sqlite+aiosqlite:///{tmp_path}/dedupe.db"


def _columns(sync_conn, table: str) -> dict[str, bool]:
    return {c["name"]: c["nullable"] for c in inspect(sync_conn).get_columns(table)}


async def test_migrations_create_every_column_the_code_uses(url):
    engine = make_engine(url)
    try:
        assert await migrate(engine) == head_revision()
        async with engine.connect() as conn:
            found = {
                table.name: await conn.run_sync(_columns, table.name) for table in metadata.sorted_tables
            }
            generation = (
                await conn.execute(text("SELECT value FROM index_state WHERE name = 'generation'"))
            ).scalar()
        assert generation and len(generation) == 36  # the database's random id (near-duplicate file)
        assert {images.name, index_state.name, jobs_table.name} <= set(found)
        for table in metadata.sorted_tables:  # every table dataset/db.py defines, each column
            for column in table.columns:
                assert column.name in found[table.name], f"{table.name}.{column.name} has no migration"
                assert found[table.name][column.name] == column.nullable, (
                    f"{table.name}.{column.name} nullability"
                )
        image_columns = found["images"]
        for name in ("generator", "group_hint", "split_group", "split", "size_bytes", "has_exif"):
            assert image_columns[name] is True
        assert await current_revision(engine) == head_revision()
        assert await migrate(engine) == head_revision()  # a second start changes nothing
    finally:
        await engine.dispose()


async def test_replicas_migrating_at_once_end_on_one_revision(url):
    engines = [make_engine(url) for _ in range(4)]
    try:
        assert await asyncio.gather(*(migrate(e) for e in engines)) == [head_revision()] * 4
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_database_migrated_by_a_newer_release_stops_start_up(url, make_settings):
    engine = make_engine(url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await engine.dispose()
    settings = make_settings(database_url=url)
    manager = DatasetManager(settings)
    with pytest.raises(SchemaMismatch) as raised:
        await manager.open()
    message = str(raised.value)
    assert "'9999'" in message and head_revision() in message and "Upgrade this replica" in message
    # the refused start keeps no pooled connection (one collected after its event loop closed made
    # aiosqlite's thread raise into a later test)
    assert manager.index.engine.pool.checkedin() == 0


async def test_an_unreachable_postgres_names_database_url_without_the_password(make_settings):
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://trainer:s3cret-pass@127.0.0.1:{port}/exposr"
    manager = DatasetManager(make_settings(database_url=url))
    with pytest.raises(DatabaseUnavailable) as raised:
        await manager.open()
    await manager.close()
    message = str(raised.value)
    assert "DATABASE_URL=postgresql+asyncpg://trainer:***@127.0.0.1" in message
    assert "s3cret-pass" not in message


def test_the_cli_prints_the_database_error_without_a_traceback(monkeypatch, tmp_path, capsys):
    from app import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("DATABASE_URL", f"postgresql+asyncpg://u:hunter22@127.0.0.1:{free_port()}/x")
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    assert cli.main(["status"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "DATABASE_URL" in err and "hunter22" not in err and "Traceback" not in err


@pytest.mark.postgres_only
async def test_the_database_going_away_fails_one_ingest_and_the_next_works_when_it_is_back(make_settings):
    from tests.conftest import missing_part
    from tests.images import jpeg
    from tests.pgserver import PostgresServer, missing_reason

    if missing_reason():
        missing_part(missing_reason())
    server = PostgresServer().start()  # its own server: this test stops it
    try:
        settings = make_settings(database_url=server.new_database())
        async with DatasetManager(settings) as dm:
            assert (await dm.ingest(jpeg(1), {"source": "upload", "label": "real"})).status == "stored"
            server.stop(keep=True)
            down = await dm.ingest(jpeg(2), {"source": "upload", "label": "real"})
            assert (down.status, down.reason) == ("error", "index_error")
            assert "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1" in down.message
            assert len(list(dm.storage.list("images/"))) == 1  # nothing of the failed image was kept
            server.start()
            back = await dm.ingest(jpeg(3), {"source": "upload", "label": "real"})
            assert back.status == "stored", back.message
            assert (await dm.counts())["total"] == 2
    finally:
        server.stop()
