"""Labeler throughput against a stand-in Exposr-Core on loopback, and the review queue's cost.

    python bench/label_bench.py [--images 300] [--latency-ms 25] [--concurrency 4] [--folder DIR]

1. Baseline: one POST per image, one after another, with a bare httpx loop (no dataset reads,
   no parsing, no writes) against the same stand-in Core.
2. Labeler: ``run_labeler`` with ``EXPOSR_CORE_CONCURRENCY`` requests in flight: reads each image
   from the dataset, validates Core's answer, rewrites metadata and the index row.
   Ratio = baseline time / labeler time (above 1: bounded concurrency pays for the extra work).
   A second run (nothing new: one probe, the images to skip found by one index query) is timed too.
3. Review queue: ``review_queue`` (ranked from the index; reads the metadata of disputed images and
   of the page) against ``DatasetManager.samples()`` alone (one index query). Ratio = queue / index.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, UploadFile  # noqa: E402

from config.settings import Settings  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from labeler.review import review_queue  # noqa: E402
from labeler.scoring import run_labeler  # noqa: E402
from tests.images import jpeg  # noqa: E402

PATH = "/api/v1/analyze"


def stand_in_core(latency_s: float) -> FastAPI:
    app = FastAPI()

    @app.post(PATH)
    async def analyze(file: UploadFile) -> dict:
        data = await file.read()
        await asyncio.sleep(latency_s)  # the model's inference time on Core's side
        return {"ai_probability": (len(data) % 100) / 100, "model_version": "bench"}

    return app


def serve(app: FastAPI) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}", server, thread


def load_images(n: int, folder: Path | None) -> list[bytes]:
    if folder is None:
        return [jpeg(i, size=(320, 240)) for i in range(n)]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    return [p.read_bytes() for p in files[:n]]


async def baseline(url: str, images: list[bytes]) -> float:
    start = time.perf_counter()
    async with httpx.AsyncClient() as client:
        for i, data in enumerate(images):
            response = await client.post(url, files={"file": (f"{i}.jpg", data, "image/jpeg")})
            response.raise_for_status()
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> None:
    images = load_images(args.images, args.folder)
    url, server, thread = serve(stand_in_core(args.latency_ms / 1000))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            _env_file=None,
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            exposr_core_endpoint=url,
            exposr_core_concurrency=args.concurrency,
            scheduler_enabled=False,
            min_image_side=16,
        )
        async with DatasetManager(settings) as dm:
            stored = [
                await dm.ingest(data, {"source": "bench", "label": ("real", "ai", "unlabeled")[i % 3]})
                for i, data in enumerate(images)
            ]
        n = sum(o.status == "stored" for o in stored)

        base_s = await baseline(url, images[:n])
        start = time.perf_counter()
        report = await run_labeler(settings)
        label_s = time.perf_counter() - start
        start = time.perf_counter()
        again = await run_labeler(settings)  # what every scrape's follow-up costs when nothing is new
        noop_s = time.perf_counter() - start

        async with DatasetManager(settings) as dm:
            start = time.perf_counter()
            await dm.samples(labels=("real", "ai", "unlabeled"))
            index_s = time.perf_counter() - start
            start = time.perf_counter()
            page = await review_queue(dm, settings, limit=50)
            queue_s = time.perf_counter() - start
    server.should_exit = True
    thread.join(10)

    print(f"images: {n} stored, Core latency {args.latency_ms} ms, concurrency {args.concurrency}")
    print(f"baseline sequential POST loop: {base_s:.2f} s ({n / base_s:.1f} images/s)")
    print(
        f"labeler: {label_s:.2f} s ({report['scored'] / label_s:.1f} images/s), scored {report['scored']}, "
        f"errors {report['errors']}"
    )
    print(f"ratio labeler speed / baseline speed: {base_s / label_s:.2f}x")
    print(
        f"second run, nothing new: {noop_s * 1000:.0f} ms (skipped {again['skipped']}, one probe request); "
        f"ratio to the first run {noop_s / label_s:.2f}x"
    )
    print(
        f"index query (samples): {index_s * 1000:.1f} ms; review queue ({page['total']} entries): "
        f"{queue_s * 1000:.1f} ms; ratio {queue_s / index_s:.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--folder", type=Path, default=None, help="use images from this folder instead")
    asyncio.run(main(parser.parse_args()))
