"""The dedupe index: one SQL row per stored image (SQLAlchemy async, SQLite by default).

Exact duplicates: ``sha256`` is UNIQUE, so two identical images racing each other (in one
process or several) end with one row; the loser gets :class:`DuplicateHash` with the winner's id.

Near duplicates: :class:`PhashCache` holds every 64-bit perceptual hash in memory, keyed by the
row's ``seq`` (dataset/nearindex.py: multi-index hashing, a fraction of a millisecond at 10M
hashes), and catches up with rows other processes inserted by reading ``seq > last``. The
structure is kept in a file beside the index with the seq up to which it holds rows (its
watermark), so opening reads only the rows after it; a file that is damaged, of another database
or ahead of it is rebuilt from the rows, never used (:attr:`DedupeIndex.near_state` counts those).
Rows that land between one image's near check and its own insert are looked at afterwards by
:meth:`DedupeIndex.earlier_near` -- from memory when this process wrote them, else with one query
-- so racing near duplicates are caught too: the later row yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, IntegrityError

from config.clock import iso_seconds, utc_now
from config.errors import DatabaseUnavailable, IndexUnusable
from dataset import nearindex
from dataset.db import (
    describe_db,
    images,
    index_state,
    make_engine,
    masked_url,
    migrate,
    sqlite_path,
    unavailable,
)
from dataset.errors import DuplicateHash, NearFileInvalid
from dataset.nearindex import NearFile, NearIndex, read_tables, write_tables

log = logging.getLogger(__name__)

# SQLite's words for a file that is not (or no longer) a database it can read.
_CORRUPT_MARKERS = ("not a database", "malformed", "file is encrypted", "disk image is malformed")


def to_signed(h: int) -> int:
    """SQL integers are signed 64-bit: store the unsigned pHash bit pattern as its signed twin."""
    return h - (1 << 64) if h >= 1 << 63 else h


def to_unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


# How long a sequence number skipped by the cache's catch-up is asked for again, and how many.
GAP_SECONDS = 120.0
MAX_GAPS = 10_000
CATCH_UP_PAGE = 50_000
RECHECK_GAP_SECONDS = 10.0  # gaps the re-check after an insert asks for (see DedupeIndex.look)
VERIFY_SAMPLES = 16  # rows of a near-duplicate file compared with the database when it is opened


@dataclass(frozen=True)
class NearMatch:
    id: str
    distance: int


class PhashCache:
    """Every indexed pHash (:class:`NearIndex`, keyed by the row's ``seq``) and how far the catch-up
    has read: ``last_seq`` and the *gaps* below it.

    Catch-up reads ``seq > last_seq``, plus the gaps: on PostgreSQL a sequence number is taken at
    insert but becomes visible at commit, so row 7 can appear after row 8 was read. Every seq
    skipped over is remembered and asked for again until it shows up or :data:`GAP_SECONDS` pass
    (an insert is one short transaction: by then it was rolled back, or deleted).
    """

    def __init__(
        self,
        near: NearIndex | None = None,
        last_seq: int = 0,
        gaps: Iterable[int] = (),
        now: float | None = None,
        track_gaps: bool = True,
    ) -> None:
        self.near = near if near is not None else NearIndex()
        self.last_seq = last_seq
        now = time.monotonic() if now is None else now
        self.gaps: dict[int, float] = dict.fromkeys(gaps, now)  # seq not seen yet -> first missed
        # SQLite commits rows in seq order (one writer at a time): a seq missing below one that was
        # read never shows up later, so there is nothing to ask for again.
        self.track_gaps = track_gaps

    def __len__(self) -> int:
        return len(self.near)

    def __contains__(self, seq: object) -> bool:
        return seq in self.near

    def open_gaps(self, now: float | None = None) -> list[int]:
        """The gaps still worth asking for (older ones are forgotten here)."""
        now = time.monotonic() if now is None else now
        for seq in [s for s, since in self.gaps.items() if now - since > GAP_SECONDS]:
            del self.gaps[seq]
        if len(self.gaps) > MAX_GAPS:  # a flood of rolled-back inserts: keep the newest
            for seq in sorted(self.gaps)[: len(self.gaps) - MAX_GAPS]:
                del self.gaps[seq]
        return sorted(self.gaps)

    def covers(self, after: int, before: int) -> bool:
        """Whether every committed row with after < seq < before was read into memory."""
        return self.last_seq >= before - 1 and not any(after < g < before for g in self.gaps)

    def add(self, rows: Sequence[tuple[int, int]], now: float | None = None) -> None:
        """rows: (seq, signed phash), every committed row above ``last_seq`` up to the largest seq
        given (a catch-up's read), plus any of the gaps; rows already seen are skipped."""
        if len(rows) == 0:
            return
        # fromiter, not np.array(rows): numpy takes a database row object apart ~100x slower
        seqs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        signed = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        self.add_arrays(seqs, signed, now)

    def add_arrays(self, seqs: np.ndarray, signed: np.ndarray, now: float | None = None) -> None:
        seqs, first = np.unique(seqs, return_index=True)  # sorted, each row once
        signed = signed[first]
        fresh = seqs > self.last_seq
        if self.gaps:
            fresh |= np.isin(seqs, np.fromiter(self.gaps, dtype=np.int64, count=len(self.gaps)))
        seqs, signed = seqs[fresh], signed[fresh]
        if len(seqs) == 0:
            return
        now = time.monotonic() if now is None else now
        for seq in seqs[seqs <= self.last_seq].tolist():
            self.gaps.pop(seq, None)
        above = seqs[seqs > self.last_seq]
        if len(above):
            if self.track_gaps:
                self._note_gaps(above, now)
            self.last_seq = int(above[-1])
        self.near.add(seqs, signed.view(np.uint64))

    def _note_gaps(self, above: np.ndarray, now: float) -> None:
        """Remember the seqs between last_seq and the newest row read that were not there (the newest
        MAX_GAPS of them: a bulk load's long-deleted rows are not worth asking for)."""
        steps = np.diff(np.concatenate(([self.last_seq], above)))
        ends = np.flatnonzero(steps > 1)
        missing: list[int] = []
        for k in ends[::-1].tolist():
            top = int(above[k])
            low = top - int(steps[k]) + 1  # the row before it, plus one
            stop = max(low - 1, top - 1 - (MAX_GAPS - len(missing)))
            missing.extend(range(top - 1, stop, -1))
            if len(missing) >= MAX_GAPS:
                break
        self.gaps.update(dict.fromkeys(missing, now))

    def add_following(self, rows: Sequence[tuple[int, int]]) -> None:
        """Add rows this process inserted (seq, signed phash) as far as they follow on from
        ``last_seq`` without a hole (or fill a gap): a hole would be a row of another writer that
        only a catch-up may vouch for."""
        fill = [r for r in rows if r[0] in self.gaps]
        following: list[tuple[int, int]] = []
        for row in sorted(r for r in rows if r[0] > self.last_seq):
            if row[0] != self.last_seq + len(following) + 1:
                break
            following.append(row)
        self.add(fill + following)

    def forget(self, seq: int) -> None:
        """The row is gone: its hash never matches again."""
        self.near.forget(seq)

    def nearest(self, phash: int, max_distance: int) -> list[tuple[int, int]]:
        """(distance, seq) of every held hash within max_distance, nearest first; none at distance 0
        (detection off)."""
        if max_distance <= 0:
            return []
        return self.near.within(phash, max_distance)


@dataclass
class NearState:
    """Where this process's near-duplicate structure came from, for logs, tests and benchmarks."""

    file: str | None = None  # the file beside the index, None: kept in memory only
    source: str = "empty"  # "file" (mapped), "built" (every row read), "empty"
    rebuilds: int = 0  # files found stale or damaged and rebuilt by this process
    reason: str | None = None  # why the last one was
    writes: int = 0  # files written
    write_errors: int = 0


@dataclass(frozen=True)
class Look:
    """How far the hashes in memory had read when a near check was made: every committed row with
    ``seq <= seq`` was in memory, but the ``gaps`` (seen out of order, maybe committed since)."""

    seq: int
    gaps: tuple[int, ...] = ()


def near_file_for(db_url: str, folder: Path | None) -> Path | None:
    """Where the near-duplicate structure is kept: beside a SQLite file; for a database server, in
    this host's ``folder`` (DATASET_DIR) under a name made from the URL without its password; None
    (memory only) for an in-memory database or without a folder."""
    path = sqlite_path(db_url)
    if path is not None:
        return path.with_name(path.name + ".near")
    if folder is None or make_url(db_url).get_backend_name() == "sqlite":
        return None
    digest = hashlib.sha256(masked_url(db_url).encode()).hexdigest()[:16]
    return folder / f".near-{digest}"


class DedupeIndex:
    def __init__(self, db_url: str, near_dir: Path | None = None) -> None:
        self.db_url = db_url
        self.engine = make_engine(db_url)
        self.cache = self._new_cache()
        self.near_state = NearState(file=str(path) if (path := near_file_for(db_url, near_dir)) else None)
        self._near_file = path
        self._generation: str | None = None  # the database's index_state generation
        self._merging: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._queries_started = 0  # catch-up queries begun, numbered from 1
        self._caught_up_by = 0  # the number of the last one that finished
        self._caught_up_at = -math.inf  # when that one began (monotonic)

    async def open(self) -> None:
        """Migrate the schema to this release's revision (dataset/db.py), then load the cache.

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
            await self._open_near()
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
        with contextlib.suppress(Exception):  # a file being written: let it finish (seconds at 10M)
            await self.near_written()
        await self.engine.dispose()

    def _new_cache(
        self, near: NearIndex | None = None, last_seq: int = 0, gaps: Iterable[int] = ()
    ) -> PhashCache:
        return PhashCache(near, last_seq, gaps, track_gaps=self.engine.dialect.name != "sqlite")

    async def near_written(self) -> None:
        """Wait for the near-duplicate tables being made now (and their file) to be done."""
        while self._merging is not None:
            await asyncio.shield(self._merging)

    # ---- the near-duplicate structure: opened from its file, caught up, merged, written ----------

    async def _open_near(self) -> None:
        """Map the file beside the index if it is whole and of this database, then read only the rows
        after its watermark; otherwise read every row (and write a new file). A file that fails a
        check is never used: it is rebuilt, counted in ``near_state.rebuilds`` and logged."""
        async with self.engine.connect() as conn:
            self._generation = (
                await conn.execute(select(index_state.c.value).where(index_state.c.name == "generation"))
            ).scalar()
        path = self._near_file
        if path is not None:
            try:
                tables, stored = await asyncio.to_thread(read_tables, path)
                problem = await self._stale(stored)
            except NearFileInvalid as exc:
                problem = exc.reason
            if problem is None:
                watermark = int(stored.meta["watermark"])
                self.cache = self._new_cache(NearIndex(tables, stored.dead), watermark, stored.gaps)
                self.near_state.source = "file"
                await self.refresh()
                return
            if problem != "no file":
                self.near_state.rebuilds += 1
                self.near_state.reason = problem
                log.warning(
                    "near-duplicate file %s not used (%s): rebuilding it from the index", path, problem
                )
        self.cache = self._new_cache()
        await self.refresh()  # every row
        self.near_state.source = "built" if len(self.cache) else "empty"
        await self.near_written()  # a large index: its file is written before the open returns

    async def _stale(self, stored: NearFile) -> str | None:
        """Why a (whole) file does not describe this database, or None: made for another database
        (generation), holding rows past the database's counter (a database restored from a backup),
        or rows whose pHash differs from the database's (a sample)."""
        watermark, generation = stored.meta.get("watermark"), stored.meta.get("generation")
        if not isinstance(watermark, int):
            return "its header has no watermark"
        if generation != self._generation:
            return f"it was written for another database (generation {generation}, not {self._generation})"
        tables = stored.tables
        async with self.engine.connect() as conn:
            counter = await self._seq_counter(conn)
            if counter < watermark:
                return (
                    f"it holds rows up to seq {watermark}, past the database's counter ({counter}): "
                    "a database restored from an earlier backup?"
                )
            if tables.n == 0:
                return None
            picks = np.unique(np.linspace(0, tables.n - 1, VERIFY_SAMPLES).astype(np.int64))
            expected = dict(zip(tables.seqs[picks].tolist(), tables.hashes[picks].tolist(), strict=True))
            q = select(images.c.seq, images.c.phash).where(images.c.seq.in_(list(expected)))
            for seq, phash in (await conn.execute(q)).all():
                if to_unsigned(phash) != expected[seq]:
                    return f"row {seq} has another pHash in the database"
        return None

    async def _seq_counter(self, conn) -> int:
        """The highest seq the database has handed out (deleted rows included): it never goes back,
        but for a database replaced or restored from an older backup."""
        if self.engine.dialect.name == "sqlite":
            q = text("SELECT seq FROM sqlite_sequence WHERE name = 'images'")
        else:
            q = text("SELECT pg_sequence_last_value(pg_get_serial_sequence('images', 'seq')::regclass)")
        return int((await conn.execute(q)).scalar() or 0)

    def _merge_if_due(self) -> None:
        """Start making new tables (and a file) once the tail has TAIL_MERGE_ROWS rows."""
        if self._merging is None and self.cache.near.tail_size >= nearindex.TAIL_MERGE_ROWS:
            self._merging = asyncio.get_running_loop().create_task(self._merge())

    async def _merge(self) -> None:
        """The tail merged into new tables in a worker thread, written to the file when there is
        one; lookups go on meanwhile against the old tables and the whole tail."""
        cache = self.cache
        tables, hashes, seqs = cache.near.snapshot()
        meta = {
            "watermark": cache.last_seq,
            "generation": self._generation,
            "database": self.describe(),
            "written": iso_seconds(utc_now()),
        }
        gaps, dead = list(cache.gaps), set(cache.near.dead)
        try:
            if self._near_file is None:
                merged = await asyncio.to_thread(nearindex.merge, tables, hashes, seqs)
            else:
                try:
                    merged = await asyncio.to_thread(
                        write_tables, self._near_file, tables, hashes, seqs, dead=dead, gaps=gaps, meta=meta
                    )
                    self.near_state.writes += 1
                except OSError as exc:  # a full or read-only disk: go on in memory, say so
                    self.near_state.write_errors += 1
                    log.warning("could not write the near-duplicate file %s: %s", self._near_file, exc)
                    merged = await asyncio.to_thread(nearindex.merge, tables, hashes, seqs)
            cache.near.adopt(merged, len(hashes))
        finally:
            self._merging = None
        self._merge_if_due()

    async def refresh(self, max_age: float = 0.0) -> None:
        """Pull rows inserted since the last look (by this or any other process). Concurrent callers
        share a query: one that began after this call was made has seen every row this call would
        see, so when the lock comes free after such a query, there is nothing left to ask for (the
        uploads that arrive together make one catch-up query, not one each).

        ``max_age``: a look that began at most this many seconds ago is recent enough. For a caller
        that re-checks the rows inserted since the look once its own row is in
        (:meth:`earlier_near`), a row the look missed is found then, so it need not ask per image."""
        asked = self._queries_started  # every query numbered above this began after this call
        async with self._refresh_lock:
            if self._caught_up_by > asked or time.monotonic() - self._caught_up_at <= max_age:
                return
            self._queries_started += 1
            number = self._queries_started
            began = time.monotonic()
            await self._pull_into(self.cache)
            self._caught_up_by, self._caught_up_at = number, began
        self._merge_if_due()

    def look(self) -> Look:
        """Where memory stands now, for :meth:`earlier_near`: the gaps it names are those noticed in
        the last RECHECK_GAP_SECONDS (a row still being committed then; older ones are deleted rows
        far more often, and the catch-up asks for them anyway)."""
        now = time.monotonic()
        recent = sorted(seq for seq, since in self.cache.gaps.items() if now - since <= RECHECK_GAP_SECONDS)
        return Look(self.cache.last_seq, tuple(recent))

    async def _pull_into(self, cache: PhashCache) -> None:
        """Gaps first (one indexed IN lookup), then the new rows in pages of CATCH_UP_PAGE: ORDER BY +
        LIMIT on the primary key (an index range scan once the table has statistics; PostgreSQL's
        autovacuum gathers them within a minute of a bulk load)."""
        columns = (images.c.seq, images.c.phash)
        async with self.engine.connect() as conn:
            gaps = cache.open_gaps()
            found: list[Any] = []
            for start in range(0, len(gaps), 1000):
                q = select(*columns).where(images.c.seq.in_(gaps[start : start + 1000]))
                found += (await conn.execute(q)).all()
            while True:
                rows = await self._rows_after(conn, cache.last_seq)
                cache.add([*found, *rows])
                found = []
                if len(rows) < CATCH_UP_PAGE:
                    break

    async def _rows_after(self, conn, after: int) -> Sequence[Any]:
        """(seq, signed phash) of the next CATCH_UP_PAGE rows after ``after``. Through the driver
        itself where it is one this project ships (aiosqlite, asyncpg): SQLAlchemy's row objects
        cost ~7 us a row, most of reading 10M rows when an index is opened without its file."""
        raw = (await conn.get_raw_connection()).driver_connection
        dialect = self.engine.dialect.name
        if dialect == "sqlite" and hasattr(raw, "execute_fetchall"):
            sql = "SELECT seq, phash FROM images WHERE seq > ? ORDER BY seq LIMIT ?"
            return list(await raw.execute_fetchall(sql, (after, CATCH_UP_PAGE)))
        if dialect == "postgresql" and hasattr(raw, "fetch"):
            sql = "SELECT seq, phash FROM images WHERE seq > $1 ORDER BY seq LIMIT $2"
            return await raw.fetch(sql, after, CATCH_UP_PAGE)
        q = (
            select(images.c.seq, images.c.phash)
            .where(images.c.seq > after)
            .order_by(images.c.seq)
            .limit(CATCH_UP_PAGE)
        )
        return (await conn.execute(q)).all()

    async def _id_for_sha(self, sha256: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(images.c.id).where(images.c.sha256 == sha256))).scalar()

    async def find_shas(self, shas: list[str]) -> dict[str, str]:
        """{sha256: id} of those already indexed: one query per 500 hashes (a batch's exact check)."""
        return dict(await self._pairs_where_in("sha256", "id", shas))

    async def find_near(self, phash: int, max_distance: int) -> NearMatch | None:
        return (await self.near_check(phash, max_distance))[0]

    async def near_check(
        self, phash: int, max_distance: int, max_age: float = 0.0
    ) -> tuple[NearMatch | None, Look]:
        """The nearest indexed image within max_distance, and how far the rows in memory reached
        (rows after it are for :meth:`earlier_near` to check once this image's own row is in).
        ``max_age``: see :meth:`refresh`."""
        await self.refresh(max_age)
        seen = self.look()
        return await self.near_cached(phash, max_distance), seen

    async def near_cached(self, phash: int, max_distance: int) -> NearMatch | None:
        """The nearest image within max_distance among the hashes in memory (no catch-up query: a
        batch catches up once with :meth:`refresh`)."""
        return (await self.near_many([phash], max_distance))[0]

    async def near_many(self, phashes: Sequence[int], max_distance: int) -> list[NearMatch | None]:
        """The nearest image within max_distance of each hash, among the hashes in memory. Only hits
        cost a query, one for the whole batch: it turns their seqs into ids and makes sure their rows
        still exist (deleted by another process -- check --repair, a near-race loser -- a hash never
        matches again here, and the next nearest one gets its turn)."""
        found = [self.cache.nearest(phash, max_distance) for phash in phashes]
        return await self._resolve(found)

    async def _resolve(self, found: Sequence[list[tuple[int, int]]]) -> list[NearMatch | None]:
        """The first candidate (distance, seq) of each list whose row exists, as a NearMatch."""
        out: list[NearMatch | None] = [None] * len(found)
        unresolved = [i for i, candidates in enumerate(found) if candidates]
        gone: set[int] = set()
        while unresolved:
            heads = {}
            for i in unresolved:
                head = next(((d, seq) for d, seq in found[i] if seq not in gone), None)
                if head is not None:
                    heads[i] = head
            if not heads:
                break
            ids = await self.ids_for_seqs({seq for _d, seq in heads.values()})
            unresolved = []
            for i, (distance, seq) in heads.items():
                if seq in ids:
                    out[i] = NearMatch(ids[seq], int(distance))
                else:
                    gone.add(seq)
                    self.cache.forget(seq)
                    unresolved.append(i)
        return out

    async def ids_for_seqs(self, seqs: Iterable[int]) -> dict[int, str]:
        """{seq: id} of the rows that exist (a hit's query is what an upload's near check costs)."""
        return {int(seq): image_id for seq, image_id in await self._pairs_where_in("seq", "id", sorted(seqs))}

    async def _pairs_where_in(self, key: str, other: str, wanted: Sequence[Any]) -> list[tuple[Any, Any]]:
        """(key, other) of the rows whose column ``key`` is one of ``wanted``, 500 at a time. Through
        the driver where it is one this project ships: SQLAlchemy's statement and row objects were
        most of such a query's cost, on the event loop (``key`` and ``other`` are our column names)."""
        found: list[tuple[Any, Any]] = []
        async with self.engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            dialect = self.engine.dialect.name
            for start in range(0, len(wanted), 500):
                part = list(wanted[start : start + 500])
                if dialect == "sqlite" and hasattr(raw, "execute_fetchall"):
                    sql = f"SELECT {key}, {other} FROM images WHERE {key} IN ({', '.join('?' * len(part))})"
                    rows: Iterable[Any] = await raw.execute_fetchall(sql, part)
                elif dialect == "postgresql" and hasattr(raw, "fetch"):
                    array = "int[]" if key == "seq" else "text[]"
                    rows = await raw.fetch(
                        f"SELECT {key}, {other} FROM images WHERE {key} = ANY($1::{array})", part
                    )
                else:
                    columns = select(images.c[key], images.c[other])
                    rows = (await conn.execute(columns.where(images.c[key].in_(part)))).all()
                found += [(row[0], row[1]) for row in rows]
        return found

    async def near_all(self, phash: int, max_distance: int, limit: int = 8) -> list[NearMatch]:
        """Every indexed image within ``max_distance`` bits, nearest first, at most ``limit`` (the
        console shows an image's near duplicates beside it); rows deleted since are left out."""
        await self.refresh()
        candidates = self.cache.nearest(phash, max_distance)[: 4 * limit]
        ids = await self.ids_for_seqs(seq for _, seq in candidates)
        return [NearMatch(ids[seq], int(distance)) for distance, seq in candidates if seq in ids][:limit]

    async def earlier_near(
        self, rows: Sequence[tuple[int, int]], look: Look, max_distance: int
    ) -> dict[int, NearMatch]:
        """For rows just inserted, (seq, unsigned phash) each, with their near check made at ``look``:
        the earlier near duplicate each must yield to -- a row that arrived after the look and
        before it (another batch, another process), or one of the look's gaps that has committed
        since -- keyed by the row's seq. Rows of the same call never count against each other (the
        caller decided those before inserting).

        When memory holds every row since the look (this process wrote them, the usual case) the
        answer comes from memory; otherwise one query reads them, and they join memory as a catch-up
        would."""
        if max_distance <= 0 or not rows:
            return {}
        ours = {seq for seq, _h in rows}
        top = max(ours)
        self.cache.add_following([(seq, to_signed(h)) for seq, h in rows])
        self._merge_if_due()
        if look.gaps or not self.cache.covers(look.seq, top):
            read = await self.rows_between(look.seq, top, also=look.gaps)
            self.cache.add(
                [(seq, to_signed(h)) for seq, _id, h in read] + [(s, to_signed(h)) for s, h in rows]
            )
            others = [r for r in read if r[0] not in ours]
            losers = {}
            for seq, phash in rows:
                earlier = nearest_row([r for r in others if r[0] < seq], phash, max_distance)
                if earlier is not None:
                    losers[seq] = earlier
            return losers
        found = [
            [
                (d, s)
                for d, s in self.cache.nearest(phash, max_distance)
                if look.seq < s < seq and s not in ours
            ]
            for seq, phash in rows
        ]
        matches = await self._resolve(found)
        return {seq: m for (seq, _h), m in zip(rows, matches, strict=True) if m is not None}

    async def rows_between(
        self, after: int, before: int, also: Iterable[int] = ()
    ) -> list[tuple[int, str, int]]:
        """(seq, id, unsigned phash) of the rows with after < seq < before, and of the seqs in ``also``."""
        window = and_(images.c.seq > after, images.c.seq < before)
        extra = sorted(also)
        q = select(images.c.seq, images.c.id, images.c.phash).where(
            or_(window, images.c.seq.in_(extra)) if extra else window
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
            result = await conn.execute(
                delete(images).where(images.c.id.in_(image_ids)).returning(images.c.seq)
            )
            gone = result.scalars().all()
        for seq in gone:
            self.cache.forget(seq)

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

    # ---- the review queue (labeler/review.py documents who is in it and in what order) -----------

    def _queue_where(self, kind: str, real_max: float, ai_min: float):
        c = images.c
        disagreement = and_(
            c.person_label == 0,  # NULL (not known yet) is filled in first: see unknown_person_labels
            c.confidence.isnot(None),
            or_(
                and_(c.label == "real", c.confidence > real_max),
                and_(c.label == "ai", c.confidence < ai_min),
            ),
        )
        unlabeled = c.label == "unlabeled"
        return {"all": or_(unlabeled, disagreement), "disagreement": disagreement, "unlabeled": unlabeled}[
            kind
        ]

    def _text_order(self, column):
        """Python's order of strings (code points): PostgreSQL's default collation may follow a locale."""
        return column.collate("C") if self.engine.dialect.name == "postgresql" else column

    def _queue_order(self, sort: str) -> list:
        c = images.c
        when, image_id = self._text_order(c.created_at), self._text_order(c.id)
        uncertainty = func.coalesce(func.abs(c.confidence - literal(0.5)), literal(0.0))
        if sort == "uncertainty":
            return [uncertainty, when, image_id]
        if sort == "newest":
            return [when.desc(), image_id.desc()]
        unlabeled = c.label == "unlabeled"
        group = case((unlabeled, 1), else_=0)
        key = case(
            (unlabeled, uncertainty),
            (c.label == "real", -c.confidence),
            else_=-(literal(1.0) - c.confidence),
        )
        return [group, key, when, image_id]

    async def review_page(
        self,
        columns: Sequence[str],
        *,
        kind: str,
        sort: str,
        real_max: float,
        ai_min: float,
        label: str | None = None,
        source: str | None = None,
        generator: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[int, list[tuple], dict[str, list[str]]]:
        """(total, rows, facets) of one page of the review queue, ranked, filtered, paged and counted
        by the database: ``rows`` holds ``columns`` of the page's rows in queue order; ``facets`` the
        sources and generators in the ``kind`` queue before the filter."""
        c = images.c
        queue = self._queue_where(kind, real_max, ai_min)
        where = [queue]
        if label:
            where.append(c.label == label)
        if source:
            where.append(c.source == source)
        if generator:
            where.append(func.coalesce(c.generator, "") == generator)
        if min_score is not None or max_score is not None:
            where.append(c.confidence.isnot(None))
        if min_score is not None:
            where.append(c.confidence >= min_score)
        if max_score is not None:
            where.append(c.confidence <= max_score)
        # The order over ids alone (index-only), then the page's rows by id: sorting whole rows
        # would read the table for every row in the queue.
        order = select(c.id).where(*where).order_by(*self._queue_order(sort)).limit(max(0, limit))
        order = order.offset(max(0, offset))
        filtered = case((and_(*where[1:]), 1), else_=0) if len(where) > 1 else literal(1)
        groups = (
            select(c.source, c.generator, func.sum(filtered)).where(queue).group_by(c.source, c.generator)
        )
        async with self.engine.connect() as conn:
            total, sources, generators = 0, set(), set()
            for source_name, generator_name, n in (await conn.execute(groups)).all():
                total += int(n or 0)
                if source_name:
                    sources.add(str(source_name))
                if generator_name:
                    generators.add(str(generator_name))
            ids = list((await conn.execute(order)).scalars().all()) if limit > 0 else []
            found = {}
            if ids:
                q = select(c.id, *(c[name] for name in columns)).where(c.id.in_(ids))
                found = {row[0]: tuple(row[1:]) for row in (await conn.execute(q)).all()}
        rows = [found[image_id] for image_id in ids if image_id in found]
        facets = {"sources": sorted(sources), "generators": sorted(generators)}
        return total, rows, facets

    async def unknown_person_labels(self, real_max: float, ai_min: float) -> list[tuple[str, str]]:
        """(id, meta_key) of the rows the disagreement queue would hold but whose ``person_label`` is
        not known yet (rows from before the column): their metadata files decide it, once."""
        c = images.c
        q = select(c.id, c.meta_key).where(
            c.person_label.is_(None),
            c.confidence.isnot(None),
            or_(
                and_(c.label == "real", c.confidence > real_max), and_(c.label == "ai", c.confidence < ai_min)
            ),
        )
        async with self.engine.connect() as conn:
            return [(image_id, key) for image_id, key in (await conn.execute(q)).all()]

    async def set_person_labels(self, values: dict[str, int]) -> None:
        """Fill in ``person_label`` (id -> 0 or 1) where it is not known yet (a label set meanwhile wins)."""
        items = list(values.items())
        for start in range(0, len(items), 500):
            async with self.engine.begin() as conn:
                for flag in (0, 1):
                    ids = [image_id for image_id, v in items[start : start + 500] if v == flag]
                    if ids:
                        await conn.execute(
                            update(images)
                            .where(images.c.id.in_(ids), images.c.person_label.is_(None))
                            .values(person_label=flag)
                        )

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

    async def added_by_label(self, period_chars: int) -> list[tuple[str, str, int]]:
        """(period, label, rows) per period and label, oldest period first; a period is the first
        ``period_chars`` characters of ``created_at`` (10: a day, 13: an hour)."""
        period = func.substr(images.c.created_at, 1, period_chars)
        query = select(period, images.c.label, func.count()).group_by(period, images.c.label).order_by(period)
        async with self.engine.connect() as conn:
            return [(when, label, n) for when, label, n in (await conn.execute(query)).all()]

    async def ids_after(self, seq: int) -> list[tuple[int, str]]:
        """(seq, id) of the rows inserted after ``seq``, in insertion order."""
        query = select(images.c.seq, images.c.id).where(images.c.seq > seq).order_by(images.c.seq)
        async with self.engine.connect() as conn:
            return [(row_seq, image_id) for row_seq, image_id in (await conn.execute(query)).all()]

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
        await self.delete_many([image_id])

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
