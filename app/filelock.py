"""An exclusive, non-blocking OS file lock held for a process's lifetime.

The kernel releases it when the process exits, even after kill -9, so a stale lock file never
blocks the next start. Used for "only one scheduler per dataset" and "only one process marks
leftover jobs as interrupted".
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class ProcessLock:
    """An exclusive, non-blocking flock held for the process lifetime (released when it exits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
