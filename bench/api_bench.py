"""Latency of GET /status and GET /metrics on a running server, idle versus during training.

    python bench/api_bench.py [--folder DIR] [--images 40] [--requests 1000]
                              [--arch resnet10t] [--image-size 96] [--workers 2]

In one run: starts `exposr-trainer serve` on a free loopback port with a temporary dataset
(images generated with Pillow, or DIR/real and DIR/ai with --folder), scrapes them, then
1. baseline: --requests sequential GETs of each endpoint while the service is idle;
2. the same while a training job (a separate process, --workers DataLoader workers) keeps
   every core busy; the job is checked to be still training when the measurement ends.
Prints p50/p99 per endpoint and phase and the ratio training/idle. Targets: p99 during
training <= 50 ms and <= 3x idle.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDPOINTS = ("/status", "/metrics")


def make_images(folder: Path, n: int, ai: bool, seed: int) -> None:
    """Smooth 'photos' for real, noisy pattern fields for ai: enough for a training run."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(n):
        img = Image.new("RGB", (160, 120), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x, y = rng.randrange(160), rng.randrange(120)
            box = [x, y, x + rng.randrange(10, 80), y + rng.randrange(10, 60)]
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        if ai:
            img = Image.blend(img, Image.effect_noise((160, 120), 60).convert("RGB"), 0.3)
        img.filter(ImageFilter.GaussianBlur(1)).save(folder / f"{i}.jpg", quality=90)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(work: Path, sources: Path, args: argparse.Namespace) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRAINER_API_KEY": TOKEN,
        "SCHEDULER_ENABLED": "false",
        "DATASET_DIR": str(work / "datasets"),
        "MODELS_DIR": str(work / "models"),
        "LOG_DIR": str(work / "logs"),
        "SOURCES_CONFIG": str(sources),
        "LOG_LEVEL": "WARNING",
        "TRAIN_ARCH": args.arch,
        "TRAIN_PRETRAINED": "false",
        "TRAIN_IMAGE_SIZE": str(args.image_size),
        "TRAIN_EPOCHS": "10000",
        "TRAIN_BATCH_SIZE": "16",
        "TRAIN_WORKERS": str(args.workers),
        "TRAIN_DEVICE": "cpu",
        "MIN_TRAIN_SAMPLES": "8",
        "EXPOSR_CORE_ENDPOINT": "http://127.0.0.1:9/x",
    }


def wait_until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def job(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}", headers=AUTH).json()


def measure(client: httpx.Client, path: str, n: int) -> list[float]:
    for _ in range(20):  # warm-up: connection, caches
        client.get(path, headers=AUTH)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.get(path, headers=AUTH)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return times


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(args: argparse.Namespace, work: Path) -> dict[str, dict[str, list[float]]]:
    if args.folder:
        real, ai = Path(args.folder) / "real", Path(args.folder) / "ai"
    else:
        real, ai = work / "real", work / "ai"
        make_images(real, args.images, ai=False, seed=1)
        make_images(ai, args.images, ai=True, seed=2)
    sources = work / "sources.yaml"
    sources.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"name": "folder", "label": "real", "path": str(real)},
                    {"name": "folder", "label": "ai", "path": str(ai)},
                ]
            }
        )
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=work,
        env=server_env(work, sources, args),
    )
    results: dict[str, dict[str, list[float]]] = {"idle": {}, "training": {}}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_until(lambda: client.get("/healthz").status_code == 200, 60, "the server")
            scrape = client.post("/scrape", headers=AUTH).json()["job_id"]
            done = wait_until(
                lambda: job(client, scrape)["state"] not in ("queued", "running") and job(client, scrape),
                600,
                "the scrape",
            )
            print(f"scrape: {done['state']}, stored {done['result']['totals']['stored']} images")
            wait_until(lambda: not client.get("/status").json()["running_jobs"], 120, "follow-up jobs")
            for path in ENDPOINTS:
                results["idle"][path] = measure(client, path, args.requests)
            train = client.post("/train", headers=AUTH).json()["job_id"]
            log_file = work / "logs" / "trainer.log"
            wait_until(lambda: job(client, train).get("progress"), 600, "the first training epoch")
            print(f"training running (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            for path in ENDPOINTS:
                results["training"][path] = measure(client, path, args.requests)
            state = job(client, train)["state"]
            if state != "running":
                raise SystemExit(f"training ended ({state}) during the measurement; see {log_file}")
            print(f"still training at the end (load average {os.getloadavg()[0]:.1f})")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return results


def report(results: dict[str, dict[str, list[float]]]) -> bool:
    ok = True
    print(
        f"\n{'endpoint':<10} {'idle p50':>9} {'idle p99':>9} {'train p50':>10} {'train p99':>10} "
        f"{'p99 ratio':>10}"
    )
    for path in ENDPOINTS:
        idle, busy = results["idle"][path], results["training"][path]
        ratio = pct(busy, 99) / pct(idle, 99)
        print(
            f"{path:<10} {pct(idle, 50):8.2f}ms {pct(idle, 99):8.2f}ms {pct(busy, 50):9.2f}ms "
            f"{pct(busy, 99):9.2f}ms {ratio:9.2f}x"
        )
        ok &= pct(busy, 99) <= 50 and ratio <= 3
    print(f"\ntarget (p99 during training <= 50 ms and <= 3x idle): {'met' if ok else 'NOT met'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="a folder with real/ and ai/ image folders (default: generated)")
    parser.add_argument("--images", type=int, default=40, help="generated images per class")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per endpoint and phase")
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2, help="training DataLoader workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        return 0 if report(run(args, Path(tmp))) else 1


if __name__ == "__main__":
    sys.exit(main())
