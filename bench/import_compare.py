"""Side by side, steady state: importing one folder with Exposr Trainer, img2dataset and imagededup.

    .venv/bin/python bench/import_compare.py --folder DIR [--folder DIR2] [--generated K] --n 150 \\
        --tools-python /tmp/cmpvenv/bin/python [--workers 2] [--repeats 2]

    (make the tools' venv once: python -m venv /tmp/cmpvenv &&
     /tmp/cmpvenv/bin/pip install img2dataset imagededup)

Importable: ``compare(folder, n, tools_python, workers)`` runs the same and returns the figures;
``main_from(folders, tools_python)`` is what ``bench/ingest_bench.py --compare`` calls.

**The files.** 2N distinct images are written once into a temp folder and every tool reads those
same files: the images of ``--folder`` (each folder's image files, recursively), then, when that is
fewer than 2N, variants of them -- cropped by 3 % on each side, flipped or turned (left-right,
top-bottom, 180 degrees, then the two diagonal flips and the two quarter turns, as many as needed;
beyond those, negatives: every pixel inverted, then flipped or turned the same ways) and
re-encoded in the source's format (JPEG quality 90). A file goes in only
when its pHash (imagehash, on the full image) is more than 10 bits from every file already in, so
neither a SHA-256 nor a near-duplicate check (the product's radius is 6) merges any two of them; a
crop alone is not enough for that, a flip is. The 2N files are shuffled (fixed seed), the N-run
reads the first N of them, the 2N-run all of them (hard links of the same files).

**Steady state.** Each tool has a fixed start-up cost (interpreter, imports, process pools: ~10 s
for the other two), so each is run as a whole fresh process on N and on 2N images, and the
steady-state rate is N / (t(2N) - t(N)); the "start-up" column is 2 t(N) - t(2N). The runs are
interleaved round-robin (ours N, img2dataset N, imagededup N, ours 2N, ...), ``--repeats`` rounds,
so the load swings of a shared machine hit all three alike; t(N) and t(2N) are the medians over
the rounds. CPU is the process tree's user + system time (``os.wait4``: the process and every
child it waited for -- the tools' worker pools are joined before they exit); CPU per image is
(cpu(2N) - cpu(N)) / N, from the medians likewise. Every run is checked: ours stored N rows in its
SQLite index, img2dataset wrote N image files, imagededup returned N hashes; a shortfall is printed.

Cross-check, "in-run img/s": 2N / each tool's own clock on the 2N run, which leaves its start-up
out -- ours: the folder source's seconds in the scrape summary (trainer.log); img2dataset: first
shard start to last shard end in its ``*_stats.json``; imagededup: ``encode_images`` +
``find_duplicates`` timed inside its process. The N-vs-2N difference is ~1 s at N = 150 here (the
others' start-up varies by about that much), so it needs N of a few hundred; the in-run figure
does not, but each tool draws its clock's line in a different place.

"marginal img/s": N / (own clock on 2N - own clock on N), medians over the rounds -- what N more
images cost each tool by its own clock, so both its start-up and whatever its clock includes
before the first image (a pool's ramp) drop out. The whole-process steady state above turned out
the least reliable figure: img2dataset's time outside its own clock was up to 0.6 s *shorter* on
its 2N runs than on its N runs (its process pool's start varies by ~1 s), which made its
"steady" rate 380-850 img/s while its own clock never showed more than ~350.

**What each does per image** (read from their sources: img2dataset 1.47.0 ``downloader.py``,
``resizer.py``, ``writer.py``; imagededup 0.3.3 ``methods/hashing.py``, ``utils/image_utils.py``):

- **exposr-trainer** ``scrape --source folder`` exactly as a user runs it (the console script next
  to this Python, or ``python -m app.cli``; PYTHONPATH = this repository, a fresh working folder
  without ``.env``, ``DATASET_DIR`` and ``SOURCES_CONFIG`` there, scheduler off). Per image it reads
  the file, validates it by decoding every byte of its image data (JPEGs at the DCT scale that keeps
  ~256 px, other formats at full size; ``dataset/images.py`` ``inspect_image``), SHA-256 of the
  bytes, a 64-bit pHash, an exact and a near-duplicate (Hamming radius 6) lookup against the index,
  writes the original bytes and a metadata JSON durably (temp file, fsync, rename) and inserts the
  row in the SQLite index. Since the batched ingest (``DatasetManager.ingest_stream``) the folder
  source reads ahead and does the lookups, the fsyncs (a group commit) and the index transaction per
  batch rather than per image. It has no worker setting for a folder source: ``--workers`` does not
  apply to it.
- **img2dataset** ``download()`` on a list of ``file://`` URLs (urllib opens them; nothing leaves
  the machine), ``resize_mode="no"``, ``output_format="files"``, ``compute_hash="sha256"``,
  ``processes_count=workers`` with one shard per process (``number_sample_per_shard = ceil(N /
  workers)``: its processes split shards, not images) and 16 reader threads per process. Per image:
  reads the bytes (urllib, in a thread), decodes all pixels with OpenCV (``cv2.imdecode`` in the
  shard's main thread), reads EXIF with exifread (``extract_exif`` default), SHA-256 of the input
  bytes, writes the image, a JSON sidecar and a parquet row (no fsync). With
  ``skip_reencode=True`` (used here unless ``--i2d-reencode``) a JPEG's original bytes are written;
  PNG inputs are still re-encoded to JPEG (quality 95) because the output format is jpg. Its
  default, ``skip_reencode=False``, re-encodes every image -- more work than an import needs, so the
  comparison gives it the cheaper setting. It has no duplicate detection.
- **imagededup** ``PHash().encode_images(image_dir, num_enc_workers=workers)`` then
  ``find_duplicates(encoding_map, max_distance_threshold=6, num_dist_workers=workers)``. Per image:
  Pillow opens it, converts to RGB (a full decode), resizes the full image to 32x32 with Lanczos,
  to grey, DCT, 64-bit hash; then an all-pairs Hamming search (its Cython brute force). It does not
  validate beyond "Pillow could decode it", computes no SHA-256 and writes nothing. Its pool hands
  out files in chunks of 100, so with 2 workers and N = 150 one process gets 100 and the other 50.

img2dataset runs with ``NO_ALBUMENTATIONS_UPDATE=1`` (albumentations otherwise asks the network
for a newer version at import).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("exposr-trainer", "img2dataset", "imagededup")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MIN_DISTANCE = 11  # pHash bits between any two files of the set (> 10; the product merges at <= 6)
CROP = 0.03  # of each side, in every variant
# PIL.Image.Transpose members (a flip or turn: a pHash > 10 bits away)
TURNS = (
    "FLIP_LEFT_RIGHT",
    "FLIP_TOP_BOTTOM",
    "ROTATE_180",
    "TRANSPOSE",
    "TRANSVERSE",
    "ROTATE_90",
    "ROTATE_270",
)
# the variants in the order they are made: (turn or None, negative); the negatives (every pixel
# inverted: most pHash bits flip) come after all the turns, for sets larger than 8 x the files
VARIANTS: tuple[tuple[str | None, bool], ...] = (
    *((turn, False) for turn in TURNS),
    (None, True),
    *((turn, True) for turn in TURNS),
)
SEED = 12
VENV_HINT = "python -m venv /tmp/cmpvenv && /tmp/cmpvenv/bin/pip install img2dataset imagededup"
I2D_THREADS = 16

PROBE = """
import importlib.metadata as md, json, platform
out = {"python": platform.python_version()}
for name in ("img2dataset", "imagededup", "opencv-python", "opencv-python-headless", "Pillow", "torch"):
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
import img2dataset, imagededup.methods  # noqa: F401  (both must import, not only be listed)
print(json.dumps(out))
"""

I2D_SCRIPT = """
import json, sys
from img2dataset import download

