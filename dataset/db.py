"""The one database module: the engine factory, every table, and the migrations that make them.

One database (``DATABASE_URL``: SQLite by default, PostgreSQL for a fleet) holds every table, each
defined here on one ``metadata`` and handed to the code that uses it:

- ``images``, ``index_state`` (dataset/index.py), ``index_marks`` (dataset/check.py): the index;
- ``jobs`` (app/jobstore.py), ``ui_revocations`` (app/ui/session.py): the service;
- ``rate_buckets`` (scraper/shared_rate.py): source quotas shared by replicas (PostgreSQL);
- ``webhook_deliveries`` (app/webhooks.py), ``model_monitoring`` (app/monitoring.py).

:func:`make_engine` is the one engine factory (SQLite in WAL with a 30 s wait for another writer;
PostgreSQL with keepalives and timeouts). The schema is versioned: Alembic migrations in
dataset/migrations, run at start-up by :func:`migrate`, which brings a database to this release's
newest revision (on SQLite and PostgreSQL alike) and is safe when several processes or replicas
start at once: on PostgreSQL the upgrade holds a transaction-level advisory lock; on SQLite the
database's own write lock serialises it and a busy open is retried. A database at a revision this
release does not know (a newer replica migrated it) stops start-up with ``SchemaMismatch`` saying
so; an unreachable database is a ``DatabaseUnavailable`` naming ``DATABASE_URL`` with the password
masked (both config/errors.py). The tables here mirror the migrations; a migration, never
``create_all``, makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from config.errors import DatabaseUnavailable, SchemaMismatch

log = logging.getLogger(__name__)

metadata = MetaData()

# --- the tables ---------------------------------------------------------------------------------

REVIEW_INDEX_COLUMNS = ("label", "confidence", "person_label", "source", "generator", "created_at", "id")

images = Table(
    "images",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # insertion order, for the cache
    Column("id", String(36), nullable=False, unique=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("phash", BigInteger, nullable=False),  # signed 64-bit in SQL, see to_signed()
    Column("label", String(16), nullable=False),
    Column("confidence", Float, nullable=True),
    # Who produced `confidence` (the scorer dict given to set_score, as sorted JSON): lets the
    # labeler find "not scored by the current scorer" with one query instead of reading every file.
    Column("scorer", Text, nullable=True),
    Column("source", String(64), nullable=False),
    Column("image_key", String(200), nullable=False),
    Column("meta_key", String(200), nullable=False),
    Column("format", String(16), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", String(32), nullable=False),  # ISO 8601 UTC, as in the metadata file
    # Honest evaluation (trainer/split.py): what made the image, a source-given group key (a CivitAI
    # post, the original of an edit), and its side of the split, decided once for its group.
    Column("generator", String(64), nullable=True),
    Column("group_hint", String(100), nullable=True),
    Column("split_group", String(36), nullable=True),
    Column("split", String(8), nullable=True),  # "train" | "eval" | None (not decided yet)
    # File facts for the metadata-only shortcut probe (None on rows from before the columns).
    Column("size_bytes", BigInteger, nullable=True),
    Column("has_exif", Integer, nullable=True),
    # Whether the label is a person's (label_source.kind == "person"): 1, 0, or NULL on rows from
    # before the column (labeler/review.py fills those in from the metadata file when it needs to).
    # The review queue leaves a person's label alone, and decides that in SQL.
    Column("person_label", Integer, nullable=True),
    # The review queue (labeler/review.py, migration i26): every column it selects, filters, counts
    # and orders on, so that ranking and counting 100k rows reads this index, never the table.
    Index("ix_images_review", *REVIEW_INDEX_COLUMNS),
    # Covering index: counts() (GROUP BY label, source) and samples(labels) never touch the table.
    Index("ix_images_label_source", "label", "source"),
    # AUTOINCREMENT: SQLite would otherwise reuse the largest seq once its row is deleted, and a
    # cache that has read "up to seq N" would never see the new row N.
    sqlite_autoincrement=True,
)

# One row per fact about the index as a whole. "generation": a random id given to the database when
# its schema was made (migration i27); a near-duplicate file written for another database -- a
# rebuilt or replaced one -- carries another and is not used.
index_state = Table(
    "index_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)


# Marks about the index's upkeep (dataset/check.py): a rebuild under way, a quarantine.
marks_table = Table(
    "index_marks",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Text, nullable=False),
)

# States: queued -> running -> succeeded | failed | interrupted (or skipped); app/jobstore.py.
jobs_table = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False, index=True),
    Column("trigger", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", String(32), nullable=False, index=True),
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    Column("progress", JSON),
    Column("result", JSON),
    Column("error", Text),
    Column("runner", String(16)),  # None: the accepting service runs it; "worker": exposr-trainer worker
    Column("holder", String(200)),  # "host:pid" of the process running it (for people; liveness is the lock)
)

# A source's token bucket shared by the replicas (scraper/shared_rate.py, PostgreSQL).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),  # the database server's clock, epoch s
)

# Console session ids logged out and login forms used (app/ui/session.py).
revocations_table = Table(
    "ui_revocations",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("until", BigInteger, nullable=False),
)

# The webhook outbox (app/webhooks.py).
deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("event_id", String(40), nullable=False, index=True),
    Column("event", String(64), nullable=False, index=True),
    Column("subscriber", String(2000), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("attempt_log", JSON, nullable=False),
    Column("created_at", String(32), nullable=False, index=True),
    Column("next_at", Float, nullable=False, index=True),
    Column("give_up_at", Float, nullable=False),
    Column("delivered_at", String(32)),
    Column("claimed_until", Float),
    Column("claimed_by", String(200)),
    Column("last_status", Integer),
    Column("last_error", Text),
)

# The served model's figures, one row per ended week (app/monitoring.py).
monitoring_table = Table(
    "model_monitoring",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("week", String(10), primary_key=True),
    Column("row", JSON, nullable=False),
    Column("degraded", Text),
    Column("computed_at", String(32), nullable=False),
)

# --- the engine ---------------------------------------------------------------------------------


def sqlite_path(db_url: str) -> Path | None:
    """The database file of a SQLite URL, None for other backends and in-memory databases."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def describe_db(db_url: str) -> str:
    """Where the index lives, for an operator's message: the SQLite file, or the URL without password."""
    path = sqlite_path(db_url)
    return str(path) if path else make_url(db_url).render_as_string(hide_password=True)


