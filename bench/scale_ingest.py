"""Flat at scale: ingest, open, near-duplicate lookup and server memory with 10k, 1M and 10M rows.

    .venv/bin/python bench/scale_ingest.py --folder DIR/real --folder DIR/ai \\
        [--sizes 10000,1000000,10000000] [--backends sqlite,postgresql] [--n 250] [--rounds 3] \\
        [--data /work/scale-data] [--parts ingest,open,lookup,rss] [--drop]

**Indexes.** For each size and backend an index of synthetic rows (random pHashes; ids, SHA-256s
and keys of the real lengths) is made once under ``--data`` and kept between invocations
(``--drop`` deletes it at the end): SQLite with ``executemany`` into a file, PostgreSQL 15
(tests/pgserver.py, its data folder under ``--data``) with binary ``COPY``. Then the index is
opened once with the product's code, which reads every row and writes the near-duplicate file
beside it (the *cold build*, timed).

**Ingest** (``ingest``): the same 2N distinct images (bench/import_compare.py's set: the folders'
files plus flipped, turned or negative copies, more than 10 pHash bits apart) imported with the
real CLI, ``exposr-trainer scrape --source folder``, as a fresh process, into each index -- N and
2N images, every size and backend, interleaved, ``--rounds`` rounds (the order of the sizes turns
each round). After each run the rows it added are deleted again, so every run meets the same
index. Printed per size: the in-run rate (2N / the folder source's own clock on the 2N run) and the
marginal rate (N / the difference of that clock between the 2N and the N run), medians over the
rounds, and their ratio to the 10k index of the same backend, measured in the same run.

**Open** (``open``): ``DedupeIndex.open()`` (migration check, the file mapped and verified, the
rows after its watermark read), three times per index.

**Lookup** (``lookup``): per image, what ingest pays for the near-duplicate check, half the
queries within 3 bits of a stored hash: in a batch of 32 (``near_many``: the in-memory lookups
and one query for the hits' rows, divided by 32) and one image alone (``near_check`` as an upload
calls it: a look younger than a second reused, a hit's row read); beside them, in the same run,
faiss ``IndexBinaryFlat`` range search over the same hashes (exact, brute force, SIMD) and the
same radius, and the in-memory lookup alone at radius 12 (the split's grouping radius).

**RSS** (``rss``): ``exposr-trainer serve`` started on each index, 200 uploads through
``POST /upload`` (each a near-duplicate lookup), then the server's VmRSS / VmHWM (anonymous and
file-backed) from /proc, and the near-duplicate file's size (the most its mapping can add).

The machine's load average is printed with each part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from dataset import nearindex  # noqa: E402
from dataset.db import migrate  # noqa: E402
from dataset.index import DedupeIndex, make_engine, near_file_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    "id",
    "sha256",
    "phash",
    "label",
    "source",
    "image_key",
    "meta_key",
    "format",
    "width",
    "height",
    "created_at",
    "generator",
    "size_bytes",
    "has_exif",
)
CHUNK = 200_000


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- synthetic indexes ------------------------------------------------------------------------


def synthetic_rows(n: int, seed: int):
    """Rows in chunks, ids and SHA-256s ascending with seq (random-looking values of the real
    lengths, appended in key order: a bulk load that does not crawl through random B-tree pages)."""
    rng = np.random.default_rng(seed)
    id_base = uuid.UUID(int=int(rng.integers(0, 2**62)) << 64)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        phashes = rng.integers(-(2**63), 2**63 - 1, stop - start, dtype=np.int64, endpoint=True).tolist()
        sizes = rng.integers(50_000, 2_000_000, stop - start).tolist()
        rows = []
        for k, i in enumerate(range(start, stop)):
            image_id = str(uuid.UUID(int=id_base.int + (i << 20) + 77))
            day = f"2025/{1 + i % 12:02d}/{1 + i % 28:02d}"
            rows.append(
                (
                    image_id,
                    f"{i:016x}{(i * 2654435761) % 2**64:016x}{image_id.replace('-', '')}",
                    phashes[k],
                    "real" if i % 3 else "ai",
                    "bench",
                    f"images/{day}/{image_id}.jpg",
                    f"meta/{day}/{image_id}.json",
                    "JPEG",
                    1024,
                    768,
                    "2025-01-01T00:00:00Z",
                    "unknown",
                    sizes[k],
                    0,
                )
            )
        yield rows


async def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def prepare_sqlite(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    sql = f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    with con:
        for rows in synthetic_rows(n, n):
            con.executemany(sql, rows)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("ANALYZE")
    con.close()


async def prepare_postgres(url: str, n: int) -> None:
    import asyncpg

    await _migrate(url)
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for rows in synthetic_rows(n, n):
            await conn.copy_records_to_table("images", records=rows, columns=list(COLUMNS))
        await conn.execute("VACUUM ANALYZE images")
    finally:
        await conn.close()


async def cold_build(url: str, near_dir: Path) -> float:
    index = DedupeIndex(url, near_dir=near_dir)
    began = time.perf_counter()
    await index.open()
    took = time.perf_counter() - began
    await index.close()
    return took


def top_seq(url: str) -> int:
    async def get() -> int:
        from sqlalchemy import func, select

        from dataset.index import images

        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.max(images.c.seq)))).scalar() or 0)
        finally:
            await engine.dispose()

    return asyncio.run(get())


def delete_after(url: str, seq: int) -> None:
    async def run() -> None:
        from sqlalchemy import text

        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM images WHERE seq > :s"), {"s": seq})
            if engine.dialect.name == "sqlite":
                async with engine.connect() as conn:
                    await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        finally:
            await engine.dispose()

    asyncio.run(run())


class Index:
    """One prepared index: where it is and how to reach it."""

    def __init__(self, backend: str, size: int, url: str, near_dir: Path) -> None:
        self.backend, self.size, self.url, self.near_dir = backend, size, url, near_dir
        self.near_file = near_file_for(url, near_dir)
        self.base = 0

    @property
    def name(self) -> str:
        return f"{self.backend} {self.size:>10,}"


def prepare(args, pg) -> list[Index]:
    out = []
    for backend in args.backends:
        for size in args.sizes:
            if backend == "sqlite":
                folder = args.data / f"sqlite-{size}"
                url = f"sqlite+aiosqlite:///{folder}/dedupe.db"
                marker, near_dir = folder / "ready", folder
                if not marker.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    began = time.perf_counter()
                    prepare_sqlite(folder / "dedupe.db", size)
                    log(f"  sqlite {size:,} rows made in {time.perf_counter() - began:.0f} s")
            else:
                name = f"scale_{size}"
                url = pg.url(name)
                near_dir = args.data / f"pg-near-{size}"
                marker = near_dir / "ready"
                if not marker.exists():
                    pg.psql(f"DROP DATABASE IF EXISTS {name}")
                    pg.psql(f"CREATE DATABASE {name}")
                    shutil.rmtree(near_dir, ignore_errors=True)
                    near_dir.mkdir(parents=True)
                    began = time.perf_counter()
                    asyncio.run(prepare_postgres(url, size))
                    log(f"  postgresql {size:,} rows made in {time.perf_counter() - began:.0f} s")
            if not marker.exists():
                took = asyncio.run(cold_build(url, near_dir))
                log(f"  {backend} {size:,}: cold build of the near-duplicate file {took:.1f} s ({load()})")
                marker.write_text(str(took))
            index = Index(backend, size, url, near_dir)
            index.base = top_seq(url)
            out.append(index)
    return out


# ---- ingest -----------------------------------------------------------------------------------


def run_import(index: Index, folder: Path, work: Path) -> tuple[float, float | None, int]:
    """The real CLI importing ``folder`` into ``index``: wall, the folder source's own clock, stored."""
    from import_compare import base_env, ours_command, timed

    work.mkdir(parents=True)
    (work / "sources.yaml").write_text(
        "sources:\n  - name: folder\n    label: real\n    path: " + json.dumps(str(folder)) + "\n"
    )
    data_dir = work / "datasets"
    data_dir.mkdir()
    if (
        index.backend == "postgresql" and index.near_file.exists()
    ):  # this host's copy (never written in place)
        os.link(index.near_file, near_file_for(index.url, data_dir))
    env = base_env(work) | {
        "PYTHONPATH": str(REPO),
        "DATASET_DIR": str(data_dir),
        "DATABASE_URL": index.url,
        "SOURCES_CONFIG": str(work / "sources.yaml"),
        "SCHEDULER_ENABLED": "false",
        "LOG_DIR": str(work / "logs"),
        "MODELS_DIR": str(work / "models"),
    }
    wall, _cpu, rc = timed([*ours_command(), "scrape", "--source", "folder"], work, env, work / "run.log")
    if rc != 0:
        raise SystemExit(f"import into {index.name} failed: {(work / 'run.log').read_text()[-2000:]}")
    text = (work / "logs" / "trainer.log").read_text()
    found = re.findall(r"folder: \w+; .*, ([0-9.]+)s$", text, re.M)
    stored = int(re.findall(r"(\d+) stored", text)[-1]) if re.findall(r"(\d+) stored", text) else -1
    return wall, float(found[-1]) if found else None, stored


