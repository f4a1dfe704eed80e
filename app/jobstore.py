"""Job history in the database (table ``jobs`` of dataset/db.py, same DATABASE_URL as the dedupe index).

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``interrupted``; a scheduled run
that finds its kind already running is recorded directly as ``skipped``. Timestamps are ISO-8601
UTC strings, which sort correctly as text on every backend.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from config.clock import iso_micro
from config.settings import Settings
from dataset.db import jobs_table, migrate
from dataset.db import make_engine as make_db_engine

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "interrupted", "skipped")


def make_engine(settings: Settings) -> AsyncEngine:
    """The engine on DATABASE_URL, from the one factory (dataset.db.make_engine: on SQLite WAL
    and a 30 s wait for another writer); the jobs table lives beside the image index."""
    return make_db_engine(settings.db_url)


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record_skipped(self, kind: str, reason: str) -> dict:
        """The one place a scheduled run that did not happen is written down (its kind was busy, or
        it was missed): a ``skipped`` row, started and finished now, ``error`` saying why."""
        now = iso_micro()
        return await self.insert(
            id=str(uuid.uuid4()),
            kind=kind,
            trigger="scheduled",
            state="skipped",
            started_at=now,
            finished_at=now,
            error=reason,
        )

    async def create_tables(self) -> None:
        """Migrate the schema (dataset/migrations holds the jobs table's history too)."""
        await migrate(self.engine)

    async def insert(self, **row: Any) -> dict:
        row.setdefault("created_at", iso_micro())
        async with self.engine.begin() as conn:
            await conn.execute(jobs_table.insert().values(**row))
        return await self.get(row["id"]) or row

    async def update(self, job_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**values))

    async def get(self, job_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs_table).where(jobs_table.c.id == job_id))).first()
        return dict(row._mapping) if row else None

    async def list(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[dict]:
        query = select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)
        if kind:
            query = query.where(jobs_table.c.kind == kind)
        if state:
            query = query.where(jobs_table.c.state == state)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]

    async def active_kinds(self) -> set[str]:
        """Kinds with a row queued or running (in this process, another one, or a dead one)."""
        query = select(jobs_table.c.kind).where(jobs_table.c.state.in_(ACTIVE_STATES)).distinct()
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars().all())

    async def active(self, kind: str) -> dict | None:
        """The newest queued or running row of ``kind``."""
        query = (
            select(jobs_table)
            .where(jobs_table.c.kind == kind, jobs_table.c.state.in_(ACTIVE_STATES))
            .order_by(jobs_table.c.created_at.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return dict(row._mapping) if row else None

    async def interrupt_leftovers(self, kind: str) -> int:
        """Mark rows of ``kind`` a dead process left queued/running (shutdown, kill -9) as interrupted.

        A row queued for a worker is waiting, not left over: it is never marked here."""
        waiting_for_worker = (jobs_table.c.state == "queued") & (jobs_table.c.runner == "worker")
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(jobs_table)
                .where(jobs_table.c.kind == kind, jobs_table.c.state.in_(ACTIVE_STATES), ~waiting_for_worker)
                .values(
                    state="interrupted",
                    finished_at=iso_micro(),
                    error="the process running this job stopped (its lock was free: shutdown, kill -9 "
                    "or a lost host)",
                )
            )
        return result.rowcount or 0

    async def waiting_for_worker(self, kind: str) -> dict | None:
        """The oldest row of ``kind`` queued for a worker."""
        query = (
            select(jobs_table)
            .where(jobs_table.c.kind == kind, jobs_table.c.state == "queued", jobs_table.c.runner == "worker")
            .order_by(jobs_table.c.created_at)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return dict(row._mapping) if row else None

    async def claim(self, job_id: str, **values: Any) -> bool:
        """Queued -> running for this process, if no one else claimed it first (compare-and-set)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.state == "queued")
                .values(state="running", **values)
            )
        return (result.rowcount or 0) == 1

    async def latest_by_kind(self, state: str | None = None) -> dict[str, dict]:
        """The newest job of each kind (optionally only in ``state``), as {kind: row}."""
        newest = select(jobs_table.c.kind, func.max(jobs_table.c.created_at).label("created_at"))
        if state:
            newest = newest.where(jobs_table.c.state == state)
        latest = newest.group_by(jobs_table.c.kind).subquery()
        query = select(jobs_table).join(
            latest, (jobs_table.c.kind == latest.c.kind) & (jobs_table.c.created_at == latest.c.created_at)
        )
        if state:
            query = query.where(jobs_table.c.state == state)
        async with self.engine.connect() as conn:
            return {r.kind: dict(r._mapping) for r in (await conn.execute(query)).all()}
