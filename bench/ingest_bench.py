"""Ingest against a plain full decode of the same files; truncation still caught; near-dup lookup.

    python bench/ingest_bench.py [--folder DIR/real --folder DIR/ai] [--n 96] [--batch 32]
                                 [--tricky DIR/tricky] [--compare --tools-python PY]

1. Baselines: a plain Pillow decode of each file to RGB at full size (what any consumer of the
   pixels pays at least), and the stricter decoder alone (``load()``, no RGB copy), against the
   product's ingest of the same files: validation (a DCT-scaled decode that still reads every
   entropy-coded byte), SHA-256, pHash, near-duplicate lookup, image and metadata files (durable)
   and the index rows, on a local dataset in a temp folder.
   Both the batched path a folder import takes (``DatasetManager.ingest_stream``, one group commit and
   one transaction per batch) and the one-image path an upload takes (``ingest``) are measured.
   The process is pinned to ONE CPU, so every thread shares one core: the ratios are per core.
   The three are interleaved batch by batch, so a shared machine's load swings hit them alike.
2. ``--tricky``: every file of the acceptance set's tricky/ folder validated twice, by the product
   (DCT-scaled) and by a full-size decode with the same checks: both must reject the same files.
3. Near-duplicate lookup per image with 10k, 100k and 1M hashes: the in-memory lookup a batch does
   per image (``DedupeIndex.near_cached``: faiss multi-index hashing), a plain numpy scan of the same
   hashes, and the catch-up query a batch makes once, on a SQLite index holding that many rows.
4. ``--compare``: bench/import_compare.py, a side-by-side folder import against img2dataset and
   imagededup (their own venv: ``--tools-python``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageFile  # noqa: E402

from config.settings import Settings  # noqa: E402
from dataset import nearindex  # noqa: E402
from dataset.images import FORMAT_EXT, ImageRejected, inspect_image  # noqa: E402
from dataset.index import DedupeIndex, PhashCache, images, to_signed  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from tests.images import scene  # noqa: E402

SIZES = [(1280, 960), (1920, 1080), (2048, 1536), (2304, 1728)]  # 1.2 to 4 MP


async def stream_all(dm: DatasetManager, items: list[tuple[bytes, dict]]) -> list:
    """A list through DatasetManager.ingest_stream: all of it arrives at once, so it is one batch
    (up to INGEST_BATCH), as ingest_many's was."""

    async def fed():
        for item in items:
            yield item

    return [outcome async for outcome in dm.ingest_stream(fed(), read_ahead=max(1, len(items)))]