def ingest_part(indexes: list[Index], folders: list[Path], n: int, rounds: int, tmp: Path) -> None:
    from import_compare import build_set, link_subset

    files = build_set(folders, 2 * n, tmp / "set", log)
    inputs = {n: link_subset(files[:n], tmp / f"in_{n}"), 2 * n: tmp / "set"}
    clocks: dict[tuple[str, int, int], list[float]] = {}
    walls: dict[tuple[str, int, int], list[float]] = {}
    sizes = sorted({ix.size for ix in indexes})
    for k in range(1, rounds + 1):
        log(f"round {k} ({load()})")
        turn = (k - 1) % len(sizes)
        for size in sizes[turn:] + sizes[:turn]:
            for index in (ix for ix in indexes if ix.size == size):
                for count in (n, 2 * n):
                    work = tmp / "runs" / f"{index.backend}-{size}-{count}-{k}"
                    wall, inner, stored = run_import(index, inputs[count], work)
                    delete_after(index.url, index.base)
                    key = (index.backend, size, count)
                    clocks.setdefault(key, []).append(inner or float("nan"))
                    walls.setdefault(key, []).append(wall)
                    log(
                        f"  {index.name} rows, {count} images: own clock {inner:.2f} s, "
                        f"whole process {wall:.1f} s, stored {stored}"
                    )
    log(f"\ningest, N = {n}, 2N = {2 * n}, medians of {rounds} rounds ({load()})")
    log(
        f"{'index':<22} {'in-run img/s':>12} {'marginal img/s':>14} {'in-run vs 10k':>13} "
        f"{'marginal vs 10k':>15} {'whole 2N s':>10}"
    )
    for backend in sorted({ix.backend for ix in indexes}):
        base = None
        for size in sizes:
            c_n = statistics.median(clocks[(backend, size, n)])
            c_2n = statistics.median(clocks[(backend, size, 2 * n)])
            in_run, marginal = 2 * n / c_2n, n / (c_2n - c_n) if c_2n > c_n else float("nan")
            base = base or (in_run, marginal)
            whole = statistics.median(walls[(backend, size, 2 * n)])
            log(
                f"{backend + ' ' + f'{size:,}':<22} {in_run:>12.1f} {marginal:>14.1f} "
                f"{in_run / base[0]:>13.2f} {marginal / base[1]:>15.2f} {whole:>10.1f}"
            )


