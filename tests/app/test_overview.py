from __future__ import annotations

import asyncio

from app.overview import TTLCache


class Source:
    def __init__(self) -> None:
        self.value, self.calls = 0, 0
        self.gate: asyncio.Event | None = None

    async def load(self) -> int:
        self.calls += 1
        seen = self.value
        if self.gate is not None:
            await self.gate.wait()
        return seen


async def test_fresh_value_is_served_from_memory():
    source = Source()
    cache = TTLCache(3600, source.load)
    assert await cache.get() == 0
    source.value = 1
    assert await cache.get() == 0 and source.calls == 1


async def test_expired_value_is_refreshed_in_the_background():
    source = Source()
    cache = TTLCache(0, source.load)
    await cache.get()
    source.value = 5
    assert await cache.get() == 0  # the old value answers at once ...
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await cache.get() == 5  # ... and the refreshed one the next time


async def test_invalidate_reloads_and_discards_a_load_begun_before_it():
    source = Source()
    cache = TTLCache(3600, source.load)
    gate = asyncio.Event()
    source.gate = gate
    stale = asyncio.create_task(cache.get())  # reads value 0, then waits
    await asyncio.sleep(0)
    source.value, source.gate = 7, None
    cache.invalidate()
    assert await cache.get() == 7
    gate.set()
    assert await stale == 0  # its caller gets what it read ...
    assert await cache.get() == 7  # ... but the cache keeps the newer value
