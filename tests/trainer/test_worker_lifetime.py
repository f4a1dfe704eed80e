"""DataLoader workers end with the process that started them, even when it is killed with SIGKILL.

torch's own check (the worker looks at its parent between items) does not help a worker stuck in a
slow read; such a worker would live on as an orphan holding its memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from dataset.storage import LocalStorage
    from tests.images import jpeg
    from trainer.data import Preprocessing, StoredImages, make_loader, train_transform

    class SlowStorage(LocalStorage):
        # Reads after the first batch hang, like an S3 read that never answers.
        def get(self, key):
            if not key.endswith(("0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg")):
                time.sleep(120)
            return super().get(key)

    storage = SlowStorage({folder!r})
    keys = []
    for i in range(64):
        key = f"images/2026/01/01/{{i:04d}}.jpg"
        storage.put(key, jpeg(i, size=(64, 48)))
        keys.append(key)
    pre = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    data = StoredImages(storage, keys, [i % 2 for i in range(64)], train_transform(pre), 10**8)
    loader = make_loader(data, batch_size=4, shuffle=False, workers=2, seed=0)
    batches = iter(loader)
    next(batches)              # workers are up, and they keep prefetching
    print("ready", flush=True)
    time.sleep(600)
""")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_when_the_training_process_is_killed(tmp_path):
    code = CHILD.format(root=str(ROOT), folder=str(tmp_path / "ds"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = [pid for pid in _children(proc.pid) if _alive(pid)]
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 120
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "orphaned DataLoader workers"
    finally:
        proc.kill()
        for pid in workers:  # never leave a test's orphans behind, whatever happened
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