# ---- open and lookup --------------------------------------------------------------------------


async def open_times(index: Index, times: int = 3) -> list[float]:
    out = []
    for _ in range(times):
        ix = DedupeIndex(index.url, near_dir=index.near_dir)
        began = time.perf_counter()
        await ix.open()
        out.append(time.perf_counter() - began)
        # below TAIL_MERGE_ROWS rows there is no file: every row is read (10k: a few ms)
        assert ix.near_state.source == "file" or index.size < nearindex.TAIL_MERGE_ROWS, ix.near_state
        await ix.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Timer:
    """Wall and CPU (the process's: the database driver's thread included) ms of each call."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._began = (0.0, 0.0)

    def __enter__(self) -> Timer:
        self._began = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append((time.perf_counter() - self._began[0]) * 1000)
        self.cpu.append((time.process_time() - self._began[1]) * 1000)

    def figures(self, per: int = 1) -> tuple[float, float, float, float]:
        w = [x / per for x in self.wall]
        c = [x / per for x in self.cpu]
        return pct(w, 0.5), pct(w, 0.99), pct(c, 0.5), pct(c, 0.99)


async def lookups(index: Index, queries: int = 2000, radius: int = 6) -> dict[str, tuple[float, ...]]:
    import faiss

    ix = DedupeIndex(index.url, near_dir=index.near_dir)
    await ix.open()
    try:
        near = ix.cache.near
        rng = random.Random(index.size)
        stored = np.concatenate([near.tables.hashes, near.tail_hashes])  # below 65,536 rows: all tail
        probes = [
            int(stored[rng.randrange(len(stored))]) ^ (0b101 << rng.randrange(60))
            if i % 2
            else rng.getrandbits(64)
            for i in range(queries)
        ]
        out: dict[str, tuple[float, ...]] = {}
        batch_timer = Timer()
        for start in range(0, queries, 32):
            batch = probes[start : start + 32]
            with batch_timer:
                found = await ix.near_many(batch, radius)
            assert sum(f is not None for f in found) >= len(batch) // 2 - 1
        out["near_many, per image in a batch of 32"] = batch_timer.figures(per=32)
        single = Timer()
        await ix.refresh()
        for q in probes:
            with single:
                await ix.near_check(q, radius, max_age=1.0)
        out["near_check, one image (an upload)"] = single.figures()
        memory = Timer()
        for q in probes:
            with memory:
                ix.cache.nearest(q, radius)
        out["in-memory lookup alone"] = memory.figures()
        wide = Timer()
        for q in probes[:300]:
            with wide:
                ix.cache.nearest(q, 12)
        out["in-memory lookup at radius 12 (a scan)"] = wide.figures()
        flat = faiss.IndexBinaryFlat(64)
        flat.add(np.ascontiguousarray(stored).view(np.uint8).reshape(-1, 8))
        faiss.omp_set_num_threads(1)
        spent = Timer()
        for q in probes[:1000]:
            code = np.array([q], dtype=np.uint64).view(np.uint8).reshape(1, 8)
            with spent:
                flat.range_search(code, radius + 1)
        out["faiss IndexBinaryFlat range_search (1 thread)"] = spent.figures()
        del flat
        return out
    finally:
        await ix.close()


# ---- server memory ----------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) // 1024  # MB
    return fields


def server_rss(index: Index, images: list[bytes], tmp: Path) -> dict[str, int]:
    import httpx

    from tests.pgserver import free_port

    work = tmp / f"serve-{index.backend}-{index.size}"
    data_dir = work / "datasets"
    data_dir.mkdir(parents=True)
    if index.backend == "postgresql" and index.near_file.exists():
        os.link(index.near_file, near_file_for(index.url, data_dir))
    port, key = free_port(), "bench-key-" + uuid.uuid4().hex
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "PYTHONPATH": str(REPO),
        "DATASET_DIR": str(data_dir),
        "DATABASE_URL": index.url,
        "SCHEDULER_ENABLED": "false",
        "LOG_DIR": str(work / "logs"),
        "MODELS_DIR": str(work / "models"),
        "TRAINER_API_KEY": key,
        "SOURCES_CONFIG": str(REPO / "config" / "sources.yaml"),
    }
    from import_compare import ours_command

    proc = subprocess.Popen(
        [*ours_command(), "serve", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=open(work / "serve.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server on {index.name} ended: {(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        started = proc_memory(proc.pid)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for i, data in enumerate(images):
                answer = client.post("/upload", files={"file": (f"{i}.jpg", data)}, data={"label": "real"})
                assert answer.status_code in (200, 201), answer.text
        after = proc_memory(proc.pid)
        return {
            "start_rss": started["VmRSS"],
            "rss": after["VmRSS"],
            "hwm": after["VmHWM"],
            "anon": after["RssAnon"],
            "file": after["RssFile"],
            "near_file_mb": index.near_file.stat().st_size // 2**20 if index.near_file.exists() else 0,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        delete_after(index.url, index.base)


# ---- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, action="append", default=[], help="image folder (repeatable)")
    ap.add_argument("--sizes", default="10000,1000000,10000000")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--n", type=int, default=250, help="images of the N run; the 2N run has twice as many")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/work/scale-data"), help="where the indexes are kept")
    ap.add_argument("--parts", default="ingest,open,lookup,rss")
    ap.add_argument("--drop", action="store_true", help="delete the indexes at the end")
    ap.add_argument(
        "--pg-port", type=int, default=55432, help="the bench's PostgreSQL (its URL names the file)"
    )
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.backends = args.backends.split(",")
    parts = set(args.parts.split(","))
    args.data.mkdir(parents=True, exist_ok=True)
    pg = None
    if "postgresql" in args.backends:
        from tests.pgserver import PostgresServer

        pg = PostgresServer()
        shutil.rmtree(pg.root, ignore_errors=True)
        pg.root = args.data / "pg"
        pg.data = pg.root / "data"
        pg.port = args.pg_port
        pg.root.mkdir(parents=True, exist_ok=True)
        pg.start()
    tmp = Path(tempfile.mkdtemp(prefix="scale_ingest_", dir=args.data))
    try:
        log(f"preparing indexes under {args.data} ({load()})")
        indexes = prepare(args, pg)
        if "open" in parts:
            log(f"\nopen: DedupeIndex.open() from the near-duplicate file, 3 times ({load()})")
            for index in indexes:
                took = asyncio.run(open_times(index))
                size = index.near_file.stat().st_size / 2**20 if index.near_file.exists() else 0
                log(f"  {index.name} rows: {', '.join(f'{t:.2f}' for t in took)} s (file {size:.0f} MB)")
        if "lookup" in parts:
            log(f"\nlookup per image, radius 6, half the queries near a stored hash: ms wall, CPU ({load()})")
            for index in indexes:
                for name, (p50, p99, c50, c99) in asyncio.run(lookups(index)).items():
                    log(
                        f"  {index.name} rows: {name:<48} p50 {p50:7.3f}  p99 {p99:7.3f}   "
                        f"CPU p50 {c50:7.3f}  p99 {c99:7.3f}   ({load()})"
                    )
        if "ingest" in parts:
            if not args.folder:
                raise SystemExit("the ingest part needs --folder (e.g. the acceptance set's real/ and ai/)")
            log(f"\ningest with the real CLI, interleaved ({load()})")
            ingest_part(indexes, args.folder, args.n, args.rounds, tmp)
        if "rss" in parts and args.folder:
            from import_compare import build_set

            files = build_set(args.folder, 200, tmp / "rss-set", log)
            blobs = [p.read_bytes() for p in files]
            log(f"\nserver memory after start-up and 200 uploads, MB ({load()})")
            for index in indexes:
                got = server_rss(index, blobs, tmp)
                log(f"  {index.name} rows: {got}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if pg is not None:
            pg.stop(keep=not args.drop)
        if args.drop:
            shutil.rmtree(args.data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
