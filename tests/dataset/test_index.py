"""The pHash cache and index rows, checked against a brute-force answer."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from sqlalchemy import text

from dataset.index import MAX_GAPS, DedupeIndex, PhashCache, images, to_signed, to_unsigned


def index_row(image_id: str, phash: int) -> dict:
    return dict(
        id=image_id,
        sha256=image_id.rjust(64, "0"),
        phash=phash,
        label="real",
        confidence=None,
        source="s",
        image_key=f"images/{image_id}.jpg",
        meta_key=f"meta/{image_id}.json",
        format="JPEG",
        width=10,
        height=10,
        created_at="2025-01-01T00:00:00Z",
    )


def brute_nearest(hashes: list[int], q: int, max_d: int) -> int | None:
    dists = [bin(h ^ q).count("1") for h in hashes]
    best = min(dists) if dists else None
    return best if best is not None and best <= max_d else None


@pytest.mark.parametrize("h", [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEF00D])
def test_signed_round_trip(h):
    assert -(2**63) <= to_signed(h) < 2**63
    assert to_unsigned(to_signed(h)) == h


def test_cache_nearest_matches_brute_force_and_grows():
    rng = random.Random(1)
    hashes = [rng.getrandbits(64) for _ in range(3000)]  # more than the initial 1024 slots
    cache = PhashCache()
    cache.add([(i + 1, to_signed(h)) for i, h in enumerate(hashes)])
    assert len(cache) == 3000 and cache.last_seq == 3000
    for _ in range(50):
        q = hashes[rng.randrange(3000)] ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64))
        distance, seq = cache.nearest(q, 6)[0]
        assert distance == brute_nearest(hashes, q, 6)
        assert bin(hashes[seq - 1] ^ q).count("1") == distance
    far = rng.getrandbits(64)
    assert (cache.nearest(far, 3) == []) == (brute_nearest(hashes, far, 3) is None)
    assert cache.nearest(hashes[0], 0) == []  # distance 0 turns the lookup off


def test_rows_already_seen_are_not_added_twice():
    cache = PhashCache()
    rows = [(1, 5), (2, 6)]
    cache.add(rows)
    cache.add(rows + [(3, 7)])  # two refreshes that overlapped
    assert len(cache) == 3 and cache.last_seq == 3 and cache.nearest(5, 1) == [(0, 1), (1, 3)]


def test_forgotten_rows_never_match():
    cache = PhashCache()
    cache.add([(1, to_signed(0xFF)), (2, to_signed(0xFFFF))])
    assert cache.nearest(0xFF, 10)[0] == (0, 1)
    cache.forget(1)
    assert cache.nearest(0xFF, 10) == [(8, 2)] and 1 not in cache and 2 in cache


def test_a_row_committed_after_a_later_one_is_still_picked_up():
    cache = PhashCache()
    cache.add([(1, 5), (3, 7)], now=0.0)  # seq 2 was taken but not committed yet
    assert cache.open_gaps(now=1.0) == [2] and cache.last_seq == 3
    cache.add([(2, 6), (4, 8)], now=2.0)  # the catch-up asked for seq > 3 or seq in (2)
    assert all(seq in cache for seq in (1, 2, 3, 4)) and cache.open_gaps(now=3.0) == []
    cache.add([(2, 6)], now=4.0)  # an overlapping read adds nothing twice
    assert len(cache) == 4


def test_a_gap_that_never_fills_is_forgotten():
    cache = PhashCache()
    cache.add([(1, 5), (5, 7)], now=0.0)  # 2..4: rolled back (a duplicate lost its race)
    assert cache.open_gaps(now=1.0) == [2, 3, 4]
    assert cache.open_gaps(now=1000.0) == []


def test_only_the_newest_gaps_of_a_long_read_are_kept():
    cache = PhashCache()
    cache.add([(1, 5), (MAX_GAPS + 100, 7)], now=0.0)  # a bulk load over long-deleted rows
    gaps = cache.open_gaps(now=1.0)
    assert len(gaps) == MAX_GAPS and gaps[-1] == MAX_GAPS + 99 and gaps[0] == 100


def test_own_rows_join_memory_only_where_they_follow_on():
    cache = PhashCache()
    cache.add([(1, 5)])
    cache.add_following([(2, 6), (3, 7), (5, 9)])  # 4: another writer's, not known here
    assert cache.last_seq == 3 and 5 not in cache and cache.gaps == {}
    assert cache.covers(0, 4) and not cache.covers(0, 6)


@pytest.fixture
def index_url(database_url, tmp_path) -> str:
    return database_url or f"sqlite+aiosqlite:///{tmp_path}/dedupe.db"


@pytest.fixture
async def two_indexes(index_url):
    """Two indexes on one database, as two processes have: separate connections and caches."""
    url = index_url
    a, b = DedupeIndex(url), DedupeIndex(url)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def test_a_second_index_sees_rows_inserted_by_the_first(two_indexes):
    a, b = two_indexes
    await a.insert(index_row("x1", 2**64 - 2))
    near = await b.find_near(2**64 - 1, 4)
    assert (near.id, near.distance) == ("x1", 1)
    assert (await b.get("x1"))["phash"] == 2**64 - 2  # unsigned again after the SQL round trip
    await a.delete("x1")
    assert await b.find_near(2**64 - 1, 4) is None  # b notices the row is gone


async def test_a_match_deleted_elsewhere_gives_way_to_the_next_nearest(two_indexes):
    a, b = two_indexes
    seqs = [await a.insert(index_row(f"x{i}", phash)) for i, phash in enumerate((0b1, 0b111))]  # 0, 2 bits
    assert (await b.find_near(0b1, 4)).id == "x0"
    await a.delete("x0")
    near = await b.find_near(0b1, 4)
    assert (near.id, near.distance) == ("x1", 2) and seqs[0] not in b.cache and seqs[1] in b.cache


async def test_near_lookup_finds_a_row_committed_out_of_sequence_order(two_indexes, db_backend):
    """PostgreSQL hands out seq at insert and shows the row at commit: seq 1 may commit after seq 2."""
    if db_backend == "sqlite":
        pytest.skip("SQLite runs one writer at a time: rows always commit in seq order there")
    from sqlalchemy import insert

    from dataset.index import images

    a, b = two_indexes
    slow = await a.engine.connect()
    transaction = await slow.begin()
    await slow.execute(insert(images).values(**dict(index_row("early", 0), phash=to_signed(0xF0F0))))
    await a.insert(index_row("late", 0xFFFF_0000_0000_0000))  # a later seq, committed first
    assert (await b.find_near(0xFFFF_0000_0000_0000, 2)).id == "late"  # b's cache is now past "early"
    await transaction.commit()
    await slow.close()
    near = await b.find_near(0xF0F0, 0 + 2)
    assert near is not None and (near.id, near.distance) == ("early", 0)


async def test_concurrent_catch_ups_share_queries_and_miss_no_row(two_indexes, monkeypatch):
    # Ten lookups at once (uploads arriving together): the first queries; the other nine ask while it
    # runs, after a row was committed that its read did not see -- so one more query, shared by the
    # nine, must run, and it sees that row.
    a, b = two_indexes
    queries, real_pull = [], b._pull_into
    committed = asyncio.Event()

    late = []

    async def slow_pull(cache):
        queries.append(len(queries))
        await real_pull(cache)
        if len(queries) == 1:
            late.append(await a.insert(index_row("late", 0b1011)))  # after the first query's read
            committed.set()
            await asyncio.sleep(0.05)  # the other nine ask while this query has not finished

    monkeypatch.setattr(b, "_pull_into", slow_pull)
    first = asyncio.ensure_future(b.refresh())
    await committed.wait()
    await asyncio.gather(first, *(b.refresh() for _ in range(9)))
    assert len(queries) == 2 and late[0] in b.cache
    await b.refresh()  # asked after every query so far began: it queries again
    assert len(queries) == 3


# ---- the near-duplicate file beside the index (dataset/nearindex.py) -------------------------------


@pytest.fixture
def small_merges(monkeypatch):
    """Tables (and a file) from 8 rows on instead of 65,536: the same code path at a test's size."""
    monkeypatch.setattr("dataset.nearindex.TAIL_MERGE_ROWS", 8)


