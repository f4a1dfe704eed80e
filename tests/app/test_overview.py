from __future__ import annotations

import asyncio

from app.overview import Fresh


class Source:
    def __init__(self) -> None:
        self.value, self.calls = 0, 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def load(self) -> int:
        self.calls += 1
        seen = self.value
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return seen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fresh(source: Source, clock: Clock, ttl: float = 10, wait: float = 1.0) -> Fresh:
    return Fresh(ttl, source.load, "the source", wait=wait, clock=clock)


async def test_fresh_value_is_served_from_memory():
    source, clock = Source(), Clock()
    cache = fresh(source, clock)
    assert await cache.get() == (0, None)
    source.value, clock.now = 1, 9
    assert await cache.get() == (0, None) and source.calls == 1


async def test_a_value_past_its_interval_is_served_and_refreshed_in_the_background():
    source, clock = Source(), Clock()
    cache = fresh(source, clock)
    await cache.get()
    source.value, clock.now = 5, 15  # between one and two intervals old
    assert await cache.get() == (0, None)  # the old value answers at once ...
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await cache.get() == (5, None)  # ... and the refreshed one the next time


async def test_a_value_older_than_two_intervals_is_never_served_while_the_source_answers():
    # issue 20: an idle replica answered total 0 once although the database held 117 images
    source, clock = Source(), Clock()
    cache = fresh(source, clock)
    await cache.get()
    source.value, clock.now = 117, 25
    assert await cache.get() == (117, None)


async def test_a_hanging_source_is_answered_from_memory_with_the_age():
    source, clock = Source(), Clock()
    cache = fresh(source, clock, wait=0.05)
    await cache.get()
    source.gate, clock.now = asyncio.Event(), 40
    assert await cache.get() == (0, 40)  # not waited for: the value in memory, 40 s old
    assert await cache.get() == (0, 40) and source.calls == 2  # one refresh in flight, not two
    source.gate.set()  # the source answers (with what it read when asked): fresh again
    for _ in range(3):
        await asyncio.sleep(0)
    assert await cache.get() == (0, None) and source.calls == 2


async def test_a_failing_source_is_answered_from_memory_with_its_reason():
    source, clock = Source(), Clock()
    cache = fresh(source, clock)
    await cache.get()
    source.fail, clock.now = OSError("connection refused"), 30
    assert await cache.get() == (0, 30)
    assert cache.error == "connection refused"
    source.fail = None
    source.value = 4
    assert await cache.get() == (4, None) and cache.error is None


async def test_invalidate_reloads_and_discards_a_load_begun_before_it():
    source, clock = Source(), Clock()
    cache = fresh(source, clock, wait=5)
    gate = asyncio.Event()
    source.gate = gate
    first = asyncio.create_task(cache.get())  # reads value 0, then waits
    await asyncio.sleep(0)
    source.value, source.gate = 7, None
    cache.invalidate()
    assert await cache.get() == (7, None)
    gate.set()
    await first
    assert await cache.get() == (7, None)  # the load begun before invalidate() is not kept


async def test_after_a_write_a_slow_reload_is_waited_for_not_answered_from_memory():
    # Under load the reload after an upload took longer than `wait`: /status then showed the counts
    # from before the upload. After this process's own write, the read waits up to write_wait.
    source, clock = Source(), Clock()
    cache = Fresh(10, source.load, "the source", wait=0.05, clock=clock, write_wait=30)
    await cache.get()
    source.value, source.gate = 2, asyncio.Event()
    cache.invalidate()
    asyncio.get_running_loop().call_later(0.5, source.gate.set)  # ten times `wait`
    assert await cache.get() == (2, None)


async def test_a_source_hanging_after_a_write_is_still_answered_from_memory():
    source, clock = Source(), Clock()
    cache = Fresh(10, source.load, "the source", wait=0.05, clock=clock, write_wait=0.2)
    await cache.get()
    source.gate, clock.now = asyncio.Event(), 3
    cache.invalidate()
    assert await cache.get() == (0, 3)  # bounded: write_wait, then the value in memory with its age
    source.gate.set()
