"""Scale-out figures: ingest with 1, 2 and 4 processes on PostgreSQL + S3; near-duplicate lookup at
1M rows on PostgreSQL against SQLite.

    python bench/scale_bench.py [--images 200] [--rows 1000000] [--lookups 300] [--database-url URL]

1. Ingest: N processes (1, 2, 4), each a DatasetManager of its own (its own DATASET_DIR, as on
   separate hosts) on one PostgreSQL database and one bucket of an S3 server (moto, on 127.0.0.1),
   ingest ``--images`` distinct generated photos in total, split evenly. Printed: images/s of the
   whole fleet and the ratio to 1 process (same run). On a machine with fewer free cores than
   processes the ratio measures the contention, not the design: the cores are printed too.
2. Near-duplicate lookup: an index with ``--rows`` rows (bulk-inserted), opened by DedupeIndex (the
   cache load is timed), then ``--lookups`` calls of ``find_near`` (the catch-up query + the numpy
   scan + the row check of a match), half of them for hashes at distance 1 of a stored one. p50 and
   p99 in ms, PostgreSQL and SQLite, and the ratio.

Without --database-url a PostgreSQL 15 is started in a temporary folder (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from config.settings import Settings  # noqa: E402
from dataset.db import migrate  # noqa: E402
from dataset.index import DedupeIndex, images, make_engine, to_signed  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from tests.images import encode, scene  # noqa: E402

PROCESS_COUNTS = (1, 2, 4)


def settings_for(root: Path, url: str, endpoint: str, bucket: str) -> Settings:
    return Settings(
        _env_file=None,
        dataset_dir=root,
        models_dir=root / "models",
        log_dir=root / "logs",
        database_url=url,
        storage_driver="s3",
        s3_bucket=bucket,
        s3_prefix="bench/",
        s3_endpoint_url=endpoint,
        min_image_side=16,
        scheduler_enabled=False,
    )


def ingest_worker(settings: Settings, seeds: list[int], start, done) -> None:
    blobs = [encode(scene(seed, size=(320, 240)), "JPEG") for seed in seeds]

    async def run() -> int:
        async with DatasetManager(settings) as dm:
            start.wait()
            stored = 0
            for blob in blobs:
                stored += (await dm.ingest(blob, {"source": "bench", "label": "real"})).status == "stored"
            return stored

    done.put(asyncio.run(run()))


def ingest_round(
    n_proc: int, total: int, url: str, endpoint: str, bucket: str, base: Path, offset: int
) -> float:
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    per = total // n_proc
    procs = []
    for p in range(n_proc):
        seeds = list(range(offset + p * per, offset + (p + 1) * per))
        settings = settings_for(base / f"host{n_proc}-{p}", url, endpoint, bucket)
        procs.append(ctx.Process(target=ingest_worker, args=(settings, seeds, start, done)))
    for proc in procs:
        proc.start()
    time.sleep(3 + n_proc)  # images generated and managers opened before the clock starts
    began = time.perf_counter()
    start.set()
    stored = sum(done.get() for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    assert stored == per * n_proc, f"stored {stored} of {per * n_proc}"
    return stored / elapsed


async def fill_index(url: str, rows: int) -> list[int]:
    engine = make_engine(url)
    await migrate(engine)
    rng = random.Random(7)
    hashes = [rng.getrandbits(64) for _ in range(rows)]
    batch = 20_000
    for start in range(0, rows, batch):
        values = [
            dict(
                id=f"{i:036d}",
                sha256=f"{i:064d}",
                phash=to_signed(hashes[i]),
                label="real",
                source="bench",
                image_key=f"images/{i}.jpg",
                meta_key=f"meta/{i}.json",
                format="JPEG",
                width=10,
                height=10,
                created_at="2025-01-01T00:00:00Z",
            )
            for i in range(start, min(rows, start + batch))
        ]
        async with engine.begin() as conn:
            await conn.execute(images.insert(), values)
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk load: without statistics the planner
        # guesses the catch-up query's range is large and scans the table (20 ms per 200k rows).
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE images"))
    await engine.dispose()
    return hashes


async def lookups(url: str, hashes: list[int], n: int) -> tuple[float, list[float]]:
    index = DedupeIndex(url)
    began = time.perf_counter()
    await index.open()
    load = time.perf_counter() - began
    rng = random.Random(3)
    times = []
    for i in range(n):
        near = hashes[rng.randrange(len(hashes))] ^ (1 << rng.randrange(64))
        query = near if i % 2 else rng.getrandbits(64)
        t0 = time.perf_counter()
        await index.find_near(query, 6)
        times.append((time.perf_counter() - t0) * 1000)
    await index.close()
    return load, times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database (asyncpg URL)")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3
    from moto.server import ThreadedMotoServer

    pg = None
    if args.database_url is None:
        from tests.pgserver import PostgresServer

        pg = PostgresServer().start()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        print(f"cores available to this process: {len(os.sched_getaffinity(0))}")
        print(f"\n1. ingest on PostgreSQL + S3 (moto), {args.images} images of 320x240 per round")
        base = Path(tempfile.mkdtemp(prefix="scale-bench-"))
        rates = {}
        for k, n_proc in enumerate(PROCESS_COUNTS):
            url = args.database_url if pg is None else pg.new_database()
            bucket = f"bench-{n_proc}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            rates[n_proc] = ingest_round(n_proc, args.images, url, endpoint, bucket, base, offset=k * 100_000)
            print(
                f"   {n_proc} process(es): {rates[n_proc]:7.1f} images/s   ratio to 1: "
                f"{rates[n_proc] / rates[1]:.2f}"
            )

        print(f"\n2. near-duplicate lookup (find_near) with {args.rows:,} rows, {args.lookups} lookups")
        results = {}
        for name in ("postgresql", "sqlite"):
            url = (
                f"sqlite+aiosqlite:///{base}/lookup.db"
                if name == "sqlite"
                else (args.database_url if pg is None else pg.new_database())
            )
            t0 = time.perf_counter()
            hashes = asyncio.run(fill_index(url, args.rows))
            fill = time.perf_counter() - t0
            load, times = asyncio.run(lookups(url, hashes, args.lookups))
            results[name] = (pct(times, 50), pct(times, 99))
            print(
                f"   {name:10s}: p50 {results[name][0]:6.2f} ms  p99 {results[name][1]:6.2f} ms   "
                f"(bulk insert {fill:.0f} s, cache load at open {load:.1f} s)"
            )
        print(
            f"   ratio PostgreSQL / SQLite: p50 {results['postgresql'][0] / results['sqlite'][0]:.2f}, "
            f"p99 {results['postgresql'][1] / results['sqlite'][1]:.2f}"
        )
    finally:
        s3.stop()
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
