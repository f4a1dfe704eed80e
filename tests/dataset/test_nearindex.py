"""Multi-index hashing finds exactly what a full scan finds (dataset/nearindex.py), in memory and
mapped back from its file."""

from __future__ import annotations

import numpy as np
import pytest

from dataset.index import PhashCache, to_signed
from dataset.nearindex import NearFileInvalid, NearIndex, merge, read_tables, write_tables


def _hashes(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)  # all 64 bits used


def _queries(base: np.ndarray, radius: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(60):  # near copies of stored hashes: 0..radius+2 random bits flipped
        flips = rng.choice(64, size=int(rng.integers(0, radius + 3)), replace=False)
        out.append(int(base[i * 50]) ^ sum(1 << int(b) for b in flips))
    return out


def _scan(base: np.ndarray, seqs: np.ndarray, q: int, radius: int, dead=()) -> list[tuple[int, int]]:
    dist = np.bitwise_count(base ^ np.uint64(q))
    return sorted(
        (int(dist[i]), int(seqs[i])) for i in np.flatnonzero(dist <= radius) if int(seqs[i]) not in dead
    )


@pytest.mark.parametrize("radius", [1, 3, 4, 6, 7, 8, 11, 12, 16])
def test_finds_every_hash_within_the_radius_like_a_full_scan(radius):
    base = _hashes(radius, 4000)
    seqs = np.arange(1, 4001, dtype=np.int64) * 3  # seqs need not be dense
    index = NearIndex()
    index.add(seqs[:2000], base[:2000])
    index.adopt(merge(index.tables, index.tail_hashes, index.tail_seqs), 2000)  # tables ...
    index.add(seqs[2000:3000], base[2000:3000])
    index.adopt(merge(*index.snapshot()), 1000)  # ... merged again with new rows ...
    index.add(seqs[3000:], base[3000:])  # ... and a tail scanned in full
    assert index.tables.n == 3000 and index.tail_size == 1000
    for q in _queries(base, radius, radius + 100):
        assert index.within(q, radius) == _scan(base, seqs, q, radius)


def test_rows_added_while_tables_were_being_made_stay_in_the_tail():
    base = _hashes(5, 3000)
    seqs = np.arange(1, 3001, dtype=np.int64)
    index = NearIndex()
    index.add(seqs[:2000], base[:2000])
    snapshot = index.snapshot()
    index.add(seqs[2000:], base[2000:])  # arrives during the merge
    index.adopt(merge(*snapshot), len(snapshot[1]))
    assert (index.tables.n, index.tail_size) == (2000, 1000)
    for q in _queries(base, 6, 7):
        assert index.within(q, 6) == _scan(base, seqs, q, 6)


def test_a_written_file_maps_back_to_the_same_answers_and_watermark(tmp_path):
    base = _hashes(9, 5000)
    seqs = np.arange(1, 5001, dtype=np.int64)
    index = NearIndex()
    index.add(seqs[:3000], base[:3000])
    index.adopt(merge(*index.snapshot()), 3000)
    index.add(seqs[3000:], base[3000:])
    path = tmp_path / "dedupe.db.near"
    written = write_tables(path, *index.snapshot(), dead={7, 4000}, gaps=[5001], meta={"watermark": 5002})
    tables, stored = read_tables(path)
    assert (tables.n, written.n) == (5000, 5000)
    assert (stored.dead, stored.gaps, stored.meta) == ([7, 4000], [5001], {"watermark": 5002})
    reopened = NearIndex(tables, stored.dead)
    for q in _queries(base, 6, 11):
        assert reopened.within(q, 6) == _scan(base, seqs, q, 6, dead={7, 4000})
    assert list(tmp_path.iterdir()) == [path]  # no temp file left


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-100], "bytes where its header says"),
        (lambda data: data[:5000] + bytes([data[5000] ^ 1]) + data[5001:], "checksum"),
        (lambda data: b"PNG" + data[3:], "not a near-duplicate file"),
        (lambda data: data[:45] + b"\xff" + data[46:], "header is damaged"),
        (
            lambda data: (
                data[:44] + data[44:200].replace(b'"watermark": 1000', b'"watermark": 9000') + data[200:]
            ),
            "checksum",
        ),
        (lambda data: b"", "not a near-duplicate file"),
    ],
)
def test_a_damaged_file_is_refused_with_its_reason(tmp_path, damage, reason):
    index = NearIndex()
    index.add(np.arange(1, 1001, dtype=np.int64), _hashes(3, 1000))
    path = tmp_path / "x.near"
    write_tables(path, *index.snapshot(), dead=(), gaps=(), meta={"watermark": 1000})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(NearFileInvalid, match=reason):
        read_tables(path)


def test_no_file_is_its_own_reason(tmp_path):
    with pytest.raises(NearFileInvalid) as caught:
        read_tables(tmp_path / "missing.near")
    assert caught.value.reason == "no file"


def test_phash_cache_skips_forgotten_images_and_reports_the_nearest():
    cache = PhashCache()
    far = (1 << 63) | (0xFF << 20)  # 9 bits from 0
    cache.add([(1, to_signed(0b1111)), (2, to_signed(0b1)), (3, to_signed(far))])
    assert cache.nearest(0, 6)[0] == (1, 2)
    cache.forget(2)
    assert cache.nearest(0, 6) == [(4, 1)]
    assert cache.nearest(0, 3) == [] and cache.nearest(0, 0) == []
    cache.add([(4, to_signed(0))])  # appended after the tables were built
    assert cache.nearest(0, 6)[0] == (0, 4)
