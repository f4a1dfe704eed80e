"""Scrape throughput: a full scrape (fetch + validate + dedupe + store) against a bare download loop.

A fake Unsplash/Pexels/CivitAI API with its CDN runs on 127.0.0.1 (tests/scraper/fake_api.py) and
serves real-sized JPEGs. Both measurements run in the same process against the same server:

  baseline   a bare httpx loop that downloads every image URL, one after the other
  scrape     run_scrape() over the three sources, rate limits lifted (rate_limit_per_hour: 0)

    .venv/bin/python bench/scrape_bench.py [--per-source 100] [--size 1280x853]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from config.settings import Settings  # noqa: E402
from scraper.fetcher_manager import run_scrape  # noqa: E402
from tests.images import encode, scene  # noqa: E402
from tests.scraper.fake_api import SOURCES, FakeSourceApi  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-source", type=int, default=100, help="images listed by each fake source")
    parser.add_argument("--size", default="1280x853", help="image size WxH (default a web-sized photo)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best is kept")
    return parser.parse_args()


def photo_like(index: int, width: int, height: int) -> bytes:
    """A JPEG about the size of a web photo: a scene plus sensor-like noise (smooth scenes compress
    to a fraction of a real photo's bytes)."""
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    return encode(Image.blend(scene(index, (width, height)), noise, 0.12), "JPEG", quality=88)


async def bare_loop(urls: list[str]) -> float:
    started = time.perf_counter()
    async with httpx.AsyncClient() as client:
        for url in urls:
            (await client.get(url)).raise_for_status()
    return time.perf_counter() - started


def write_sources(path: Path, per_source: int) -> None:
    lines = ["sources:"]
    for name, label in (("unsplash", "real"), ("pexels", "real"), ("civitai", "ai")):
        lines.append(
            f"  - {{name: {name}, label: {label}, queries: [bench], "
            f"limit_per_query: {per_source}, rate_limit_per_hour: 0}}"
        )
    path.write_text("\n".join(lines) + "\n")


async def ingest_only(images: list[bytes]) -> float:
    """The dataset's share: ingest the same bytes from memory, one after the other, no HTTP."""
    from dataset.manager import DatasetManager

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, dataset_dir=Path(tmp) / "datasets", scheduler_enabled=False)
        async with DatasetManager(settings) as dataset:
            started = time.perf_counter()
            for data in images:
                await dataset.ingest(data, {"source": "bench", "label": "real"})
            return time.perf_counter() - started


async def scrape_once(api: FakeSourceApi, per_source: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sources(root / "sources.yaml", per_source)
        settings = Settings(
            _env_file=None,
            dataset_dir=root / "datasets",
            sources_config=root / "sources.yaml",
            scheduler_enabled=False,
            **api.settings_overrides(),
        )
        started = time.perf_counter()
        report = await run_scrape(settings)
        return time.perf_counter() - started, report


async def main() -> None:
    args = parse_args()
    width, height = map(int, args.size.lower().split("x"))
    logging.basicConfig(level=logging.WARNING)
    total = args.per_source * len(SOURCES)
    print(f"preparing {total} JPEGs of {width}x{height} ...", flush=True)
    with FakeSourceApi(args.per_source, lambda i: photo_like(i, width, height)) as api:
        urls = api.image_urls()
        for i in range(total):
            api.image(i)  # draw every image before any clock starts
        mean_kb = sum(len(api.image(i)) for i in range(total)) / total / 1024
        bare = min([await bare_loop(urls) for _ in range(args.repeats)])
        ingest = min([await ingest_only([api.image(i) for i in range(total)]) for _ in range(args.repeats)])
        runs = [await scrape_once(api, args.per_source) for _ in range(args.repeats)]
    elapsed, report = min(runs, key=lambda run: run[0])
    t = report["totals"]
    handled = t["downloaded"]
    print(f"images: {total} ({mean_kb:.0f} KiB mean JPEG), best of {args.repeats} runs")
    print(f"baseline  bare httpx download loop        : {total / bare:7.1f} images/s ({bare:.2f}s)")
    print(f"reference dataset ingest only, no HTTP    : {total / ingest:7.1f} images/s ({ingest:.2f}s)")
    print(f"scrape    fetch+validate+dedupe+store     : {handled / elapsed:7.1f} images/s ({elapsed:.2f}s)")
    print(
        f"          {t['api_requests']} API requests, {handled} downloaded, {t['stored']} stored, "
        f"{t['duplicates']} duplicates, {t['near_duplicates']} near-duplicates, "
        f"rejected {t['rejected']}, errors {t['errors']}"
    )
    print(f"ratio scrape / baseline: {(handled / elapsed) / (total / bare):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
