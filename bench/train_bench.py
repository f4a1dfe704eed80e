"""Training throughput of the trainer's data path against raw model steps, and peak memory.

    python bench/train_bench.py [--arch resnet10t] [--image-size 64] [--batch 32] [--workers 2]
                                [--images 512] [--device auto] [--source-size 1080x720] [--folder DIR]
                                [--decode reduced|full]
    python bench/train_bench.py --mode memory [--sizes 1000,10000,100000] [same options]
    python bench/train_bench.py --mode probe-memory [--probe-sizes 10000,100000 --dim 1024 --probe-in-ram]
    python bench/train_bench.py --mode probe [--probe-n 100000 --dim 1024] [same options]

throughput mode, in one run on one device:
1. Baseline ("raw step"): optimiser steps of the same model, batch and image size on random
   tensors already on the device, through the trainer's own train_one_epoch (AMP on CUDA).
2. Trainer: train_one_epoch over a DataLoader of stored JPEGs (LocalStorage in a temp folder, or
   --folder), with decode, crop, flip, JPEG re-compression and normalisation in --workers
   processes.  The second epoch is timed (workers already started).
   Ratio = trainer images/s / raw images/s: how much the data path costs (1.0 = free).
   ``--decode full`` decodes every image at full size (the data path before reduced decoding),
   for a before/after comparison; ``reduced`` (default) is what the trainer does.
   Then the training cache is built (images/s) and the same epoch is timed reading it.
probe mode: feature extraction images/s through the frozen --arch backbone on cached images, and
   the linear head's L-BFGS fit on --probe-n synthetic embeddings (float16 in a file on disk, read
   a chunk at a time, as the trainer fits) on one core.
probe-memory mode: peak RSS of loading cached feature shards and fitting the head, per number of
   embeddings (--probe-sizes), each in a fresh process; --probe-in-ram also measures the in-RAM
   load and fit the trainer used before.
memory mode: a whole train_on_samples run (split, cache build, 1 epoch, evaluation, report, save,
register) per dataset size (--sizes), each in a fresh process; prints the trainer's peak RSS
(ru_maxrss) and peak private memory, each worker's peak private memory, the workers' private
memory summed at one moment, the peak RSS of a worker (ru_maxrss of the children: it counts the
pages shared with the trainer) and trainer + workers PSS at one moment (sampled from
/proc/<pid>/smaps_rollup every 0.1 s), then the ratio of the largest size to the smallest.
The images are generated (smooth colour fields plus grain, saved as JPEG q=90) unless --folder is given.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from config.settings import Settings  # noqa: E402
from dataset.manager import Sample  # noqa: E402
from dataset.storage import LocalStorage  # noqa: E402
from trainer.cache import ImageCache  # noqa: E402
from trainer.data import (  # noqa: E402
    Normalizer,
    StoredImages,
    eval_transform,
    make_loader,
    preprocessing_for,
    train_transform,
)
from trainer.fit import seed_everything, train_one_epoch  # noqa: E402
from trainer.modeling import build_model, pick_device  # noqa: E402
from trainer.probe import CHUNK_ROWS, RowFile, embed_chunks, fit_head  # noqa: E402
from trainer.train import train_on_samples  # noqa: E402


def generate_dataset(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    """``n`` JPEGs in a LocalStorage under ``root``, half labelled each class (random pHashes).

    At most 256 distinct pictures, each stored under several keys: drawing 1080x720 grain is
    slower than training on it, and repeated content costs the data path the same.
    """
    rng = np.random.default_rng(seed)
    distinct = [_picture(rng, size) for _ in range(min(n, 256))]
    samples = []
    folder = Path(root) / "images/2026/01/01"  # where LocalStorage(root) keeps these keys
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        key = f"images/2026/01/01/{i:07d}.jpg"
        # Plain writes, no fsync per file: scratch files of a benchmark (100k in seconds, not minutes).
        (folder / f"{i:07d}.jpg").write_bytes(distinct[i % len(distinct)])
        samples.append(_sample(str(i), "ai" if i % 2 else "real", key, rng))
    return samples


def _picture(rng, size: tuple[int, int]) -> bytes:
    """A smooth colour field with photo-like grain, as a q=90 JPEG."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    grain = rng.integers(-8, 9, (size[1], size[0], 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def folder_dataset(folder: Path, n: int) -> tuple[LocalStorage, list[Sample]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    rng = np.random.default_rng(0)
    samples = [
        _sample(str(i), "ai" if i % 2 else "real", str(p.relative_to(folder)), rng)
        for i, p in enumerate(files[:n])
    ]
    return LocalStorage(folder), samples


