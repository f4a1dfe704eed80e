"""A source's token bucket kept in the database, so N replicas share one hourly quota.

Same contract as :class:`scraper.http.TokenBucket` (``acquire(sleep)`` takes a token at once, going
into debt when the bucket is empty, then sleeps until the debt is repaid; the burst is one
minute's worth), but the state is the ``rate_buckets`` row (dataset/db.py) of the source and each take is one
atomic ``UPDATE ... RETURNING`` on PostgreSQL, timed by the database server's clock (the replicas'
clocks never matter). Used when DATABASE_URL is PostgreSQL; one host with SQLite keeps the
in-process bucket.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dataset.db import rate_buckets
from scraper.http import Sleep

NOW = "extract(epoch from clock_timestamp())"
TABLE = rate_buckets.name  # defined in dataset/db.py, made by migration 0003


class SharedTokenBucket:
    def __init__(self, engine: AsyncEngine, source: str, per_hour: int) -> None:
        self.engine = engine
        self.source = source
        self.per_hour = per_hour
        self.capacity = max(1.0, per_hour / 60)

    async def take(self) -> float:
        """Take one token; returns the tokens left (negative: the debt to wait out)."""
        params = {"s": self.source, "cap": self.capacity, "rate": self.per_hour / 3600}
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    f"INSERT INTO {TABLE} (source, tokens, updated_at) VALUES (:s, :cap, {NOW}) "
                    "ON CONFLICT (source) DO NOTHING"
                ),
                params,
            )
            return float(
                (
                    await conn.execute(
                        text(
                            f"UPDATE {TABLE} SET "
                            f"tokens = LEAST(:cap, tokens + ({NOW} - updated_at) * :rate) - 1, "
                            f"updated_at = {NOW} WHERE source = :s RETURNING tokens"
                        ),
                        params,
                    )
                ).scalar_one()
            )

    async def acquire(self, sleep: Sleep) -> float:
        """Take one token, sleeping until it is ours; returns the seconds waited."""
        if self.per_hour <= 0:
            return 0.0
        tokens = await self.take()
        if tokens >= 0:
            return 0.0
        delay = -tokens * 3600 / self.per_hour
        await sleep(delay)
        return delay