# A dead client host (power cut, network gone) is noticed by the server within about
# idle + interval * count = 10 + 5 * 3 s, which releases the locks its connection held (app/locks.py).
PG_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
PG_CONNECT_TIMEOUT_SECONDS = 10
PG_COMMAND_TIMEOUT_SECONDS = 120  # no statement of ours takes long: a hung server is noticed


def postgres_connect_args() -> dict:
    return {
        "timeout": PG_CONNECT_TIMEOUT_SECONDS,
        "command_timeout": PG_COMMAND_TIMEOUT_SECONDS,
        "server_settings": {"application_name": "exposr-trainer", **PG_KEEPALIVES},
    }


def make_engine(db_url: str) -> AsyncEngine:
    url = make_url(db_url)
    if url.get_backend_name() == "postgresql":
        return create_async_engine(db_url, pool_pre_ping=True, connect_args=postgres_connect_args())
    if url.get_backend_name() != "sqlite":
        return create_async_engine(db_url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # timeout: wait for another writer (another process) instead of failing with "database is locked".
    engine = create_async_engine(db_url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # WAL: readers never block the writer
        cur = dbapi_conn.cursor()
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


WAL_SWITCH_ATTEMPTS = 20  # 5 s in all


def _switch_to_wal(cur) -> None:
    """Connections that open a new database at once (replicas starting together) race to switch it
    to WAL; SQLite can answer the loser "database is locked" at once, without waiting out the busy
    timeout, so the switch is tried again (in the connection's own thread) before giving up."""
    for attempt in range(1, WAL_SWITCH_ATTEMPTS + 1):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, whichever adapter raised it
            if "locked" not in str(exc) or attempt == WAL_SWITCH_ATTEMPTS:
                raise
            time.sleep(0.025 * attempt)


# --- the migrations -----------------------------------------------------------------------------


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