def _sample(image_id: str, label: str, key: str, rng) -> Sample:
    return Sample(
        id=image_id,
        label=label,
        source="bench",
        image_key=key,
        meta_key=f"meta/{image_id}.json",
        sha256=image_id,
        phash=int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)),
        width=0,
        height=0,
        created_at="2026-01-01T00:00:00Z",
    )


def _settings(args, tmp: Path, **extra) -> Settings:
    return Settings(
        _env_file=None,
        dataset_dir=tmp / "datasets",
        models_dir=tmp / "models",
        train_arch=args.arch,
        train_pretrained=False,
        train_image_size=args.image_size,
        train_batch_size=args.batch,
        train_workers=args.workers,
        train_device=args.device,
        min_train_samples=2,
        train_epochs=1,
        **extra,
    )


def _steps(model, loader, prepare, amp_dtype, lr: float) -> float:
    """Seconds of one train_one_epoch over ``loader``, synchronised on CUDA."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = _ConstantLR()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    _sync(prepare.device)
    start = time.perf_counter()
    train_one_epoch(model, loader, prepare, optimizer, scheduler, scaler, amp_dtype, 0)
    _sync(prepare.device)
    return time.perf_counter() - start


class _ConstantLR:
    def step_update(self, num_updates: int) -> None:  # the benchmark measures steps, not schedules
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args) -> None:
    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(args, Path(tmp))
        storage, samples = (
            folder_dataset(args.folder, args.images)
            if args.folder
            else (
                LocalStorage(Path(tmp) / "datasets"),
                generate_dataset(Path(tmp) / "datasets", args.images, args.source_size),
            )
        )
        device, amp_dtype = pick_device(args.device)
        model = build_model(settings).to(device)
        pre = preprocessing_for(model, args.image_size)
        data = StoredImages(
            storage,
            [s.image_key for s in samples],
            [int(s.label == "ai") for s in samples],
            train_transform(pre),
            settings.max_image_pixels,
            reduce_to=pre.decode_side if args.decode == "reduced" else None,
        )
        loader = make_loader(
            data,
            batch_size=args.batch,
            shuffle=True,
            workers=args.workers,
            seed=0,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        steps, prepare = len(loader), Normalizer(pre, device)
        raw = _memory_batches(args, device, steps)
        _steps(model, raw[:2], prepare, amp_dtype, settings.train_lr)  # warm-up: kernels, allocator
        # The same data path reading the training cache (trainer/cache.py), built here and timed.
        cache = ImageCache(storage, pre.decode_side, settings.max_image_pixels)
        build = cache.build([(s.sha256, s.image_key) for s in samples], workers=max(2, args.workers))
        cached = StoredImages(
            storage,
            data.keys,
            data.labels,
            train_transform(pre),
            settings.max_image_pixels,
            reduce_to=pre.decode_side,
            cache=cache,
            sha256s=[s.sha256 for s in samples],
            quality=cache.quality,
        )
        cached_loader = make_loader(
            cached,
            batch_size=args.batch,
            shuffle=True,
            workers=args.workers,
            seed=0,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        _steps(model, loader, prepare, amp_dtype, settings.train_lr)  # epoch 1 starts the workers
        _steps(model, cached_loader, prepare, amp_dtype, settings.train_lr)
        # Interleaved rounds, median of each: a shared machine's load swings hit all three alike.
        rounds = [
            [
                _steps(model, feed, prepare, amp_dtype, settings.train_lr)
                for feed in (raw, loader, cached_loader)
            ]
            for _ in range(args.rounds)
        ]
        raw_s, real_s, cached_s = (sorted(r[i] for r in rounds)[len(rounds) // 2] for i in range(3))
        loader_s = _drain(loader)
        decode_ms, one_core_ms = _one_core(data, min(len(data), 200))
        cached_decode_ms, cached_one_core_ms = _one_core(cached, min(len(cached), 200))
    raw_ips, real_ips = steps * args.batch / raw_s, steps * args.batch / real_s  # full batches both
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    source = args.folder or "x".join(map(str, args.source_size))
    print(
        f"device={device} ({name}) amp={amp_dtype} arch={args.arch} image_size={args.image_size} "
        f"batch={args.batch} workers={args.workers} images={len(samples)} source={source} "
        f"decode={args.decode} (shorter side >= {data.reduce_to or 'full'})"
    )
    print(f"raw step (tensors on device): {raw_ips:9.1f} images/s")
    print(f"trainer (stored JPEGs):       {real_ips:9.1f} images/s")
    print(f"ratio trainer/raw:            {real_ips / raw_ips:9.3f}")
    cached_ips = steps * args.batch / cached_s
    print(f"trainer, training cache:      {cached_ips:9.1f} images/s")
    print(f"ratio cached trainer/raw:     {cached_ips / raw_ips:9.3f}")
    print(
        f"cache build:                  {build.built / build.seconds:9.1f} images/s "
        f"({build.built} images, {max(2, args.workers)} threads)"
    )
    print(
        f"one core, cached: read {cached_decode_ms:.2f} ms, read+transform {cached_one_core_ms:.2f} ms "
        "per image "
        f"({one_core_ms / cached_one_core_ms:.1f}x less CPU than from the originals)"
    )
    print(
        f"DataLoader alone (no model):  {steps * args.batch / loader_s:9.1f} images/s "
        f"({args.workers} workers)"
    )
    print(
        f"one core, CPU time per image: decode {decode_ms:.2f} ms, decode+transform {one_core_ms:.2f} ms "
        f"({1000 / one_core_ms:.0f} images/s per core)"
    )


def _drain(loader) -> float:
    """Seconds to iterate the loader once with no model: the data path's own ceiling."""
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def _one_core(data: StoredImages, n: int) -> tuple[float, float]:
    """(decode, decode + transform) CPU milliseconds per image in this process.

    CPU time rather than wall time: on a shared machine it does not count other processes' turns.
    """
    start = time.process_time()
    for i in range(n):
        data.load(i)
    decoded = time.process_time()
    for i in range(n):
        data[i]
    both = time.process_time() - decoded
    return (decoded - start) * 1000 / n, both * 1000 / n


