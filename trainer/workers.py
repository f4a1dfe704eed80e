"""The one start method of DataLoader workers, and of every object they share with the trainer.

A training runs in three kinds of process: the CLI's own (started by the shell), a child the
service spawns (app/processes.py, ``spawn``: a clean interpreter, no copy of the event loop) and
a torchrun rank. Python's *default* start method differs between them: a spawned child inherits
``spawn`` as its default, so a DataLoader left to the default started its workers with ``spawn``
there, while the training cache's shared counter had been made for ``fork`` -- "A SemLock created
in a fork context is being shared with a process in a spawn context", and every training through
the service failed. So the start method is chosen here, once, and passed explicitly to both.

``fork`` on Linux: the workers share the trainer's sample tables copy-on-write (trainer/data.py
freezes them out of the garbage collector) and start in milliseconds. Elsewhere (macOS, Windows)
fork is unsafe or absent and torch itself uses ``spawn``.
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext

START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


def worker_context() -> BaseContext:
    """The multiprocessing context of DataLoader workers and the objects they share."""
    return multiprocessing.get_context(START_METHOD)
