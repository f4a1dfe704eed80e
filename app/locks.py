"""Locks that say "a live process holds this", across processes and, on PostgreSQL, across hosts.

* SQLite (one host by construction): an OS file lock under DATASET_DIR (:class:`app.filelock.
  ProcessLock`); the kernel drops it when the holder exits, even after kill -9.
* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) held on a connection of its own
  for as long as the lock is held. The server drops it when that connection ends: at once when the
  holder's process dies (its socket is closed by the kernel), and within about 25 s when the
  holder's whole host is gone (TCP keepalives, dataset/index.py PG_KEEPALIVES).

Either way the lock tells a live job from a dead process's leftover without any clock, and the
same code in app/jobs.py and app/scheduler.py serves one host and many.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.filelock import ProcessLock
from config.settings import Settings
from dataset.schema import advisory_key

log = logging.getLogger(__name__)


class HolderLock(Protocol):
    description: str

    async def acquire(self) -> bool: ...

    async def release(self) -> None: ...


class FileHolderLock:
    def __init__(self, lock: ProcessLock) -> None:
        self.lock = lock
        self.description = str(lock.path)

    async def acquire(self) -> bool:
        return await asyncio.to_thread(self.lock.acquire)

    async def release(self) -> None:
        self.lock.release()


class AdvisoryLock:
    """pg_try_advisory_lock on a connection kept for the lock's lifetime."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = advisory_key(name)
        self.description = f"PostgreSQL advisory lock {name!r}"
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> bool:
        if self._conn is not None:
            return False  # not re-entrant: one holder per object, like the file lock
        conn = await self.engine.connect()
        try:
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar()
            await conn.commit()  # no transaction left open while the lock is held
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            await conn.commit()
        except (DBAPIError, OSError) as exc:  # the connection is gone, and the lock went with it
            log.warning("releasing %s: %s (the server dropped it with the connection)", self.description, exc)
            await conn.invalidate()
        finally:
            await conn.close()

    @property
    def held(self) -> bool:
        return self._conn is not None


def holder_lock(settings: Settings, engine: AsyncEngine, name: str) -> HolderLock:
    """The lock called ``name`` for this deployment: advisory on PostgreSQL, a file otherwise."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, name)
    return FileHolderLock(ProcessLock(settings.dataset_dir / f"{name}.lock"))