def _memory_batches(args, device, steps: int) -> list:
    """``steps`` batches on the device, cycling over a few distinct tensors (memory stays small)."""
    shape = (args.batch, 3, args.image_size, args.image_size)
    distinct = [
        (
            torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
            torch.randint(0, 2, (args.batch,), device=device),
        )
        for _ in range(min(steps, 4))
    ]
    return [(*distinct[i % len(distinct)], None, []) for i in range(steps)]


def memory(args) -> None:
    """Peak memory of a whole training per dataset size, each in a fresh process, and the ratios."""
    print(
        f"memory mode: arch={args.arch} image_size={args.image_size} batch={args.batch} "
        f"workers={args.workers} source={args.source_size[0]}x{args.source_size[1]} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(
        "| images | trainer peak RSS | trainer peak private | one worker peak private "
        "| workers peak private (sum) | one worker peak RSS | trainer + workers PSS, peak | training |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            "rss-child",
            "--images",
            str(n),
            "--arch",
            args.arch,
            "--image-size",
            str(args.image_size),
            "--batch",
            str(args.batch),
            "--workers",
            str(args.workers),
            "--device",
            args.device,
            "--source-size",
            f"{args.source_size[0]}x{args.source_size[1]}",
        ]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out = results[n] = json.loads(child.stdout.splitlines()[-1])
        print(
            f"| {n:,} | {out['self_mb']:.0f} MB | {out['self_private_mb']:.0f} MB "
            f"| {out['one_worker_private_mb']:.0f} MB (of {out['worker_processes']}) "
            f"| {out['workers_private_mb']:.0f} MB ({out['workers_seen']} at most) "
            f"| {out['children_mb']:.0f} MB "
            f"| {out['total_pss_mb']:.0f} MB ({out['workers_at_total_peak']} workers then) "
            f"| {out['train_s']:.0f} s ({out['ips']:.0f} images/s) |",
            flush=True,
        )
    small, big = min(results), max(results)
    if small != big:
        for what in ("self_mb", "self_private_mb", "one_worker_private_mb", "total_pss_mb"):
            ratio = results[big][what] / results[small][what]
            grew = (results[big][what] - results[small][what]) * 1024 * 1024 / (big - small)
            print(f"{what}: {big:,} / {small:,} images = {ratio:.3f} ({grew:+.0f} bytes per added image)")


