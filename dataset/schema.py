"""The database schema is versioned: Alembic migrations in dataset/migrations, run at start-up.

:func:`migrate` brings a database to this release's newest revision (on SQLite and PostgreSQL
alike) and is safe when several processes or replicas start at once: on PostgreSQL the upgrade
holds a transaction-level advisory lock; on SQLite the database's own write lock serialises it and
a busy open is retried. A database at a revision this release does not know (a newer replica
migrated it) stops start-up with :class:`SchemaMismatch` saying so; an unreachable database is a
:class:`DatabaseUnavailable` naming ``DATABASE_URL`` with the password masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from config.errors import DatabaseUnavailable, SchemaMismatch

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATE_ATTEMPTS = 8
# SQLite, two processes migrating one new file: busy, or the other one created the table first.
_MIGRATING = threading.Lock()
RETRYABLE = ("locked", "already exists", "duplicate column")


def masked_url(url: str) -> str:
    """The URL as it may appear in logs and messages: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing of its content
        return "<unparseable DATABASE_URL>"


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    # The driver's message may quote the URL or DSN: never let a password through.
    password = _password(url)
    if password:
        reason = reason.replace(password, "***")
    if _sqlite_file(url):
        return DatabaseUnavailable(
            f"cannot use the dataset index {_sqlite_file(url)} (DATABASE_URL={masked_url(url)}): {reason}. "
            "If another process holds it, stop that process; if the file is damaged, run "
            "`exposr-trainer check --rebuild-index`, which moves it aside and rebuilds the index "
            "from the metadata files (nothing is deleted); if its folder is not writable, fix the "
            "permissions of DATASET_DIR."
        )
    return DatabaseUnavailable(
        f"cannot use the database at DATABASE_URL={masked_url(url)}: {reason}. Check that the server is "
        "running and reachable, and the user, password and database name in DATABASE_URL."
    )


def _sqlite_file(url: str) -> str | None:
    try:
        parsed = make_url(url)
    except Exception:
        return None
    return parsed.database if parsed.get_backend_name() == "sqlite" and parsed.database else None


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:
        return None


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, from a readable name."""
    return int.from_bytes(hashlib.sha256(f"exposr:{name}".encode()).digest()[:8], "big", signed=True)


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # dataset/migrations has revisions
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()}


def _current(sync_conn) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


def _upgrade(sync_conn) -> None:
    from alembic import command

    command.upgrade(_config(sync_conn), "head")


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def migrate(engine: AsyncEngine) -> str:
    """Bring the database to the newest revision; returns it. See the module docstring for errors."""
    url = engine.url.render_as_string(hide_password=False)
    head = head_revision()
    try:
        current = await current_revision(engine)
    except (OSError, DBAPIError, TimeoutError) as exc:
        raise unavailable(url, exc) from exc
    if current == head:
        return head
    if current is not None and current not in known_revisions():
        raise SchemaMismatch(
            f"the database at DATABASE_URL={masked_url(url)} has schema revision {current!r}, which this "
            f"release does not know (its newest is {head!r}): a newer release migrated it. Upgrade this "
            "replica to the release the others run; every replica must run the same schema."
        )
    async with _process_lock():
        await _upgrade_with_retries(engine)
    if current != head:
        log.info("database schema migrated from %s to %s", current or "nothing", head)
    return head


@contextlib.asynccontextmanager
async def _process_lock():
    """Alembic keeps its running migration in module globals: one migration at a time per process,
    whichever event loop or thread asks (the lock is polled, so a waiting loop keeps running)."""
    while not _MIGRATING.acquire(blocking=False):
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        _MIGRATING.release()


async def _upgrade_with_retries(engine: AsyncEngine) -> None:
    for attempt in range(1, MIGRATE_ATTEMPTS + 1):
        try:
            async with engine.begin() as conn:
                if engine.dialect.name == "postgresql":  # replicas starting together: one migrates
                    key = advisory_key("migrate")
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                await conn.run_sync(_upgrade)
            break
        except OperationalError as exc:
            # SQLite: two processes opening one new database; the other one's write lock is held.
            # Each migration step checks what is there, so trying again is safe.
            if not any(m in str(exc) for m in RETRYABLE) or attempt == MIGRATE_ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * attempt)
