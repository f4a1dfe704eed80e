"""The dedupe index: one SQL row per stored image (SQLAlchemy async, SQLite by default).

Exact duplicates: ``sha256`` is UNIQUE, so two identical images racing each other (in one
process or several) end with one row; the loser gets :class:`DuplicateHash` with the winner's id.
Near duplicates: :class:`PhashCache` keeps every 64-bit perceptual hash in a numpy array and
answers "nearest within distance d" with XOR + popcount over the whole array (a few ms per
million hashes); it catches up with rows other processes inserted by reading ``seq > last``.
Rows that land between one image's near check and its own insert are looked at afterwards by
:meth:`DedupeIndex.near_between` (a ``seq`` range, usually empty), so racing near duplicates are
caught too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from config.settings import ConfigError
from dataset.nearindex import NearIndex
from dataset.schema import DatabaseUnavailable, migrate, unavailable

log = logging.getLogger(__name__)

metadata = MetaData()

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
    # Covering index: counts() (GROUP BY label, source) and samples(labels) never touch the table.
    Index("ix_images_label_source", "label", "source"),
    # AUTOINCREMENT: SQLite would otherwise reuse the largest seq once its row is deleted, and a
    # cache that has read "up to seq N" would never see the new row N.
    sqlite_autoincrement=True,
)


class IndexUnusable(ConfigError):
    """The index database cannot be read (not a database, corrupt): the message names the file and
    what to do. A ConfigError, so the CLI prints it without a traceback and exits with code 2."""


# SQLite's words for a file that is not (or no longer) a database it can read.
_CORRUPT_MARKERS = ("not a database", "malformed", "file is encrypted", "disk image is malformed")


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


class DuplicateHash(Exception):
    """An image with the same SHA-256 is already indexed."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(f"duplicate of {existing_id}")
        self.existing_id = existing_id


def to_signed(h: int) -> int:
    """SQL integers are signed 64-bit: store the unsigned pHash bit pattern as its signed twin."""
    return h - (1 << 64) if h >= 1 << 63 else h


def to_unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


# How long a sequence number skipped by the cache's catch-up is asked for again, and how many.
GAP_SECONDS = 120.0
MAX_GAPS = 10_000
CATCH_UP_PAGE = 50_000


@dataclass(frozen=True)
class NearMatch:
    id: str
    distance: int


class PhashCache:
    """All indexed pHashes in memory; grows by doubling so appends stay cheap.

    Catch-up reads ``seq > last_seq``, plus the *gaps* below it: on PostgreSQL a sequence number is
    taken at insert but becomes visible at commit, so row 7 can appear after row 8 was read. Every
    seq skipped over is remembered and asked for again until it shows up or :data:`GAP_SECONDS`
    pass (an insert is one short transaction: by then it was rolled back, or deleted).
    """

    def __init__(self) -> None:
        self.hashes = np.zeros(1024, dtype=np.uint64)
        self.ids: list[str | None] = []
        self.positions: dict[str, int] = {}
        self.last_seq = 0
        self.gaps: dict[int, float] = {}  # seq not seen yet below last_seq -> when it was first missed
        self.near: NearIndex | None = None  # built on the first lookup, kept in step with hashes

    def __len__(self) -> int:
        return len(self.ids)

    def open_gaps(self, now: float | None = None) -> list[int]:
        """The gaps still worth asking for (older ones are forgotten here)."""
        now = time.monotonic() if now is None else now
        for seq in [s for s, since in self.gaps.items() if now - since > GAP_SECONDS]:
            del self.gaps[seq]
        if len(self.gaps) > MAX_GAPS:  # a flood of rolled-back inserts: keep the newest
            for seq in sorted(self.gaps)[: len(self.gaps) - MAX_GAPS]:
                del self.gaps[seq]
        return sorted(self.gaps)

    def add(self, rows: list[tuple[int, str, int]], now: float | None = None) -> None:
        """rows: (seq, id, signed phash) in seq order; rows already seen are skipped."""
        rows = [r for r in rows if r[0] > self.last_seq or (r[0] in self.gaps and r[1] not in self.positions)]
        if not rows:
            return
        now = time.monotonic() if now is None else now
        present = {r[0] for r in rows}
        top = max(present)
        if top > self.last_seq:
            self.gaps.update((s, now) for s in range(self.last_seq + 1, top) if s not in present)
        for r in rows:
            self.gaps.pop(r[0], None)
        n, k = len(self.ids), len(rows)
        if n + k > len(self.hashes):
            grown = np.zeros(max(2 * len(self.hashes), n + k), dtype=np.uint64)
            grown[:n] = self.hashes[:n]
            self.hashes = grown
        self.hashes[n : n + k] = np.array([r[2] for r in rows], dtype=np.int64).view(np.uint64)
        self.positions.update((r[1], n + j) for j, r in enumerate(rows))
        self.ids.extend(r[1] for r in rows)
        self.last_seq = max(self.last_seq, top)

    def forget(self, image_id: str) -> None:
        # Keep positions stable: blank the id; its slot can never match again.
        pos = self.positions.pop(image_id, None)
        if pos is not None:
            self.ids[pos] = None

    def nearest(self, phash: int, max_distance: int) -> NearMatch | None:
        n = len(self.ids)
        if n == 0 or max_distance <= 0:
            return None
        if self.near is None:
            self.near = NearIndex()  # dataset/nearindex.py: multi-index hashing, sublinear
        for distance, i in self.near.within(self.hashes, n, phash, max_distance):
            if (found := self.ids[i]) is not None:
                return NearMatch(found, int(distance))
        return None


