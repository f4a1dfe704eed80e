"""What the trainer holds per image: bounded in-flight work, compact per-image columns."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from trainer.cache import bounded_map


class CountingPool(ThreadPoolExecutor):
    """A thread pool that records how many submitted calls were not yet consumed, at most."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = 0
        self.most_pending = 0
        self.consumed = 0
        self.lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self.lock:
            self.submitted += 1
            self.most_pending = max(self.most_pending, self.submitted - self.consumed)
        return super().submit(fn, *args, **kwargs)


def test_bounded_map_keeps_few_calls_in_flight_and_the_order_of_the_items():
    items = [(i, i % 7) for i in range(1000)]
    with CountingPool(3) as pool:
        results = []
        for value in bounded_map(pool, lambda a, b: a * 10 + b, items, in_flight=8):
            pool.consumed += 1
            results.append(value)
    assert results == [a * 10 + b for a, b in items]
    assert pool.submitted == 1000 and pool.most_pending <= 8  # Executor.map would reach 1000