if __name__ == "__main__":
    urls, out, workers, per_shard, reencode = sys.argv[1:]
    download(
        url_list=urls, output_folder=out, input_format="txt", output_format="files",
        resize_mode="no", skip_reencode=reencode != "1", compute_hash="sha256",
        processes_count=int(workers), thread_count={threads}, number_sample_per_shard=int(per_shard),
        enable_wandb=False, timeout=10, retries=0,
    )
""".replace("{threads}", str(I2D_THREADS))

IDED_SCRIPT = """
import json, sys, time
from imagededup.methods import PHash

if __name__ == "__main__":
    folder, workers = sys.argv[1], int(sys.argv[2])
    phasher = PHash(verbose=False)
    start = time.perf_counter()
    encodings = phasher.encode_images(image_dir=folder, num_enc_workers=workers)
    dups = phasher.find_duplicates(
        encoding_map=encodings, max_distance_threshold=6, num_dist_workers=workers
    )
    print("RESULT " + json.dumps({
        "encoded": len(encodings), "with_duplicates": sum(1 for v in dups.values() if v),
        "seconds": time.perf_counter() - start,
    }))
"""


@dataclass
class Run:
    tool: str
    size: int
    round: int
    wall: float
    cpu: float
    done: int
    inner: float | None  # the tool's own clock around the import work (start-up left out)
    note: str = ""


@dataclass
class Summary:
    tool: str
    wall_n: float
    wall_2n: float
    startup: float
    rate: float | None  # steady-state images/s
    cpu_ms: float | None  # steady-state CPU ms per image
    inner_rate: float | None  # 2N / the tool's own clock on the 2N run (median): a cross-check
    marginal: float | None  # N / (own clock on 2N - own clock on N), medians: start-up and ramp left out
    short: list[str] = field(default_factory=list)  # runs that did not do all the work


# ---- the image set ------------------------------------------------------------------------------


def write_generated(count: int, dest: Path, log: Callable[[str], None]) -> Path:
    """``count`` photo-sized JPEGs (1.2 to 4 MP, noise over a drawn scene, quality 88): the files the
    issue measured ingest on, from bench/ingest_bench.py."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from ingest_bench import generated_jpegs

    dest.mkdir(parents=True)
    total = 0
    for i, data in enumerate(generated_jpegs(count)):
        (dest / f"photo_{i:04d}.jpg").write_bytes(data)
        total += len(data)
    log(f"generated: {count} JPEGs of 1.2-4 MP, {total / 2**20:.0f} MiB")
    return dest


