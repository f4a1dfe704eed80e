"""The pHash cache and index rows, checked against a brute-force answer."""

from __future__ import annotations

import random

import pytest

from dataset.index import DedupeIndex, PhashCache, to_signed, to_unsigned


def index_row(image_id: str, phash: int) -> dict:
    return dict(id=image_id, sha256=image_id.rjust(64, "0"), phash=phash, label="real", confidence=None,
                source="s", image_key=f"images/{image_id}.jpg", meta_key=f"meta/{image_id}.json",
                format="JPEG", width=10, height=10, created_at="2025-01-01T00:00:00Z")


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


@pytest.fixture
async def two_indexes(tmp_path):
    """Two indexes on one SQLite file, as two processes have: separate connections and caches."""
    url = f"sqlite+aiosqlite:///{tmp_path}/dedupe.db"
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
