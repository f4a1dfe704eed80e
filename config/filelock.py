"""The one OS file lock (``fcntl.flock``): exclusive, across the processes of one host.

The kernel releases it when the holder closes the file or exits, even after kill -9, so a stale
lock file never blocks anyone. Its users:

- ``dataset/manager.py``: metadata read-modify-write (``DATASET_DIR/.metadata.lock``, blocking);
- ``trainer/registry.py``: ``registry.json`` and the version folders (``.registry.lock``, blocking);
- ``app/locks.py``: holder locks on SQLite, :class:`ProcessLock` (non-blocking, held for the
  process's lifetime, the holder's pid written in the file for people).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import IO


class FileLock:
    """An exclusive flock on ``path`` (its folder is created). ``with FileLock(path):`` waits for it;
    ``acquire(blocking=False)`` answers False at once when another process holds it."""

    def __init__(self, path: Path, *, note_pid: bool = False) -> None:
        self.path = Path(path)
        self.note_pid = note_pid
        self._fh: IO[bytes] | None = None

    def open(self) -> None:
        """Open the lock file (cheap, never waits): an async caller opens it before waiting for the
        lock in a thread, so a cancelled wait still finds the file to close in :meth:`release`."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open until release()

    def acquire(self, blocking: bool = True) -> bool:
        self.open()
        assert self._fh is not None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self._close()
            return False
        if self.note_pid:
            self._fh.truncate(0)
            self._fh.write(f"{os.getpid()}\n".encode())
            self._fh.flush()
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class ProcessLock(FileLock):
    """A non-blocking lock held for the process's lifetime (or until :meth:`release`), its holder's
    pid in the file: "only one scheduler per dataset", "only one process marks leftover jobs"."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, note_pid=True)

    def acquire(self, blocking: bool = False) -> bool:
        return super().acquire(blocking)