# A dead client host (power cut, network gone) is noticed by the server within about
# idle + interval * count = 10 + 5 * 3 s, which releases the locks its connection held (app/locks.py).
PG_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
PG_CONNECT_TIMEOUT_SECONDS = 10


def postgres_connect_args() -> dict:
    return {
        "timeout": PG_CONNECT_TIMEOUT_SECONDS,
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


class DedupeIndex:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.engine = make_engine(db_url)
        self.cache = PhashCache()
        self._refresh_lock = asyncio.Lock()
        self._queries_started = 0  # catch-up queries begun, numbered from 1
        self._caught_up_by = 0  # the number of the last one that finished
        self._caught_up_at = -math.inf  # when that one began (monotonic)

    async def open(self) -> None:
        """Migrate the schema to this release's revision (dataset/schema.py), then load the cache.

        An unreachable server is DatabaseUnavailable (naming DATABASE_URL, password masked); a damaged
        SQLite file is IndexUnusable (saying how to rebuild it from the metadata files). A refused
        open keeps no pooled connection: one collected later, after its event loop closed, made
        aiosqlite's thread raise into whatever ran then."""
        try:
            await self._open()
        except BaseException:
            await self.engine.dispose()
            raise

    async def _open(self) -> None:
        try:
            await migrate(self.engine)
            await self.refresh()
        except DatabaseUnavailable as exc:
            cause = exc.__cause__
            corrupt = self._unusable(cause) if isinstance(cause, DatabaseError) else None
            if isinstance(corrupt, IndexUnusable):
                raise corrupt from cause
            raise
        except DatabaseError as exc:
            corrupt = self._unusable(exc)
            raise (corrupt if isinstance(corrupt, IndexUnusable) else unavailable(self.db_url, exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise unavailable(self.db_url, exc) from exc

    def describe(self) -> str:
        return describe_db(self.db_url)

    def _unusable(self, exc: DatabaseError) -> Exception:
        reason = str(getattr(exc, "orig", None) or exc)
        if not any(marker in reason for marker in _CORRUPT_MARKERS):
            return exc
        return IndexUnusable(
            f"the dataset index {self.describe()} cannot be read ({reason}). The metadata files hold "
            "every row: run `exposr-trainer check --rebuild-index`, which moves the damaged file aside "
            "(to <name>.corrupt-<time>) and rebuilds the index from them; nothing is deleted"
        )

    async def close(self) -> None:
        await self.engine.dispose()

    async def refresh(self, max_age: float = 0.0) -> None:
        """Pull rows inserted since the last look (by this or any other process). Concurrent callers
        share a query: one that began after this call was made has seen every row this call would
        see, so when the lock comes free after such a query, there is nothing left to ask for (the
        uploads that arrive together make one catch-up query, not one each).

        ``max_age``: a look that began at most this many seconds ago is recent enough. For a caller
        that re-checks the rows inserted since the look once its own row is in (an upload's
        ``near_between``), a row the look missed is found then, so it need not ask per image."""
        asked = self._queries_started  # every query numbered above this began after this call
        async with self._refresh_lock:
            if self._caught_up_by > asked or time.monotonic() - self._caught_up_at <= max_age:
                return
            self._queries_started += 1
            number = self._queries_started
            began = time.monotonic()
            await self._pull_into(self.cache)
            self._caught_up_by, self._caught_up_at = number, began

    async def _pull_into(self, cache: PhashCache) -> None:
        """Gaps first (one indexed IN lookup), then the new rows in pages of CATCH_UP_PAGE: ORDER BY +
        LIMIT on the primary key (an index range scan once the table has statistics; PostgreSQL's
        autovacuum gathers them within a minute of a bulk load)."""
        columns = (images.c.seq, images.c.id, images.c.phash)
        async with self.engine.connect() as conn:
            gaps = cache.open_gaps()
            found: list[Any] = []
            for start in range(0, len(gaps), 1000):
                q = (
                    select(*columns)
                    .where(images.c.seq.in_(gaps[start : start + 1000]))
                    .order_by(images.c.seq)
                )
                found += (await conn.execute(q)).all()
            while True:
                q = (
                    select(*columns)
                    .where(images.c.seq > cache.last_seq)
                    .order_by(images.c.seq)
                    .limit(CATCH_UP_PAGE)
                )
                rows = (await conn.execute(q)).all()
                cache.add([tuple(r) for r in sorted([*found, *rows])])
                found = []
                if len(rows) < CATCH_UP_PAGE:
                    break

    async def find_sha(self, sha256: str) -> str | None:
        return await self._id_for_sha(sha256)

    async def _id_for_sha(self, sha256: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(images.c.id).where(images.c.sha256 == sha256))).scalar()

    async def find_shas(self, shas: list[str]) -> dict[str, str]:
        """{sha256: id} of those already indexed: one query per 500 hashes (a batch's exact check)."""
        found: dict[str, str] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(shas), 500):
                q = select(images.c.sha256, images.c.id).where(images.c.sha256.in_(shas[start : start + 500]))
                found.update((sha, image_id) for sha, image_id in (await conn.execute(q)).all())
        return found

    async def find_near(self, phash: int, max_distance: int) -> NearMatch | None:
        return (await self.near_check(phash, max_distance))[0]

    async def near_check(
        self, phash: int, max_distance: int, max_age: float = 0.0
    ) -> tuple[NearMatch | None, int]:
        """The nearest indexed image within max_distance, and the seq up to which rows were looked at
        (rows after it are for :meth:`near_between` to check once this image's own row is in).
        ``max_age``: see :meth:`refresh`."""
        await self.refresh(max_age)
        seen = self.cache.last_seq
        return await self.near_cached(phash, max_distance), seen

    async def near_cached(self, phash: int, max_distance: int) -> NearMatch | None:
        """The nearest image within max_distance among the hashes in memory (no catch-up query: a
        batch catches up once with :meth:`refresh`). Only a hit costs a query, to make sure its row
        still exists."""
        while (match := self.cache.nearest(phash, max_distance)) is not None:
            if await self.get(match.id) is not None:
                break
            # Deleted by another process (check --repair, a near-race loser): that hash never
            # matches again here, and the next nearest one gets its turn.
            self.cache.forget(match.id)
        return match

    async def near_all(self, phash: int, max_distance: int, limit: int = 8) -> list[NearMatch]:
        """Every indexed image within ``max_distance`` bits, nearest first, at most ``limit`` (the
        console shows an image's near duplicates beside it)."""
        await self.refresh()
        n = len(self.cache.ids)
        if n == 0:
            return []
        if self.cache.near is None:
            self.cache.near = NearIndex()
        found: list[NearMatch] = []
        for distance, i in self.cache.near.within(self.cache.hashes, n, phash, max_distance):
            if (image_id := self.cache.ids[i]) is not None:
                found.append(NearMatch(image_id, int(distance)))
            if len(found) >= limit:
                break
        return found

    async def near_between(self, phash: int, max_distance: int, after: int, before: int) -> NearMatch | None:
        """The nearest row with after < seq < before: images inserted while one was being stored."""
        if max_distance <= 0 or before <= after + 1:  # detection off, or nothing came in between
            return None
        return nearest_row(await self.rows_between(after, before), phash, max_distance)

    async def rows_between(self, after: int, before: int) -> list[tuple[int, str, int]]:
        """(seq, id, unsigned phash) of the rows with after < seq < before."""
        q = select(images.c.seq, images.c.id, images.c.phash).where(
            images.c.seq > after, images.c.seq < before
        )
        async with self.engine.connect() as conn:
            return [(seq, image_id, to_unsigned(h)) for seq, image_id, h in (await conn.execute(q)).all()]

    async def insert(self, row: dict) -> int:
        """Insert one image row and return its seq; DuplicateHash if its SHA-256 is already there."""
        values = dict(row, phash=to_signed(row["phash"]))
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(insert(images).values(**values))
        except IntegrityError as exc:
            existing = await self._id_for_sha(row["sha256"])
            if existing is None:  # the UNIQUE that failed was not the hash (id collision): a real bug
                raise
            raise DuplicateHash(existing) from exc
        key = result.inserted_primary_key
        assert key is not None  # an INSERT of one row has its key
        return int(key[0])

    async def insert_many(self, rows: list[dict]) -> list[int]:
        """Insert a batch's rows in one transaction and return their seqs, in order. IntegrityError
        (nothing inserted) when any SHA-256 is indexed already: the caller then inserts one by one."""
        if not rows:
            return []
        values = [dict(row, phash=to_signed(row["phash"])) for row in rows]
        async with self.engine.begin() as conn:
            result = await conn.execute(insert(images).returning(images.c.id, images.c.seq), values)
            seqs: dict[str, int] = {image_id: seq for image_id, seq in result.all()}
        return [int(seqs[row["id"]]) for row in rows]

    async def delete_many(self, image_ids: list[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(images).where(images.c.id.in_(image_ids)))
        for image_id in image_ids:
            self.cache.forget(image_id)

    async def get(self, image_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(images).where(images.c.id == image_id))).mappings().first()
        return _row_dict(row) if row else None

    async def column_pages(
        self, columns: Sequence[str], labels: tuple[str, ...], page: int = 10_000
    ) -> AsyncIterator[list[tuple]]:
        """The given columns of the rows with these labels, in seq order, a page at a time (keyset
        pagination on seq): the caller keeps what it needs of a page and lets the page go, so a
        million rows never exist as rows all at once. ``phash`` comes back unsigned."""
        wanted = [images.c[name] for name in columns]
        unsign = columns.index("phash") if "phash" in columns else None
        last = 0
        while True:
            q = (
                select(images.c.seq, *wanted)
                .where(images.c.label.in_(labels), images.c.seq > last)
                .order_by(images.c.seq)
                .limit(page)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            if not rows:
                return
            last = rows[-1][0]
            out = [tuple(row[1:]) for row in rows]
            if unsign is not None:
                out = [(*r[:unsign], to_unsigned(r[unsign]), *r[unsign + 1 :]) for r in out]
            yield out
            if len(rows) < page:
                return

    async def all_rows(self, labels: tuple[str, ...] | None = None) -> list[dict]:
        q = select(images).order_by(images.c.seq)
        if labels is not None:
            q = q.where(images.c.label.in_(labels))
        async with self.engine.connect() as conn:
            return [_row_dict(r) for r in (await conn.execute(q)).mappings()]

    async def update(self, image_id: str, **values) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(images).where(images.c.id == image_id).values(**values))

    @contextlib.asynccontextmanager
    async def locked_row(self, image_id: str):
        """PostgreSQL: ``SELECT ... FOR UPDATE`` on the image's row, in a transaction that lasts the
        block; yields (connection, row or None). Every host editing the same image waits here, so a
        read-modify-write of its metadata file (shared bucket) and row is never lost."""
        async with self.engine.begin() as conn:
            q = select(images).where(images.c.id == image_id).with_for_update()
            row = (await conn.execute(q)).mappings().first()
            yield conn, (_row_dict(row) if row else None)

    @property
    def shared(self) -> bool:
        """True when other hosts may use this database (row locks serialise edits, not files)."""
        return self.engine.dialect.name != "sqlite"

    async def set_splits_once(self, decided: dict[str, tuple[str, str]]) -> int:
        """(split_group, split) per id, written only where no side is stored yet; rows changed."""
        changed = 0
        items = list(decided.items())
        for start in range(0, len(items), 500):  # one transaction per 500 rows
            async with self.engine.begin() as conn:
                for image_id, (group, side) in items[start : start + 500]:
                    result = await conn.execute(
                        update(images)
                        .where(images.c.id == image_id, images.c.split.is_(None))
                        .values(split_group=group, split=side)
                    )
                    changed += result.rowcount or 0
        return changed

    async def delete(self, image_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(images).where(images.c.id == image_id))
        self.cache.forget(image_id)

    async def row_count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(images))).scalar() or 0)

    async def count_by_label_source(self) -> list[tuple[str, str, int]]:
        q = select(images.c.label, images.c.source, func.count()).group_by(images.c.label, images.c.source)
        async with self.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(q)).all()]


def nearest_row(rows: list[tuple[int, str, int]], phash: int, max_distance: int) -> NearMatch | None:
    """The nearest of (seq, id, unsigned phash) rows within max_distance bits of phash, or None."""
    found = [((h ^ phash).bit_count(), seq, image_id) for seq, image_id, h in rows]
    best = min((f for f in found if f[0] <= max_distance), default=None)
    return NearMatch(best[2], best[0]) if best else None


def _row_dict(row) -> dict:
    d = dict(row)
    d["phash"] = to_unsigned(d["phash"])
    return d
