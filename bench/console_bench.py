"""The review console at scale: time per page at N images, and first paint of a 200-thumbnail page.

    python bench/console_bench.py [--images 10000] [--repeat 7] [--queue-only] [--no-paint]

In one run, on a temporary dataset of N small images (70 % unlabeled, half of them scored; 30 %
labelled and scored, some disagreeing with their label), with the service on 127.0.0.1:

0. The queue underneath, in process (no HTTP, before the service starts): one page of the review
   queue as the database ranks, filters, pages and counts it (``review_queue``) against the same page
   ranked in Python from every row (``review_queue_in_python``, how ``GET /review`` worked before
   issue 26's database queue) as the baseline, same pages checked equal. Ratio = database / Python.
   ``--queue-only`` stops after this (the 100k run: no service, no thumbnail pass).

1. Time per page (server side, wall time of the request through a logged-in session): the console's
   review page at the first, a middle and the last page, filtered and sorted, against the JSON
   queue underneath (``GET /review``, same page) as the baseline. Ratio = page / API.
2. First paint at 200 thumbnails, in headless Chromium at 1280 x 900 (a page of 200 thumbnails,
   lazily loaded): first contentful paint and the time until every thumbnail in view is decoded
   (those below load as they scroll into view), with the thumbnails made
   ahead (the background pass) against the same page after the page's thumbnails were deleted
   (made on demand by each request, as before the pass existed) as the baseline.

Targets (issue 26): first paint under 1 s, under 300 ms per page, at 10,000 images.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from config.settings import Settings  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from dataset.storage import image_key, meta_key  # noqa: E402
from labeler.review import ReviewFilter, review_queue, review_queue_in_python  # noqa: E402
from tests.browser.harness import missing_browser, running_server, start_browser  # noqa: E402
from tests.images import encode, jpeg, scene  # noqa: E402

TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BATCH = 200
PHOTOS = 200


def seed(settings: Settings, n: int, photos: int) -> None:
    """``n`` small images, and ``photos`` camera-sized ones (1600 x 1200, half PNG as generators save
    them, source "photos") for the first-paint page: decoding those is what a thumbnail made on
    demand costs. Rows and files are written directly (the same picture under many ids)."""

    async def run() -> None:
        async with DatasetManager(settings) as dataset:
            pictures = {
                "PNG": encode(scene(900_000, (1600, 1200)), "PNG"),
                "JPEG": jpeg(900_001, (1600, 1200)),
            }
            rows, files = [], []
            for i in range(photos):
                row, meta = small_row(n + i)
                fmt = "PNG" if i % 2 else "JPEG"
                ext = "png" if fmt == "PNG" else "jpg"
                row.update(source="photos", label="unlabeled", format=fmt, width=1600, height=1200)
                row["image_key"] = row["image_key"].rsplit(".", 1)[0] + f".{ext}"
                meta.update(source="photos", label="unlabeled", format=fmt, width=1600, height=1200)
                files += [(row["image_key"], pictures[fmt]), (row["meta_key"], json.dumps(meta).encode())]
                rows.append(row)
            await asyncio.to_thread(dataset.storage.put_many, files)
            await dataset.index.insert_many(rows)
            picture = jpeg(100_000, (64, 48), quality=80)
            for start in range(0, n, BATCH):
                rows, files = [], []
                for i in range(start, min(n, start + BATCH)):
                    row, meta = small_row(i)
                    files += [(row["image_key"], picture), (row["meta_key"], json.dumps(meta).encode())]
                    rows.append(row)
                await asyncio.to_thread(dataset.storage.put_many, files)
                await dataset.index.insert_many(rows)
                print(f"  seeded {min(n, start + BATCH)}/{n}", end="\r", flush=True)
        print()

    asyncio.run(run())


def small_row(i: int) -> tuple[dict, dict]:
    """An index row and metadata file of a small image, written directly (the queue and the pages
    read these; ingest's own cost is bench/ingest_bench.py's): 70 % unlabeled, half of them
    scored; 30 % labelled and scored, some disagreeing with their label."""
    image_id = str(uuid.UUID(int=i + 1))
    now = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i)
    label = "unlabeled" if i % 10 < 7 else ("real" if i % 2 else "ai")
    score = (i * 37 % 100) / 100 if (i % 10 >= 7 or i % 2) else None
    sha = hashlib.sha256(image_id.encode()).hexdigest()
    source = ("pexels", "unsplash", "civitai", "upload")[i % 4]
    meta = {
        "id": image_id,
        "source": source,
        "label": label,
        "confidence": score,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "hash": sha,
        "attribution": {"platform": source, "photographer": f"P{i}"},
        "api_data": {},
        "generator": "camera" if label != "ai" else "SDXL 1.0",
        "format": "JPEG",
        "width": 64,
        "height": 48,
    }
    if score is not None:
        meta["scored_by"] = {"kind": "bench"}
    row = {
        "id": image_id,
        "sha256": sha,
        "phash": int.from_bytes(hashlib.sha256(sha.encode()).digest()[:8], "big", signed=True),
        "label": label,
        "confidence": score,
        "scorer": '{"kind": "bench"}' if score is not None else None,
        "source": source,
        "image_key": image_key(image_id, "jpg", now),
        "meta_key": meta_key(image_id, now),
        "format": "JPEG",
        "width": 64,
        "height": 48,
        "created_at": meta["timestamp"],
        "generator": meta["generator"],
    }
    return row, meta


def queue(settings: Settings, images: int, repeat: int) -> None:
    per = 48

    async def queued() -> int:
        async with DatasetManager(settings) as dataset:
            return (await review_queue(dataset, settings, limit=0))["total"]

    total = asyncio.run(queued())
    last_offset = max(0, (total - 1) // per * per)
    cases = [
        ("first page", {}),
        ("middle page", {"offset": last_offset // 2 // per * per}),
        ("last page", {"offset": last_offset}),
        ("disagreements", {"kind": "disagreement"}),
        ("newest", {"sort": "newest", "offset": per * 10}),
        (
            "filtered + sorted",
            {"filters": ReviewFilter(source="unsplash", min_score=0.2, max_score=0.8), "sort": "uncertainty"},
        ),
    ]

    async def run() -> None:
        async with DatasetManager(settings) as dataset:

            async def median(fn, query) -> tuple[float, dict]:
                page = await fn(dataset, settings, limit=per, **query)  # warm (and fill person_label)
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    await fn(dataset, settings, limit=per, **query)
                    times.append(time.perf_counter() - start)
                return statistics.median(times), page

            print(f"\n0. the review queue at {images} images, {total} queued (median of {repeat}, ms)")
            print(f"   {'case':<20}{'database':>10}{'Python (before)':>17}{'ratio':>8}{'total':>8}")
            for name, query in cases:
                new, page = await median(review_queue, query)
                old, before = await median(review_queue_in_python, query)
                assert page == before, f"{name}: the database's page differs from Python's"
                print(
                    f"   {name:<20}{new * 1000:>10.1f}{old * 1000:>17.0f}{new / old:>8.3f}{page['total']:>8}"
                )

    asyncio.run(run())


def login(client: httpx.Client) -> None:
    form = client.get("/ui/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    client.post("/ui/login", data={"api_key": TOKEN, "csrf_token": csrf})


def timed(client: httpx.Client, url: str, repeat: int, **kwargs) -> list[float]:
    client.get(url, **kwargs).raise_for_status()  # warm: the first request pays for imports
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        client.get(url, **kwargs).raise_for_status()
        out.append(time.perf_counter() - start)
    return out


def pages(base: str, total: int, repeat: int) -> None:
    per = 48
    queued = httpx.get(f"{base}/review", params={"limit": 1}, headers=AUTH, timeout=60).json()["total"]
    last = max(1, -(-queued // per))  # the queue's last page (a page past it is answered 400)
    cases = [
        ("first page", {"page": 1}),
        ("middle page", {"page": last // 2}),
        ("last page", {"page": last}),
        (
            "filtered + sorted",
            {"source": "pexels", "min_score": 0.2, "max_score": 0.8, "sort": "uncertainty"},
        ),
    ]
    with httpx.Client(base_url=base, timeout=60) as client:
        login(client)
        print(f"\n1. time per page at {total} images (median of {repeat}, ms)")
        print(f"   {'case':<20}{'console page':>14}{'GET /review':>14}{'ratio':>8}")
        for name, params in cases:
            page = timed(client, "/ui/review", repeat, params={**params, "per": per})
            api_params = {k: v for k, v in params.items() if k != "page"}
            api_params.update(limit=per, offset=(params.get("page", 1) - 1) * per)
            api = timed(client, "/review", repeat, params=api_params, headers=AUTH)
            p, a = statistics.median(page), statistics.median(api)
            print(f"   {name:<20}{p * 1000:>14.0f}{a * 1000:>14.0f}{p / a:>8.2f}")


PAINT_JS = """
const done = arguments[arguments.length - 1];
const started = performance.timing.navigationStart;
const check = () => {
  const imgs = [...document.querySelectorAll('#review-grid img')]
    .filter(i => i.getBoundingClientRect().top < window.innerHeight);
  if (imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)) {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    done({fcp: fcp ? fcp.startTime : null, all: Date.now() - started, n: imgs.length});
  } else setTimeout(check, 10);
};
check();
"""


def first_paint(base: str, settings: Settings, repeat: int) -> None:
    browser = start_browser(1280, 900)
    browser.set_script_timeout(300)
    try:
        browser.get(f"{base}/ui/login")
        browser.find_element("name", "api_key").send_keys(TOKEN)
        browser.find_element("id", "login").click()
        time.sleep(1)
        url = f"{base}/ui/review?per=200&source=photos"
        browser.get(url)
        ids = browser.execute_script(
            "return [...document.querySelectorAll('#review-grid article')].map(n => n.dataset.id)"
        )
        thumbs = settings.dataset_dir / ".thumbnails"
        results: dict[str, list[dict]] = {"made ahead": [], "made on demand": []}
        for _ in range(repeat):
            for case in ("made on demand", "made ahead"):
                if case == "made on demand":
                    for image_id in ids:
                        (thumbs / image_id[:2] / f"{image_id}.jpg").unlink(missing_ok=True)
                else:
                    wait_made(thumbs, ids)
                browser.execute_cdp_cmd("Network.clearBrowserCache", {})
                browser.get(url)
                results[case].append(browser.execute_async_script(PAINT_JS))
        print(f"\n2. first paint of the review page with {len(ids)} thumbnails (median of {repeat}, ms)")
        print(f"   {'case':<18}{'first paint':>12}{'thumbnails in view':>20}")
        for case, runs in results.items():
            fcp = statistics.median(r["fcp"] or 0 for r in runs)
            everything = statistics.median(r["all"] for r in runs)
            print(f"   {case:<18}{fcp:>12.0f}{everything:>20.0f}")
        ahead = statistics.median(r["all"] for r in results["made ahead"])
        demand = statistics.median(r["all"] for r in results["made on demand"])
        print(f"   ratio (ahead / on demand), thumbnails in view shown: {ahead / demand:.2f}")
    finally:
        browser.quit()


def wait_made(thumbs: Path, ids: list[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not all((thumbs / i[:2] / f"{i}.jpg").is_file() for i in ids):
        if time.monotonic() > deadline:
            raise TimeoutError("the background pass did not make the thumbnails")
        time.sleep(0.1)


def all_made(thumbs: Path, total: int, seconds: float = 1800) -> float:
    """Wait until the background pass has made every thumbnail (the steady state pages are timed
    in); returns how long it took."""
    start = time.monotonic()
    while sum(1 for _ in thumbs.glob("*/*.jpg")) < total:
        if time.monotonic() - start > seconds:
            raise TimeoutError("the background pass did not finish")
        time.sleep(0.5)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--queue-only", action="store_true", help="only step 0: no service, no browser")
    parser.add_argument("--no-paint", action="store_true", help="skip step 2 (first paint in Chromium)")
    args = parser.parse_args()
    reason = None if args.queue_only or args.no_paint else missing_browser()
    if reason:
        print(f"cannot measure first paint: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(
            _env_file=None,
            dataset_dir=root / "datasets",
            models_dir=root / "models",
            log_dir=root / "logs",
            scheduler_enabled=False,
            trainer_api_key=TOKEN,
            min_image_side=16,
        )
        start = time.perf_counter()
        seed(settings, args.images - PHOTOS, PHOTOS)
        print(f"seeded {args.images} images in {time.perf_counter() - start:.0f} s")
        queue(settings, args.images, args.repeat)
        if args.queue_only:
            shutil.rmtree(root, ignore_errors=True)
            return 0
        with running_server(settings) as base:
            total = httpx.get(f"{base}/status").json()["dataset_counts"]["total"]
            made = all_made(settings.dataset_dir / ".thumbnails", total)
            print(f"the background pass made {total} thumbnails in {made:.0f} s after start-up")
            pages(base, total, args.repeat)
            if not args.no_paint:
                first_paint(base, settings, max(3, args.repeat // 2))
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
