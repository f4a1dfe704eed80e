"""Locks that say "a live process holds this", across processes and, on PostgreSQL, across hosts.

* SQLite (one host by construction): an OS file lock under DATASET_DIR (:class:`config.filelock.
  ProcessLock`); the kernel drops it when the holder exits, even after kill -9.
* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) held on a connection of its own
  for as long as the lock is held. The server drops it when that connection ends: at once when the
  holder's process dies (its socket is closed by the kernel), and within about 25 s when the
  holder's whole host is gone (TCP keepalives, dataset/db.py PG_KEEPALIVES).

Either way the lock tells a live job from a dead process's leftover without any clock, and the
same code in app/jobs.py and app/scheduler.py serves one host and many.

A PostgreSQL restart (or a failover) drops every lock with its connection while the holders still
run. So on PostgreSQL:

* the holder watches its lock connection (:meth:`AdvisoryLock.watch`: a ``SELECT 1`` every
  LOCK_CHECK_S, answered within LOCK_PING_TIMEOUT_S); when it is lost, the holder re-takes the lock
  on a new connection, trying until LOCK_REGAIN_S have passed, and otherwise stops its job
  (``on_lost``) -- well before the server would free the lock of a holder cut off by the network
  (dataset/db.py PG_KEEPALIVES, about 25 s);
* another process that takes a free lock trusts it only once the server has been up for
  LOCK_SETTLE_S (:meth:`AdvisoryLock.settled`): until then a job row still marked active belongs to
  a holder that may be re-taking its lock, so that process answers "busy" instead of calling the
  row a dead one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.filelock import ProcessLock
from config.settings import Settings
from dataset.db import advisory_key

log = logging.getLogger(__name__)

LOCK_CHECK_S = 1.0  # how often a holder asks its lock connection whether it is still there
LOCK_PING_TIMEOUT_S = 2.0
LOCK_REGAIN_S = 15.0  # a holder that cannot re-take its lock within this stops its job
LOCK_SETTLE_S = 20.0  # after a server start, a free lock is trusted only after this (> the above)


class HolderLock(Protocol):
    description: str

    async def acquire(self) -> bool: ...

    async def release(self) -> None: ...

    async def settled(self, since: float | None = None) -> bool: ...

    def watch(self, on_lost: Callable[[str], None]) -> None: ...


class FileHolderLock:
    def __init__(self, lock: ProcessLock) -> None:
        self.lock = lock
        self.description = str(lock.path)

    async def acquire(self) -> bool:
        return await asyncio.to_thread(self.lock.acquire)

    async def release(self) -> None:
        self.lock.release()

    async def settled(self, since: float | None = None) -> bool:
        return True  # the kernel keeps a file lock as long as its holder lives

    def watch(self, on_lost: Callable[[str], None]) -> None:
        return None


class AdvisoryLock:
    """pg_try_advisory_lock on a connection kept for the lock's lifetime."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = advisory_key(name)
        self.description = f"PostgreSQL advisory lock {name!r}"
        self._conn: AsyncConnection | None = None
        self._watcher: asyncio.Task | None = None

    async def acquire(self) -> bool:
        if self._conn is not None:
            return False  # not re-entrant: one holder per object, like the file lock
        conn = await self._try_lock()
        if conn is None:
            return False
        self._conn = conn
        return True

    async def _try_lock(self) -> AsyncConnection | None:
        """A new connection holding the lock, or None when another session holds it."""
        conn = await self.engine.connect()
        try:
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar()
            await conn.commit()  # no transaction left open while the lock is held
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return None
        return conn

    async def settled(self, since: float | None = None) -> bool:
        """Whether a free lock can be trusted for a job begun at ``since`` (epoch seconds): the job
        began after the server's start (no restart dropped its lock), or the server has been up
        long enough that a holder from before a restart has re-taken its lock or stopped."""
        query = text(
            "SELECT extract(epoch FROM pg_postmaster_start_time()), "
            "extract(epoch FROM now() - pg_postmaster_start_time())"
        )
        async with self.engine.connect() as conn:
            started, uptime = (await conn.execute(query)).one()
        return (since is not None and since > float(started)) or float(uptime) >= LOCK_SETTLE_S

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """While held: notice a lost lock connection, re-take the lock, or call ``on_lost(reason)``."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(on_lost), name=f"watch-{self.name}")

    async def _watch(self, on_lost: Callable[[str], None]) -> None:
        while self._conn is not None:
            await asyncio.sleep(LOCK_CHECK_S)
            conn = self._conn
            if conn is None:
                return
            try:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), LOCK_PING_TIMEOUT_S)
                await conn.commit()
                continue
            except Exception as exc:  # the connection (and with it the lock) is gone, or hangs
                lost = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s: its connection was lost (%s); taking it again", self.description, lost)
            with contextlib.suppress(Exception):
                await conn.invalidate()
            if await self._regain():
                log.warning("%s taken again after the database connection was lost", self.description)
                continue
            self._conn = None
            on_lost(
                f"its lock on the database ({self.description}) was lost ({lost}) and could not be "
                f"taken again within {LOCK_REGAIN_S:g} s; stopped so that another replica may run it"
            )
            return

    async def _regain(self) -> bool:
        deadline = asyncio.get_running_loop().time() + LOCK_REGAIN_S
        while asyncio.get_running_loop().time() < deadline and self._conn is not None:
            try:
                conn = await asyncio.wait_for(self._try_lock(), LOCK_PING_TIMEOUT_S * 2)
            except Exception as exc:  # the server is still restarting: try again
                log.debug("%s: not yet (%s)", self.description, exc)
                conn = None
            if conn is not None:
                self._conn = conn
                return True
            await asyncio.sleep(0.5)
        return False

    async def release(self) -> None:
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        self._watcher = None
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