async def _filled(url: str, near_dir, n: int, start: int = 0) -> tuple[DedupeIndex, list[int]]:
    index = DedupeIndex(url, near_dir=near_dir)
    await index.open()
    rng = random.Random(start)
    hashes = [rng.getrandbits(64) for _ in range(n)]
    for i, h in enumerate(hashes):
        await index.insert(index_row(f"r{start + i}", h))
    await index.refresh()
    await index.near_written()
    return index, hashes


async def _reopened(url: str, near_dir) -> DedupeIndex:
    index = DedupeIndex(url, near_dir=near_dir)
    await index.open()
    return index


async def test_the_near_file_is_written_and_opened_from_its_watermark(index_url, tmp_path, small_merges):
    first, hashes = await _filled(index_url, tmp_path, 20)
    await first.delete("r3")  # after the file was written: in it, but the row check finds it gone
    await first.close()
    assert first.near_state.writes >= 1 and first.near_state.file is not None
    again = await _reopened(index_url, tmp_path)
    try:
        state = again.near_state
        assert (state.source, state.rebuilds, state.reason) == ("file", 0, None)
        assert again.cache.near.tables.n == 20 and again.cache.near.tail_size == 0  # no row read again
        for i in (0, 7, 19):
            near = await again.find_near(hashes[i] ^ 0b101, 4)
            assert (near.id, near.distance) == (f"r{i}", 2)
        assert await again.find_near(hashes[3], 4) is None  # deleted before: never reported
        # rows written after the file (another process) come from the database, after the watermark
        other = DedupeIndex(index_url, near_dir=tmp_path / "elsewhere")
        await other.open()
        await other.insert(index_row("late", 0xABCDEF))
        await other.close()
        assert (await again.find_near(0xABCDEE, 2)).id == "late"
    finally:
        await again.close()


