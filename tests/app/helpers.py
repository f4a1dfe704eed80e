"""Functions the job tests run in a spawned child process (importable by module path)."""

from __future__ import annotations

import os
import time


def quick(settings, progress):
    progress({"step": 1, "total": 2, "pid": os.getpid()})
    progress({"step": 2, "total": 2, "pid": os.getpid()})
    return {"pid": os.getpid(), "models_dir": settings.models_dir}


def too_small(settings, progress):
    raise ValueError(f"need at least {settings.min_train_samples} labelled images, found 3")


def slow(settings, progress):
    progress({"pid": os.getpid(), "state": "sleeping"})
    time.sleep(120)
    return {"never": True}
