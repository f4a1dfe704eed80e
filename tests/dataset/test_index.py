"""The pHash cache and index rows, checked against a brute-force answer."""

from __future__ import annotations

import asyncio
import random

import pytest

from dataset.index import DedupeIndex, PhashCache, to_signed, to_unsigned


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
    cache.add([(i + 1, f"id{i}", to_signed(h)) for i, h in enumerate(hashes)])
    assert len(cache) == 3000 and cache.last_seq == 3000
    for _ in range(50):
        q = hashes[rng.randrange(3000)] ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64))
        match = cache.nearest(q, 6)
        assert match is not None and match.distance == brute_nearest(hashes, q, 6)
        assert bin(hashes[int(match.id[2:])] ^ q).count("1") == match.distance
    far = rng.getrandbits(64)
    assert (cache.nearest(far, 3) is None) == (brute_nearest(hashes, far, 3) is None)
    assert cache.nearest(hashes[0], 0) is None  # distance 0 turns the lookup off


def test_rows_already_seen_are_not_added_twice():
    cache = PhashCache()
    rows = [(1, "a", 5), (2, "b", 6)]
    cache.add(rows)
    cache.add(rows + [(3, "c", 7)])  # two refreshes that overlapped
    assert cache.ids == ["a", "b", "c"] and cache.last_seq == 3


def test_forgotten_ids_never_match():
    cache = PhashCache()
    cache.add([(1, "a", to_signed(0xFF)), (2, "b", to_signed(0xFFFF))])
    assert cache.nearest(0xFF, 10).id == "a"
    cache.forget("a")
    assert cache.nearest(0xFF, 10).id == "b"


def test_a_row_committed_after_a_later_one_is_still_picked_up():
    cache = PhashCache()
    cache.add([(1, "a", 5), (3, "c", 7)], now=0.0)  # seq 2 was taken but not committed yet
    assert cache.open_gaps(now=1.0) == [2] and cache.last_seq == 3
    cache.add([(2, "b", 6), (4, "d", 8)], now=2.0)  # the catch-up asked for seq > 3 or seq in (2)
    assert sorted(cache.ids) == ["a", "b", "c", "d"] and cache.open_gaps(now=3.0) == []
    cache.add([(2, "b", 6)], now=4.0)  # an overlapping read adds nothing twice
    assert len(cache) == 4


def test_a_gap_that_never_fills_is_forgotten():
    cache = PhashCache()
    cache.add([(1, "a", 5), (5, "e", 7)], now=0.0)  # 2..4: rolled back (a duplicate lost its race)
    assert cache.open_gaps(now=1.0) == [2, 3, 4]
    assert cache.open_gaps(now=1000.0) == []


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
    for i, phash in enumerate((0b1, 0b111)):  # distances 0 and 2 from the probe 0b1
        await a.insert(index_row(f"x{i}", phash))
    assert (await b.find_near(0b1, 4)).id == "x0"
    await a.delete("x0")
    near = await b.find_near(0b1, 4)
    assert (near.id, near.distance) == ("x1", 2) and "x0" not in b.cache.positions


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

    async def slow_pull(cache):
        queries.append(len(queries))
        await real_pull(cache)
        if len(queries) == 1:
            await a.insert(index_row("late", 0b1011))  # after the first query's read
            committed.set()
            await asyncio.sleep(0.05)  # the other nine ask while this query has not finished

    monkeypatch.setattr(b, "_pull_into", slow_pull)
    first = asyncio.ensure_future(b.refresh())
    await committed.wait()
    await asyncio.gather(first, *(b.refresh() for _ in range(9)))
    assert len(queries) == 2 and "late" in b.cache.positions
    await b.refresh()  # asked after every query so far began: it queries again
    assert len(queries) == 3
