"""Two replicas drawing on one source's quota through the database (scraper/shared_rate.py)."""

from __future__ import annotations

import math
import time

import pytest

from dataset.db import migrate
from dataset.index import make_engine
from scraper.http import TokenBucket
from scraper.shared_rate import SharedTokenBucket

pytestmark = pytest.mark.postgres_only
PER_HOUR = 3600  # one a second, a burst of 60


@pytest.fixture
async def engines(postgres_server):
    url = postgres_server.new_database()
    made = [make_engine(url), make_engine(url)]
    await migrate(made[0])
    yield made
    for engine in made:
        await engine.dispose()


async def test_two_replicas_share_one_bucket(engines, sleeps):
    replicas = [SharedTokenBucket(engine, "pexels", PER_HOUR) for engine in engines]
    started = time.monotonic()
    for i in range(100):
        await replicas[i % 2].acquire(sleeps)
    # The bucket refills by the database's clock (one token a second) while the 100 calls run: a
    # loaded machine took 2 s over them, so that much refill is allowed for, measured.
    refilled = time.monotonic() - started
    # 60 tokens of burst for the whole fleet: the other ~40 calls wait, ever longer.
    assert 39 - math.ceil(refilled) <= len(sleeps.calls) <= 40
    assert sleeps.calls == sorted(sleeps.calls)
    assert 40 - refilled - 1.5 <= sleeps.calls[-1] <= 40 + 1.5
    other = SharedTokenBucket(engines[0], "unsplash", PER_HOUR)
    assert await other.acquire(sleeps) == 0.0  # another source has its own row


async def test_in_process_buckets_would_spend_the_quota_twice(sleeps):
    """The contrast: one bucket per process lets each replica use the whole burst."""
    replicas = [TokenBucket(PER_HOUR), TokenBucket(PER_HOUR)]
    for i in range(100):
        await replicas[i % 2].acquire(sleeps)
    assert sleeps.calls == []