def _rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss, Private_Clean, Private_Dirty ... of a process in kB (/proc/<pid>/smaps_rollup)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # the process ended, or no such file here
        return None
    out = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            out[name] = int(rest.split()[0])
    return out


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` that are forks of it (DataLoader workers: same command
    line; not multiprocessing's resource tracker, a fresh interpreter)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    own = _cmdline(pid)
    return [k for k in kids if _cmdline(k) == own]


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


class MemorySampler(threading.Thread):
    """Peaks of this process's PSS and of its child processes (the DataLoader workers), sampled
    from /proc every ``interval`` seconds: PSS divides each shared page among the processes that
    map it, so trainer PSS + workers' PSS at the same moment ("total") is what the training costs
    the machine -- but it also falls when other processes map the same libraries (torch), so
    compare it within one run. "private" is what a process alone holds (Private_Clean +
    Private_Dirty, its USS): the figure to compare between dataset sizes."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval, self.done = interval, threading.Event()
        self.peak = {
            "self_pss": 0,
            "self_private": 0,
            "workers_pss": 0,
            "workers_private": 0,
            "total_pss": 0,
            "workers": 0,
        }
        self.workers_at_total_peak = 0
        self.private_of: dict[int, int] = {}  # peak private memory of each worker, by pid

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        me = _rollup(os.getpid()) or {}
        by_pid = {pid: _rollup(pid) for pid in _children(os.getpid())}
        kids = [r for r in by_pid.values() if r]
        for pid, r in by_pid.items():
            if r:
                mine = r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
                self.private_of[pid] = max(self.private_of.get(pid, 0), mine)
        now = {
            "self_pss": me.get("Pss", 0),
            "self_private": me.get("Private_Clean", 0) + me.get("Private_Dirty", 0),
            "workers_pss": sum(k.get("Pss", 0) for k in kids),
            "workers_private": sum(k.get("Private_Clean", 0) + k.get("Private_Dirty", 0) for k in kids),
            "workers": len(kids),
        }
        now["total_pss"] = now["self_pss"] + now["workers_pss"]  # what the training costs the machine
        if now["total_pss"] > self.peak["total_pss"]:
            self.workers_at_total_peak = len(kids)
        for name, value in now.items():
            self.peak[name] = max(self.peak[name], value)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        self.sample()
        return self.peak


def rss_child(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        samples = generate_dataset(Path(tmp) / "datasets", args.images, args.source_size)
        storage = LocalStorage(Path(tmp) / "datasets")
        sampler = MemorySampler()
        sampler.start()
        start = time.perf_counter()
        train_on_samples(_settings(args, Path(tmp), val_fraction=0.1), samples, storage)
        elapsed = time.perf_counter() - start
        peak = sampler.stop()
    kb = 1024.0  # ru_maxrss and smaps_rollup are in KiB on Linux
    print(
        json.dumps(
            {
                "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
                "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb,
                "self_pss_mb": peak["self_pss"] / kb,
                "self_private_mb": peak["self_private"] / kb,
                "workers_pss_mb": peak["workers_pss"] / kb,
                "workers_private_mb": peak["workers_private"] / kb,
                "total_pss_mb": peak["total_pss"] / kb,
                "workers_seen": peak["workers"],
                "workers_at_total_peak": sampler.workers_at_total_peak,
                "one_worker_private_mb": max(sampler.private_of.values(), default=0) / kb,
                "worker_processes": len(sampler.private_of),
                "train_s": elapsed,
                "ips": args.images / elapsed,
            }
        )
    )


def probe_memory(args) -> None:
    """Peak memory of the linear probe's head fit from cached feature shards, per dataset size.

    For each size a fresh process loads synthetic float16 embeddings (written as feature shards,
    as the trainer stores them) the way fit_linear_probe does -- into a float16 file on disk, the
    training rows gathered into another, read back a chunk at a time -- and fits the head
    ("on-disk"); ``--probe-in-ram`` also measures loading the shards into one array and fitting on
    a float32 copy in one chunk ("in-ram", what the trainer did before).
    Prints the growth of the peak RSS over the process's RSS before the load, and the ratio.
    """
    print(f"probe memory: dim={args.dim or 1024} sizes={args.probe_sizes} one core")
    print("| embeddings | how | peak RSS | growth during load + fit | load + fit time |")
    print("|---:|---|---:|---:|---:|")
    growth: dict[tuple[str, int], float] = {}
    for how in ("in-ram", "on-disk") if args.probe_in_ram else ("on-disk",):
        for n in args.probe_sizes:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [
                    sys.executable,
                    __file__,
                    "--mode",
                    "probe-memory-child",
                    "--probe-n",
                    str(n),
                    "--dim",
                    str(args.dim or 1024),
                    "--folder",
                    tmp,
                ]
                if how == "in-ram":
                    cmd.append("--probe-in-ram")
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                child = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            out = json.loads(child.stdout.splitlines()[-1])
            growth[how, n] = out["growth_mb"]
            print(
                f"| {n:,} | {how} | {out['peak_mb']:.0f} MB | {out['growth_mb']:.0f} MB "
                f"| {out['fit_s']:.2f} s (loss {out['loss']:.4f}) |",
                flush=True,
            )
    small, big = min(args.probe_sizes), max(args.probe_sizes)
    for how in ("in-ram", "on-disk"):
        if (how, small) in growth and small != big:
            ratio = growth[how, big] / max(growth[how, small], 1e-9)
            print(f"{how}: growth at {big:,} / growth at {small:,} embeddings = {ratio:.2f}")


def probe_memory_child(args) -> None:
    from trainer.probe import FeatureMatrix, FeatureStore

    torch.set_num_threads(1)
    storage = LocalStorage(args.folder / "datasets")
    store = FeatureStore(storage, "bench")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.probe_n)
    shas = [f"{i:064x}" for i in range(args.probe_n)]
    chunks = []
    for start in range(0, args.probe_n, 8192):
        y = labels[start : start + 8192]
        chunks.append((rng.normal(0, 1, (len(y), args.dim)) + y[:, None] * 0.05).astype(np.float16))
    if args.probe_in_ram:  # before: one shard per retrain, whatever its size
        buf = io.BytesIO()
        np.savez(buf, sha256=np.array([s.encode() for s in shas], dtype="S64"), emb=np.concatenate(chunks))
        storage.put(f"{store.prefix}all.npz", buf.getvalue())
        del buf
    else:
        for i, chunk in enumerate(chunks):  # shards of 8,192 rows, as FeatureStore.add writes them
            store.add(shas[i * 8192 : (i + 1) * 8192], chunk)
    del chunks
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    start = time.perf_counter()
    if args.probe_in_ram:  # what fit_linear_probe did before: a dict of rows, one array, a float32 copy
        rows: dict[str, int] = {}
        parts, offset = [], 0
        for key in sorted(storage.list(store.prefix)):
            with np.load(io.BytesIO(storage.get(key))) as shard:
                names, emb = shard["sha256"], shard["emb"]
            rows.update((s.decode(), offset + i) for i, s in enumerate(names.tolist()))
            parts.append(emb)
            offset += len(emb)
        matrix = np.concatenate(parts)
        del parts
        features = matrix[[rows[s] for s in shas]].astype(np.float32)
        _, _, loss = fit_head(features, labels, chunk_rows=len(features))
    else:
        scratch = args.folder / "scratch"
        scratch.mkdir()
        loaded = store.load(FeatureMatrix(scratch))
        features = loaded.gather(loaded.rows_of(shas))
        _, _, loss = fit_head(features, labels)
    fit_s = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    print(
        json.dumps(
            {"peak_mb": peak / 1024, "growth_mb": (peak - before) / 1024, "fit_s": fit_s, "loss": loss}
        )
    )


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe(args) -> None:
    """Linear probe: feature extraction images/s with --arch, and the head fit on --probe-n embeddings."""
    torch.set_num_threads(1)  # the target is one CPU core
    seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(args, Path(tmp))
        storage = LocalStorage(Path(tmp) / "datasets")
        samples = generate_dataset(Path(tmp) / "datasets", args.images, args.source_size)
        device, amp_dtype = pick_device(args.device)
        model = build_model(settings).to(device).eval()
        pre = preprocessing_for(model, args.image_size)
        cache = ImageCache(storage, pre.decode_side, settings.max_image_pixels)
        cache.build([(s.sha256, s.image_key) for s in samples], workers=2)
        data = StoredImages(
            storage,
            [s.image_key for s in samples],
            [0] * len(samples),
            eval_transform(pre),
            settings.max_image_pixels,
            reduce_to=pre.decode_side,
            cache=cache,
            sha256s=[s.sha256 for s in samples],
            quality=cache.quality,
        )
        loader = make_loader(
            data, batch_size=args.batch, shuffle=False, workers=args.workers, seed=0, persistent=False
        )
        start = time.perf_counter()
        chunks = list(embed_chunks(model, loader, Normalizer(pre, device), amp_dtype))
        features = chunks[0][1].shape[1] if chunks else 0
        extract_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    dim = args.dim or features
    labels = rng.integers(0, 2, args.probe_n)
    with tempfile.TemporaryDirectory() as tmp:
        x = RowFile(Path(tmp) / "train.f16")  # float16 on disk, as fit_linear_probe hands it over
        for start in range(0, args.probe_n, CHUNK_ROWS):
            y = labels[start : start + CHUNK_ROWS]
            x.append((rng.normal(0, 1, (len(y), dim)) + y[:, None] * 0.05).astype(np.float16))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        _, _, loss = fit_head(x, labels)  # streamed, CHUNK_ROWS rows at a time
        fit_s = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        whole = x[:].astype(np.float32)  # before: the whole float32 matrix in RAM, one chunk
        start = time.perf_counter()
        fit_head(whole, labels, chunk_rows=len(whole))
        in_ram_s = time.perf_counter() - start
    print(f"linear probe: arch={args.arch} image_size={args.image_size} device={device}")
    print(
        f"feature extraction:  {len(samples) / extract_s:9.1f} images/s ({len(samples)} cached images, "
        f"{features} features)"
    )
    print(
        f"head fit:            {fit_s:9.2f} s for {args.probe_n} embeddings of {dim} dims on one core, "
        f"streamed from disk {CHUNK_ROWS} rows at a time "
        f"(loss {loss:.4f}); peak RSS {peak_mb:.0f} MB (before the fit {rss_before:.0f} MB)"
    )
    print(
        f"head fit in RAM:     {in_ram_s:9.2f} s (the whole float32 matrix, as before; "
        f"streamed / in RAM = {fit_s / in_ram_s:.2f})"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--mode",
        choices=["throughput", "memory", "rss-child", "probe", "probe-memory", "probe-memory-child"],
        default="throughput",
    )
    p.add_argument(
        "--probe-n", type=int, default=100_000, help="probe mode: embeddings the head is fitted on"
    )
    p.add_argument("--dim", type=int, default=0, help="probe mode: embedding size (default: the backbone's)")
    p.add_argument("--arch", default="resnet10t")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--source-size",
        type=lambda s: tuple(int(v) for v in s.split("x")),
        default=(1080, 720),
        help="WxH of the generated JPEGs",
    )
    p.add_argument(
        "--decode",
        choices=["reduced", "full"],
        default="reduced",
        help="reduced: the trainer's decoding at a power-of-two scale; full: every pixel (before)",
    )
    p.add_argument("--folder", type=Path, help="use the images of this folder instead of generated ones")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 10000, 100000])
    p.add_argument(
        "--probe-sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[10000, 100000],
        help="probe-memory mode: numbers of cached embeddings",
    )
    p.add_argument(
        "--probe-in-ram",
        action="store_true",
        help="probe-memory mode: also measure the in-RAM load and fit (the trainer before memory-mapping)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    random.seed(0)
    {
        "throughput": throughput,
        "memory": memory,
        "rss-child": rss_child,
        "probe": probe,
        "probe-memory": probe_memory,
        "probe-memory-child": probe_memory_child,
    }[args.mode](args)


if __name__ == "__main__":
    main()
