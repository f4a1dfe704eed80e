"""A real server on loopback: `exposr-trainer serve`, a training job, SIGTERM in the middle.

The job must end as ``interrupted``, the process must exit cleanly, and the registry must be
untouched (no entry, no version folder)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.images import encode, jpeg, noise

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "server-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(tmp_path: Path) -> dict:
    for label, make in (("real", lambda i: jpeg(300 + i)), ("ai", lambda i: encode(noise(400 + i), "PNG"))):
        folder = tmp_path / label
        folder.mkdir()
        for i in range(6):
            (folder / f"{i}.img").with_suffix(".jpg" if label == "real" else ".png").write_bytes(make(i))
    (tmp_path / "sources.yaml").write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "folder", "label": "real", "path": str(tmp_path / "real")},
                    {"name": "folder", "label": "ai", "path": str(tmp_path / "ai")},
                ]
            }
        )
    )
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRAINER_API_KEY": TOKEN,
        "SCHEDULER_ENABLED": "false",
        "DATASET_DIR": str(tmp_path / "datasets"),
        "MODELS_DIR": str(tmp_path / "models"),
        "LOG_DIR": str(tmp_path / "logs"),
        "SOURCES_CONFIG": str(tmp_path / "sources.yaml"),
        "TRAIN_ARCH": "resnet10t",
        "TRAIN_PRETRAINED": "false",
        "TRAIN_IMAGE_SIZE": "32",
        "TRAIN_EPOCHS": "1000",
        "TRAIN_BATCH_SIZE": "4",
        "MIN_TRAIN_SAMPLES": "8",
        "MIN_IMAGE_SIDE": "16",
        "VAL_FRACTION": "0.25",
        "EXPOSR_CORE_ENDPOINT": "http://127.0.0.1:9/none",
    }


def wait_until(check, seconds: float = 120, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_state(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}", headers=AUTH).json()


def test_sigterm_during_training_interrupts_the_job_and_leaves_the_registry(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=server_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_until(lambda: _healthy(client), 300, "the server to start")
            scrape = client.post("/scrape", headers=AUTH).json()["job_id"]
            assert wait_until(lambda: _done(client, scrape), 300, "the scrape")["state"] == "succeeded"
            train = client.post("/train", headers=AUTH).json()["job_id"]
            child = wait_until(lambda: _child_pid(tmp_path / "logs" / "trainer.log"), 300, "the child")
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM).
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.stderr.read().decode(errors="replace")
    with sqlite3.connect(tmp_path / "datasets" / "dedupe.db") as db:
        state, error = db.execute("SELECT state, error FROM jobs WHERE id = ?", (train,)).fetchone()
    assert state == "interrupted", stderr[-3000:]
    assert "shutdown" in error
    registry = tmp_path / "models" / "registry.json"
    assert not registry.exists() or json.loads(registry.read_text()) == []
    assert not (tmp_path / "models" / "vit").exists()
    assert "Application shutdown complete" in stderr
    with pytest.raises(ProcessLookupError):  # the training child was terminated, not orphaned
        os.kill(child, 0)
    assert TOKEN not in stderr and TOKEN not in (tmp_path / "logs" / "trainer.log").read_text()


def _child_pid(log_file: Path) -> int | None:
    match = re.search(r"started train in process (\d+)", log_file.read_text())
    return int(match[1]) if match else None


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _done(client: httpx.Client, job_id: str) -> dict | None:
    job = job_state(client, job_id)
    return job if job["state"] not in ("queued", "running") else None