def source_files(folders: Sequence[Path]) -> list[Path]:
    out = []
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--folder {folder}: not a folder")
        out += sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    return out


def build_set(folders: Sequence[Path], count: int, dest: Path, log: Callable[[str], None]) -> list[Path]:
    """``count`` pairwise-distinct image files in ``dest`` (see the module docstring), shuffled."""
    import imagehash
    import numpy as np
    from PIL import Image, ImageOps

    def phash(path: Path) -> int:
        with Image.open(path) as img:
            bits = imagehash.phash(img.convert("RGB")).hash.flatten()
        return int("".join("1" if b else "0" for b in bits), 2)

    sources = source_files(folders)
    kept: list[int] = []
    chosen: list[Path] = []
    stage = dest / "_stage"
    stage.mkdir(parents=True)
    dropped = 0

    def far(h: int) -> bool:
        if not kept:
            return True
        dist = np.bitwise_count(np.array(kept, dtype=np.uint64) ^ np.uint64(h))
        return int(dist.min()) >= MIN_DISTANCE

    def offer(path: Path) -> None:
        nonlocal dropped
        h = phash(path)
        if far(h):
            kept.append(h)
            chosen.append(path)
        else:
            dropped += 1
            if path.parent == stage:
                path.unlink()

    for src in sources:
        if len(chosen) == count:
            break
        offer(src)
    for i, (turn, negative) in enumerate(VARIANTS, 1):
        for src in sources:
            if len(chosen) == count:
                break
            out = stage / f"{src.stem}__v{i}{src.suffix.lower()}"
            with Image.open(src) as img:
                fmt = img.format
                w, h = img.size
                box = (round(w * CROP), round(h * CROP), w - round(w * CROP), h - round(h * CROP))
                var = img.crop(box)
                if turn:
                    var = var.transpose(getattr(Image.Transpose, turn))
                if negative:
                    var = ImageOps.invert(var if var.mode in ("RGB", "L") else var.convert("RGB"))
                if fmt == "JPEG":
                    var = var if var.mode in ("RGB", "L", "CMYK") else var.convert("RGB")
                    var.save(out, format="JPEG", quality=90)
                else:
                    var.save(out, format=fmt)
            offer(out)
    if len(chosen) < count:
        raise SystemExit(
            f"only {len(chosen)} distinct images from {', '.join(map(str, folders))} (the files and "
            f"{len(VARIANTS)} flipped, turned or negative variants of each, {MIN_DISTANCE}+ pHash bits "
            "apart); "
            f"2N = {count} are needed: pass another --folder or a smaller --n"
        )
    random.Random(SEED).shuffle(chosen)
    files = []
    for i, path in enumerate(chosen):
        target = dest / f"{i:04d}_{path.name}"
        if path.parent == stage:
            path.rename(target)
        else:
            shutil.copyfile(path, target)
        files.append(target)
    shutil.rmtree(stage)
    originals = sum(1 for p in chosen if p.parent != stage)
    log(
        f"image set: {count} files ({originals} originals, {count - originals} flipped, turned or "
        "negative variants; "
        f"{dropped} candidates left out as within {MIN_DISTANCE - 1} pHash bits of another), "
        f"{sum(p.stat().st_size for p in files) / 2**20:.0f} MiB"
    )
    return files