async def test_a_damaged_near_file_is_rebuilt_counted_and_written_anew(index_url, tmp_path, small_merges):
    index, hashes = await _filled(index_url, tmp_path, 12)
    await index.close()
    path = Path(index.near_state.file)
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # one byte of the tables
    path.write_bytes(bytes(data))
    again = await _reopened(index_url, tmp_path)
    try:
        state = again.near_state
        assert (state.source, state.rebuilds) == ("built", 1) and "checksum" in state.reason
        assert (await again.find_near(hashes[5], 0 + 1)).id == "r5"  # every row read from the index
    finally:
        await again.close()
    third = await _reopened(index_url, tmp_path)  # the rebuilt file is whole again
    assert (third.near_state.source, third.near_state.rebuilds) == ("file", 0)
    await third.close()


async def test_a_near_file_of_another_database_is_not_used(index_url, tmp_path, small_merges, request):
    index, _ = await _filled(index_url, tmp_path, 10)
    await index.close()
    if index.engine.dialect.name == "sqlite":
        other_url = f"sqlite+aiosqlite:///{tmp_path}/other/dedupe.db"
    else:
        other_url = request.getfixturevalue("postgres_server").new_database()
    other, other_hashes = await _filled(other_url, tmp_path, 3, start=100)  # too few for a file
    await other.close()
    Path(other.near_state.file).parent.mkdir(parents=True, exist_ok=True)
    Path(other.near_state.file).write_bytes(Path(index.near_state.file).read_bytes())  # a stray copy
    again = await _reopened(other_url, tmp_path)
    try:
        state = again.near_state
        assert state.rebuilds == 1 and "another database" in state.reason
        assert len(again.cache) == 3 and (await again.find_near(other_hashes[1], 1)).id == "r101"
        assert await again.find_near(next(iter(index.cache.near.tables.hashes.tolist())), 1) is None
    finally:
        await again.close()


async def test_a_near_file_ahead_of_its_database_is_not_used(index_url, tmp_path, small_merges):
    # The database was restored from a backup older than the file: its rows are numbered again.
    index, _ = await _filled(index_url, tmp_path, 10)
    async with index.engine.begin() as conn:
        await conn.execute(images.delete().where(images.c.id.in_([f"r{i}" for i in range(5, 10)])))
        if index.engine.dialect.name == "sqlite":
            await conn.execute(text("UPDATE sqlite_sequence SET seq = 5 WHERE name = 'images'"))
        else:
            await conn.execute(text("SELECT setval(pg_get_serial_sequence('images', 'seq'), 5)"))
    await index.close()
    again = await _reopened(index_url, tmp_path)
    try:
        assert again.near_state.rebuilds == 1 and "past the database's counter" in again.near_state.reason
        await again.insert(index_row("new", 0x1234))  # seq 6 again: must be found, not shadowed
        assert (await again.find_near(0x1235, 1)).id == "new" and len(again.cache) == 6
    finally:
        await again.close()


async def test_a_near_file_whose_hashes_differ_from_the_rows_is_not_used(index_url, tmp_path, small_merges):
    index, _ = await _filled(index_url, tmp_path, 10)
    async with index.engine.begin() as conn:
        await conn.execute(images.update().where(images.c.id == "r0").values(phash=to_signed(0x77)))
    await index.close()
    again = await _reopened(index_url, tmp_path)
    try:
        assert again.near_state.rebuilds == 1 and "another pHash" in again.near_state.reason
        assert (await again.find_near(0x76, 1)).id == "r0"
    finally:
        await again.close()
