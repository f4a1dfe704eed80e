"""Issue 21, attack 7: one cache entry must not stop or poison a training. A 24 KB 1-bit
20000x10000 PNG written over an entry raised DecompressionBombError in every DataLoader; three
entries replaced by valid 8x8 red JPEGs were trained on silently. Entries are now tied to their
original (a header with the SHA-256 and size of the original and of the entry) and decoded with
ingest's bounds: such entries are rebuilt from the original and counted, and `check --repair`
removes them."""

from __future__ import annotations

import io

import torch
from PIL import Image

from tests.images import encode, scene
from tests.trainer.test_cache import PRE, _items, _tensors, store
from trainer.cache import ImageCache, cache_key, check_cache


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 10000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def red_jpeg() -> bytes:
    return encode(Image.new("RGB", (8, 8), (255, 0, 0)), "JPEG")


def test_overwritten_cache_entries_are_rebuilt_never_trained_on_and_repair_removes_them(storage):
    samples = [store(storage, f"k{i}", "real", encode(scene(300 + i, (200, 150)), "JPEG")) for i in range(6)]
    cache = ImageCache(storage, PRE.decode_side, 10_000_000)
    cache.build(_items(samples))
    bomb = bomb_png()
    assert len(bomb) < 64 * 1024
    storage.put(cache_key(samples[0].sha256, PRE.decode_side), bomb)
    for sample in samples[1:4]:
        storage.put(cache_key(sample.sha256, PRE.decode_side), red_jpeg())

    found = check_cache(storage, {s.sha256 for s in samples})
    assert found["bad"] == 4 and {b["key"] for b in found["bad_entries"]} == {
        cache_key(s.sha256, PRE.decode_side) for s in samples[:4]
    }

    fresh = _tensors(storage, samples, None)  # what the originals give
    read = _tensors(storage, samples, cache)  # what a training reads through the cache
    assert all(torch.equal(a, b) for a, b in zip(read, fresh, strict=True))
    assert cache.rebuilt.value == 4  # counted, and rewritten from the originals
    assert check_cache(storage, {s.sha256 for s in samples})["bad"] == 0


def test_check_repair_removes_entries_that_are_not_their_originals(storage):
    samples = [store(storage, f"r{i}", "ai", encode(scene(400 + i, (200, 150)), "JPEG")) for i in range(3)]
    ImageCache(storage, PRE.decode_side, 10_000_000).build(_items(samples))
    storage.put(cache_key(samples[2].sha256, PRE.decode_side), red_jpeg())
    repaired = check_cache(storage, {s.sha256 for s in samples}, repair=True)
    assert repaired["bad"] == 1 and repaired["removed"] == 1
    assert not storage.exists(cache_key(samples[2].sha256, PRE.decode_side))
    assert check_cache(storage, {s.sha256 for s in samples})["bad"] == 0