def link_subset(files: Sequence[Path], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for path in files:
        try:
            os.link(path, dest / path.name)
        except OSError:
            shutil.copyfile(path, dest / path.name)
    return dest


# ---- running one process --------------------------------------------------------------------------


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: no settings of the caller's shell leak into any tool."""
    env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env["HOME"] = str(home)
    return env


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log_file: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the process and its waited-for children, exit code."""
    with open(log_file, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def tail(path: Path, lines: int = 6) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def ours_command() -> list[str]:
    script = Path(sys.executable).parent / "exposr-trainer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def run_ours(folder: Path, work: Path, repo: Path) -> tuple[float, float, int, float | None, str]:
    work.mkdir(parents=True)
    (work / "sources.yaml").write_text(
        "sources:\n  - name: folder\n    label: real\n    path: " + json.dumps(str(folder)) + "\n"
    )
    env = base_env(work) | {
        "PYTHONPATH": str(repo),
        "DATASET_DIR": str(work / "datasets"),
        "SOURCES_CONFIG": str(work / "sources.yaml"),
        "SCHEDULER_ENABLED": "false",
        "LOG_DIR": str(work / "logs"),
        "MODELS_DIR": str(work / "models"),
    }
    log_file = work.parent / f"{work.name}.log"
    wall, cpu, rc = timed([*ours_command(), "scrape", "--source", "folder"], work, env, log_file)
    db = work / "datasets" / "dedupe.db"
    stored = 0
    if db.exists():
        with sqlite3.connect(db) as con:
            stored = con.execute("SELECT count(*) FROM images").fetchone()[0]
    note = "" if rc == 0 else f"exit {rc}: {tail(log_file)}"
    # the scrape's own clock for the source, from its summary line in trainer.log ("..., 4.1s")
    trainer_log = work / "logs" / "trainer.log"
    text = trainer_log.read_text() if trainer_log.exists() else ""
    found = re.findall(r"folder: \w+; .*, ([0-9.]+)s$", text, re.M)
    return wall, cpu, stored, float(found[-1]) if found else None, note


def run_img2dataset(
    files: Sequence[Path], work: Path, python: str, workers: int, reencode: bool
) -> tuple[float, float, int, float | None, str]:
    work.mkdir(parents=True)
    (work / "urls.txt").write_text("".join(p.resolve().as_uri() + "\n" for p in files))
    (work / "run_i2d.py").write_text(I2D_SCRIPT)
    env = base_env(work) | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    per_shard = math.ceil(len(files) / workers)
    cmd = [python, "run_i2d.py", "urls.txt", "out", str(workers), str(per_shard), "1" if reencode else "0"]
    log_file = work.parent / f"{work.name}.log"
    wall, cpu, rc = timed(cmd, work, env, log_file)
    out = work / "out"
    written = sum(1 for _ in out.glob("*/*.jpg")) if out.exists() else 0
    stats: dict[str, int] = {}
    spans = []  # its shards' own start and end times (after its reader and process start-up)
    for stats_file in out.glob("*_stats.json") if out.exists() else ():
        doc = json.loads(stats_file.read_text())
        spans.append((doc["start_time"], doc["end_time"]))
        for key, value in doc["status_dict"].items():
            stats[key] = stats.get(key, 0) + value
    notes = [] if rc == 0 else [f"exit {rc}: {tail(log_file)}"]
    if written != len(files):
        notes.append(f"statuses {stats}")
    inner = max(e for _, e in spans) - min(s for s, _ in spans) if spans else None
    return wall, cpu, written, inner, "; ".join(notes)


def run_imagededup(
    folder: Path, work: Path, python: str, workers: int
) -> tuple[float, float, int, float | None, str]:
    work.mkdir(parents=True)
    (work / "run_ided.py").write_text(IDED_SCRIPT)
    env = base_env(work) | {"NO_ALBUMENTATIONS_UPDATE": "1"}
    log_file = work.parent / f"{work.name}.log"
    wall, cpu, rc = timed([python, "run_ided.py", str(folder), str(workers)], work, env, log_file)
    lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT ") :]) if lines else {}
    notes = [] if rc == 0 else [f"exit {rc}: {tail(log_file)}"]
    if result.get("with_duplicates"):
        notes.append(f"{result['with_duplicates']} images with a duplicate within 6 bits")
    return wall, cpu, int(result.get("encoded", 0)), result.get("seconds"), "; ".join(notes)


# ---- the comparison ----------------------------------------------------------------------------


def tools_versions(python: str | None, scratch: Path) -> tuple[dict[str, str] | None, str]:
    """The other tools' versions, or None and the reason they are skipped."""
    if not python:
        return None, f"img2dataset and imagededup skipped: no --tools-python (make one: {VENV_HINT})"
    try:
        out = subprocess.run(
            [python, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=300,
            env=base_env(scratch) | {"NO_ALBUMENTATIONS_UPDATE": "1"},
            check=False,
        )
    except OSError as exc:
        return None, f"img2dataset and imagededup skipped: {python}: {exc} (make one: {VENV_HINT})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"img2dataset and imagededup skipped: {python} cannot import them ({last}); {VENV_HINT}"
    return json.loads(out.stdout.strip().splitlines()[-1]), ""


def our_version(repo: Path) -> str:
    def git(*args: str) -> str:
        # only the end is trimmed: a porcelain line starts with a space when only the work tree changed
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.rstrip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return f"{repo} at {commit}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


def summarise(runs: list[Run], tool: str, n: int) -> Summary:
    """Medians over the rounds of each run's wall and CPU, then the steady state from those medians
    (a per-round difference of two noisy walls can come out near zero or negative; the medians'
    difference is steadier). None where t(2N) <= t(N): the noise was larger than N images' work."""
    mine = [r for r in runs if r.tool == tool]
    wall = {size: statistics.median(r.wall for r in mine if r.size == size) for size in (n, 2 * n)}
    cpu = {size: statistics.median(r.cpu for r in mine if r.size == size) for size in (n, 2 * n)}
    extra_wall, extra_cpu = wall[2 * n] - wall[n], cpu[2 * n] - cpu[n]
    inner = [r.inner for r in mine if r.size == 2 * n and r.inner]
    inner_n = [r.inner for r in mine if r.size == n and r.inner]
    extra_inner = statistics.median(inner) - statistics.median(inner_n) if inner and inner_n else 0.0
    return Summary(
        tool,
        wall[n],
        wall[2 * n],
        wall[n] - extra_wall,
        n / extra_wall if extra_wall > 0 else None,
        extra_cpu / n * 1000 if extra_cpu > 0 else None,
        2 * n / statistics.median(inner) if inner else None,
        n / extra_inner if extra_inner > 0 else None,
        [f"round {r.round} {r.size}: {r.done}/{r.size} {r.note}" for r in mine if r.done != r.size],
    )


def table(summaries: list[Summary], n: int) -> str:
    ours = summaries[0]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "n/a"

    head = (
        f"{'tool':<15} {'N-run s':>8} {'2N-run s':>9} {'start-up s':>10} {'steady img/s':>12} "
        f"{'CPU ms/img':>10} {'in-run img/s':>12} {'marginal img/s':>14} {'ours/theirs: rate':>17} "
        f"{'CPU':>5} {'2N-run':>6} {'in-run':>6} {'marginal':>8}"
    )
    lines = [f"N = {n}, 2N = {2 * n}; ratios > 1 mean Exposr Trainer is ahead", head, "-" * len(head)]
    for s in summaries:
        rate = f"{s.rate:.1f}" if s.rate else "n/a"
        cpu = f"{s.cpu_ms:.0f}" if s.cpu_ms is not None else "n/a"
        inner = f"{s.inner_rate:.1f}" if s.inner_rate else "n/a"
        marginal = f"{s.marginal:.1f}" if s.marginal else "n/a"
        if s is ours:
            ratios = ""
        else:
            ratios = (
                f"{ratio(ours.rate, s.rate):>17} {ratio(s.cpu_ms, ours.cpu_ms):>5} "
                f"{ratio(s.wall_2n, ours.wall_2n):>6} {ratio(ours.inner_rate, s.inner_rate):>6} "
                f"{ratio(ours.marginal, s.marginal):>8}"
            )
        lines.append(
            f"{s.tool:<15} {s.wall_n:>8.1f} {s.wall_2n:>9.1f} {s.startup:>10.1f} {rate:>12} {cpu:>10} "
            f"{inner:>12} {marginal:>14} {ratios}"
        )
    return "\n".join(lines)


def busy_cores(s: Summary) -> float | None:
    """How many cores a tool's marginal rate implies: its CPU per extra image times extra images per
    second of its own clock. More than the machine has means the clock leaves part of the work out
    (it all ran, the CPU says so), so that marginal rate is higher than the tool can keep up."""
    return s.cpu_ms * s.marginal / 1000 if s.cpu_ms and s.marginal else None


def capacity_notes(summaries: Sequence[Summary], cores: int | None = None) -> list[str]:
    cores = cores or len(os.sched_getaffinity(0))
    notes = []
    for s in summaries:
        busy = busy_cores(s)
        if busy is not None:
            verdict = (
                "more than this machine has: its own clock leaves work out (its marginal rate overstates it)"
                if busy > cores * 1.05  # two medians' noise: a few per cent either way
                else "within what this machine has"
            )
            notes.append(f"  {s.tool}: its marginal rate keeps {busy:.2f} of {cores} cores busy -- {verdict}")
    return notes


def compare(
    folder: Path | str | Sequence[Path | str],
    n: int,
    tools_python: str | None = None,
    workers: int = 2,
    *,
    repeats: int = 2,
    repo: Path = REPO,
    i2d_reencode: bool = False,
    keep: bool = False,
    log: Callable[[str], None] = print,
    generated: int = 0,
) -> dict:
    """Run the comparison (module docstring) and print it through ``log``; returns the figures:
    ``{"n", "workers", "versions", "runs": [...], "summary": {tool: {...}}, "ratios": {tool: {...}}}``
    with ratios ours / theirs (> 1: Exposr Trainer ahead), ``skipped`` when the others were."""
    if n < 1 or workers < 1 or repeats < 1 or generated < 0:
        raise ValueError("n, workers and repeats must be at least 1, generated at least 0")
    folders = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    tmp = Path(tempfile.mkdtemp(prefix="import_compare_"))
    try:
        versions, skipped = tools_versions(tools_python, tmp)
        if skipped:
            log(skipped)
        tools = TOOLS if versions else TOOLS[:1]
        log(f"exposr-trainer: {our_version(repo)}")
        if versions:
            log("tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f" ({tools_python})")
        if generated:
            folders = [write_generated(generated, tmp / "generated", log), *folders]
        files = build_set(folders, 2 * n, tmp / "set", log)
        inputs = {n: link_subset(files[:n], tmp / f"in_{n}"), 2 * n: tmp / "set"}
        log(
            f"img2dataset reads file:// URLs of the same files; workers = {workers} "
            f"(img2dataset processes, imagededup encode/search workers; ours has no such setting)"
        )
        runs: list[Run] = []
        # Every run's output stays until the end (a few hundred MB per round): on ext4 without a
        # journal (this VM's disk), creating a file skips every inode freed in the last minute or
        # more, one buffer lookup each, so deleting a run's ~1,000 files slowed the file creation of
        # the runs after it -- in the kernel, at up to 17 % of our import's CPU -- unevenly by order.
        for k in range(1, repeats + 1):
            for size in (n, 2 * n):
                for tool in tools:
                    work = tmp / "runs" / f"{tool}_{size}_{k}"
                    if tool == "exposr-trainer":
                        wall, cpu, done, inner, note = run_ours(inputs[size], work, repo)
                    elif tool == "img2dataset":
                        wall, cpu, done, inner, note = run_img2dataset(
                            sorted(inputs[size].iterdir()), work, tools_python, workers, i2d_reencode
                        )
                    else:
                        wall, cpu, done, inner, note = run_imagededup(
                            inputs[size], work, tools_python, workers
                        )
                    runs.append(Run(tool, size, k, wall, cpu, done, inner, note))
                    log(
                        f"  round {k} {tool:<15} {size:>4} images: {wall:6.1f} s wall, {cpu:6.1f} s CPU, "
                        f"done {done}/{size}, its own clock {'?' if inner is None else f'{inner:.2f}'} s"
                        + (f"  [{note}]" if note else "")
                    )
        summaries = [summarise(runs, tool, n) for tool in tools]
        log("")
        log(table(summaries, n))
        for s in summaries:
            for line in s.short:
                log(f"  {s.tool} did not do all the work: {line}")
        for line in capacity_notes(summaries):
            log(line)
        if keep:
            log(f"kept: {tmp}")
        ours = summaries[0]
        return {
            "n": n,
            "workers": workers,
            "ours": our_version(repo),
            "versions": versions or {},
            "skipped": skipped,
            "runs": [vars(r) for r in runs],
            "summary": {s.tool: vars(s) for s in summaries},
            "ratios": {
                s.tool: {
                    "rate": ours.rate / s.rate if ours.rate and s.rate else None,
                    "cpu": s.cpu_ms / ours.cpu_ms if s.cpu_ms and ours.cpu_ms else None,
                    "whole_2n_run": s.wall_2n / ours.wall_2n,
                    "in_run": ours.inner_rate / s.inner_rate if ours.inner_rate and s.inner_rate else None,
                    "marginal": ours.marginal / s.marginal if ours.marginal and s.marginal else None,
                    "marginal_busy_cores": busy_cores(s),
                }
                for s in summaries[1:]
            },
        }
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main_from(folders: Sequence[Path], tools_python: Path | str | None, workers: int = 2) -> dict | None:
    """``bench/ingest_bench.py --compare``: the comparison on its ``--folder`` folders, N = 300 where
    they allow 600 distinct files (real/ + ai/ of the acceptance set do), fewer otherwise."""
    if not folders:
        print("import comparison skipped: it needs --folder (e.g. the acceptance set's real/ and ai/)")
        return None
    candidates = len(source_files([Path(f) for f in folders])) * (1 + len(VARIANTS))
    n = min(300, int(candidates * 0.9) // 2)  # ~3 % of the candidates fall within 10 pHash bits
    return compare(folders, n, str(tools_python) if tools_python else None, workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(__doc__.split("\n", 1)[1]),
    )
    parser.add_argument("--folder", action="append", type=Path, help="image folder (repeatable)")
    parser.add_argument(
        "--generated",
        type=int,
        default=0,
        metavar="K",
        help="also K generated photo-sized JPEGs of 1.2-4 MP (bench/ingest_bench.py's, the issue's own case)",
    )
    parser.add_argument("--n", type=int, default=32, help="images of the first run; the second has 2N")
    parser.add_argument("--tools-python", help="Python of a venv with img2dataset and imagededup")
    parser.add_argument("--workers", type=int, default=2, help="img2dataset processes, imagededup workers")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; medians are shown")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="tree whose exposr-trainer runs (default: this one)"
    )
    parser.add_argument(
        "--i2d-reencode", action="store_true", help="img2dataset's default: re-encode every image to JPEG"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (image set, outputs, logs)")
    args = parser.parse_args(argv)
    if not args.folder and not args.generated:
        parser.error("give --folder DIR (repeatable), --generated K, or both")
    if args.generated < 0:
        parser.error(f"--generated {args.generated}: the number of photos to generate is 0 or more")
    compare(
        args.folder or [],
        args.n,
        args.tools_python,
        args.workers,
        repeats=args.repeats,
        repo=args.repo.resolve(),
        i2d_reencode=args.i2d_reencode,
        keep=args.keep,
        generated=args.generated,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