def generated_jpegs(n: int) -> list[bytes]:
    """Photo-sized JPEGs with texture (noise over a scene) so they compress like photographs."""
    out = []
    for i in range(n):
        size = SIZES[i % len(SIZES)]
        base = scene(500 + i, (size[0] // 4, size[1] // 4)).resize(size, Image.Resampling.BICUBIC)
        grain = Image.effect_noise(size, 40).convert("RGB")
        buf = io.BytesIO()
        Image.blend(base, grain, 0.12).save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def folder_images(folders: list[Path], n: int) -> list[bytes]:
    files = sorted(
        p
        for folder in folders
        for p in folder.iterdir()
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
    )
    return [p.read_bytes() for p in files[:n]]


def decode(data: bytes) -> None:
    """The baseline: a full decode to RGB pixels (what a consumer of the bytes pays at least)."""
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB")


def decode_only(data: bytes) -> None:
    """The stricter baseline: the decoder alone, pixels left in Pillow's own layout (no RGB copy)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bench_meta() -> dict:
    return {"source": "bench", "label": "real"}


PHASES = ("plain decode to RGB", "ingest_stream (batch)", "ingest (one image)", "decode only (load)")


async def decode_and_ingest(
    images: list[bytes], batch: int
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Seconds spent per phase, [wall, cpu], interleaved batch by batch; outcomes per ingest path.
    The two ingest paths each fill their own dataset, so both see every file as new."""
    spent = {phase: [0.0, 0.0] for phase in PHASES}
    statuses: dict[str, dict[str, int]] = {PHASES[1]: {}, PHASES[2]: {}}
    statuses[PHASES[3]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def settings(name: str) -> Settings:
            return Settings(
                _env_file=None, dataset_dir=Path(tmp) / name, scheduler_enabled=False, min_image_side=16
            )

        async with DatasetManager(settings("many")) as many, DatasetManager(settings("one")) as one:
            # Warm-up outside the timing: plugin imports, faiss, the first transaction of each.
            warm = generated_jpegs(1)[0]
            await stream_all(many, [(warm, {"source": "warm", "label": "real"})] * 2)
            await one.ingest(warm, {"source": "warm", "label": "real"})
            for start in range(0, len(images), batch):
                part = images[start : start + batch]

                async def plain(part=part) -> list:
                    for data in part:
                        decode(data)
                    return []

                async def batched(part=part) -> list:
                    return await stream_all(many, [(data, bench_meta()) for data in part])

                async def singly(part=part) -> list:
                    return [await one.ingest(data, bench_meta()) for data in part]

                async def loaded(part=part) -> list:
                    for data in part:
                        decode_only(data)
                    return []

                for phase, run in zip(PHASES, (plain, batched, singly, loaded), strict=True):
                    before = clocks()
                    outcomes = await run()
                    after = clocks()
                    spent[phase][0] += after[0] - before[0]
                    spent[phase][1] += after[1] - before[1]
                    for out in outcomes:
                        key = out.status if out.reason is None else f"{out.status}:{out.reason}"
                        statuses[phase][key] = statuses[phase].get(key, 0) + 1
    return spent, statuses


def full_size_verdict(data: bytes) -> str:
    """The reference validation: the same checks with every pixel decoded at full size."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if getattr(img, "n_frames", 1) > 1 and img.format != "MPO":
                return "rejected:animated"
            if img.format not in FORMAT_EXT:
                return "rejected:unsupported_format"
            img.load()
        return "accepted"
    except Image.DecompressionBombError:
        return "rejected:decompression_bomb"
    except Exception:  # noqa: BLE001 - any decoding failure is a rejection here
        return "rejected:truncated"


def product_verdict(data: bytes) -> str:
    try:
        inspect_image(data, max_bytes=1 << 40, min_side=1, max_pixels=Image.MAX_IMAGE_PIXELS * 2)
        return "accepted"
    except ImageRejected as exc:
        return f"rejected:{exc.reason}"


def check_tricky(folder: Path) -> None:
    """Do the DCT-scaled validation and a full-size decode reject the same files?"""
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    disagree, rejected, jpeg_rejected = [], 0, 0
    for path in files:
        data = path.read_bytes()
        ours, full = product_verdict(data), full_size_verdict(data)
        accepted_ours, accepted_full = ours == "accepted", full == "accepted"
        rejected += not accepted_ours
        jpeg_rejected += not accepted_ours and data[:3] == b"\xff\xd8\xff"
        if accepted_ours != accepted_full:
            disagree.append(f"{path.relative_to(folder)}: product {ours}, full decode {full}")
    print(
        f"tricky files: {len(files)}; rejected by the product: {rejected} ({jpeg_rejected} of them JPEGs); "
        f"files where the DCT-scaled validation and a full-size decode disagree: {len(disagree)}"
    )
    for line in disagree:
        print(f"  {line}")


def lookup_ms(n_hashes: int, queries: int = 1000) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of the in-memory lookup a batch makes per image (PhashCache.nearest: multi-index
    hashing, dataset/nearindex.py) and of a plain XOR + popcount scan of the same hashes, on queries that half
    the time have a stored hash within 3 bits."""
    rng = random.Random(n_hashes)
    stored = np.array([rng.getrandbits(64) for _ in range(n_hashes)], dtype=np.uint64)
    cache = PhashCache()
    cache.add_arrays(np.arange(1, n_hashes + 1, dtype=np.int64), stored.view(np.int64))
    if cache.near.tail_size >= nearindex.TAIL_MERGE_ROWS:  # as a grown index holds them: in tables
        cache.near.adopt(nearindex.merge(*cache.near.snapshot()), n_hashes)
    probes = [
        rng.getrandbits(64) if i % 2 else int(stored[rng.randrange(n_hashes)]) ^ 0b10101
        for i in range(queries)
    ]
    cache.nearest(probes[0], 6)  # builds the index outside the timing

    def timed(fn) -> tuple[float, float]:
        spent = []
        for q in probes:
            start = time.perf_counter()
            fn(q)
            spent.append((time.perf_counter() - start) * 1000)
        spent.sort()
        return spent[len(spent) // 2], spent[int(len(spent) * 0.99)]

    return {
        "index": timed(lambda q: cache.nearest(q, 6)),
        "scan": timed(lambda q: np.flatnonzero(np.bitwise_count(stored ^ np.uint64(q)) <= 6)),
    }


async def catch_up_ms(sizes: tuple[int, ...], rounds: int = 100) -> dict[int, float]:
    """The catch-up a batch makes once (DedupeIndex.refresh, nothing new) on a real SQLite index
    grown to each size (rows inserted in bulk): median ms."""
    rng, out = random.Random(7), {}
    with tempfile.TemporaryDirectory() as tmp:
        index = DedupeIndex(f"sqlite+aiosqlite:///{tmp}/dedupe.db")
        await index.open()
        try:
            for n in sizes:
                await _grow(index, n, rng)
                await index.refresh()  # load the cache outside the timing
                spent = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    await index.refresh()
                    spent.append((time.perf_counter() - start) * 1000)
                out[n] = sorted(spent)[len(spent) // 2]
        finally:
            await index.close()
    return out


async def _grow(index: DedupeIndex, n: int, rng: random.Random, chunk: int = 50_000) -> None:
    async with index.engine.begin() as conn:
        have = len(index.cache)
        for lo in range(have, n, chunk):
            await conn.execute(images.insert(), [_fake_row(i, rng) for i in range(lo, min(n, lo + chunk))])


def _fake_row(i: int, rng: random.Random) -> dict:
    return dict(
        id=f"bench-{i}",
        sha256=f"{i:064x}",
        phash=to_signed(rng.getrandbits(64)),
        label="real",
        confidence=None,
        source="bench",
        image_key=f"images/b/{i}.jpg",
        meta_key=f"meta/b/{i}.json",
        format="JPEG",
        width=1,
        height=1,
        created_at="2025-01-01T00:00:00Z",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, action="append", help="take images from this folder (repeatable)")
    ap.add_argument("--n", type=int, default=96, help="images (generated, or the first N of the folders)")
    ap.add_argument(
        "--batch", type=int, default=32, help="images per ingest_stream batch (a folder import's)"
    )
    ap.add_argument(
        "--tricky", type=Path, help="the acceptance set's tricky/ folder: truncation still caught?"
    )
    ap.add_argument("--compare", action="store_true", help="also run bench/import_compare.py")
    ap.add_argument("--tools-python", type=Path, help="python of a venv with img2dataset and imagededup")
    ap.add_argument("--skip-lookup", action="store_true", help="leave out the 1M-hash lookup section")
    args = ap.parse_args()
    if args.tricky:
        check_tricky(args.tricky)
    images = folder_images(args.folder, args.n) if args.folder else generated_jpegs(args.n)
    sizes = [Image.open(io.BytesIO(d)).size for d in images]
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # every thread of this process on one core: per-core figures
    print(
        f"{len(images)} images, {sum(w * h for w, h in sizes) / len(images) / 1e6:.1f} MP and "
        f"{sum(map(len, images)) / len(images) / 1e6:.2f} MB on average; pinned to CPU {cpu}; "
        f"batches of {args.batch}"
    )
    spent, statuses = asyncio.run(decode_and_ingest(images, args.batch))
    (dw, dc), (lw, lc) = spent[PHASES[0]], spent[PHASES[3]]
    for name, (wall, cpu_s) in spent.items():
        per_image = (
            f"{wall / len(images) * 1000:5.1f} ms/image wall, {cpu_s / len(images) * 1000:5.1f} ms CPU"
        )
        ratio = ""
        if name in PHASES[1:3]:
            ratio = (
                f"; {dw / wall:.2f}x the rate of a decode to RGB ({dc / cpu_s:.2f}x CPU), "
                f"{lw / wall:.2f}x of the decoder alone ({lc / cpu_s:.2f}x CPU)"
            )
        print(f"{name:<20}: {len(images) / wall:6.1f} images/s ({per_image}){ratio}")
    print(f"outcomes: {statuses}")
    os.sched_setaffinity(0, os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    if not args.skip_lookup:
        lookup_sizes = (10_000, 100_000, 1_000_000)
        catch_up = asyncio.run(catch_up_ms(lookup_sizes))
        for n in lookup_sizes:
            got = lookup_ms(n)
            (p50, p99), (s50, s99) = got["index"], got["scan"]
            print(
                f"near-dup lookup per image with {n:>9,} hashes: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
                f"(numpy scan p50 {s50:.3f}, p99 {s99:.3f}: {s99 / p99:.1f}x the p99); "
                f"catch-up query once per batch {catch_up[n]:.2f} ms "
                f"({catch_up[n] / args.batch:.3f} ms per image in a batch of {args.batch})"
            )
    if args.compare:
        from bench import import_compare

        folders = args.folder or []
        import_compare.main_from(folders, args.tools_python)


if __name__ == "__main__":
    main()
