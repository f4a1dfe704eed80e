"""Multi-index hashing finds exactly what a full scan finds (dataset/nearindex.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.index import PhashCache, to_signed
from dataset.nearindex import NearIndex


@pytest.mark.parametrize("radius", [1, 3, 4, 6, 7, 8, 11, 12, 16])
def test_finds_every_hash_within_the_radius_like_a_full_scan(radius):
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**63, 4000, dtype=np.uint64) * np.uint64(2)
    base += rng.integers(0, 2, 4000, dtype=np.uint64)  # all 64 bits used
    queries = []
    for i in range(60):  # near copies of stored hashes: 0..radius+2 random bits flipped
        flips = rng.choice(64, size=int(rng.integers(0, radius + 3)), replace=False)
        queries.append(int(base[i * 50]) ^ sum(1 << int(b) for b in flips))
    index = NearIndex()
    index.sync(base, 2000)  # incremental: the rest arrives later
    for q in queries:
        dist = np.bitwise_count(base ^ np.uint64(q))
        expected = sorted((int(dist[i]), i) for i in np.flatnonzero(dist <= radius))
        assert index.within(base, len(base), q, radius) == expected


def test_phash_cache_skips_forgotten_images_and_reports_the_nearest():
    cache = PhashCache()
    far = (1 << 63) | (0xFF << 20)  # 9 bits from 0
    cache.add([(1, "a", to_signed(0b1111)), (2, "b", to_signed(0b1)), (3, "c", to_signed(far))])
    assert cache.nearest(0, 6).id == "b" and cache.nearest(0, 6).distance == 1
    cache.forget("b")
    assert cache.nearest(0, 6).id == "a" and cache.nearest(0, 6).distance == 4
    assert cache.nearest(0, 3) is None and cache.nearest(0, 0) is None
    cache.add([(4, "d", to_signed(0))])  # appended after the index was built
    assert cache.nearest(0, 6).id == "d"
