"""A frozen benchmark every version is scored on (issue 22 point 5), so versions compare over time.

The evaluation side grows with the dataset, so v3's AUC and v7's are on different images. The
benchmark is a fixed labelled folder, ``EVAL_BENCHMARK_DIR`` with ``real/`` and ``ai/`` (sub-folders
inside them are read too), never trained on:

* **excluded by content**, per version: a benchmark image with the SHA-256 of one of the version's
  training images (``train_ids.json``), or an edited copy of one (a crop, a flip, a rotation:
  trainer/copies.py, against the training images' stored content signatures), is left out and
  counted, never scored;
* **scored** with the version's own weights (trainer/predict.py: the evaluation transform and the
  calibration it was validated with): AUC with its DeLong 95 % interval (trainer/stats.py);
* **stored** in ``{MODELS_DIR}/{name}/{version}/benchmark.json`` beside ``report.json``, with the
  benchmark's **manifest** (SHA-256 over every file's label, path and SHA-256): when the folder's
  content changes, every version is scored again.

Versions are scored lazily, off the request path (app/benchmark.py): at start-up and whenever a
read of the benchmark finds a version not yet scored on the current manifest. torch is imported
only when a version is scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from config.settings import Settings
from dataset.contracts import PERSON_LABELS
from dataset.images import ImageRejected, decode_rgb
from trainer.copies import Signature, copy_pairs, signature
from trainer.errors import BenchmarkError
from trainer.registry import write_json_atomic
from trainer.signatures import DECODE_SIDE, read_stored, store_path
from trainer.stats import auc_estimate

log = logging.getLogger(__name__)

RESULT_FILE = "benchmark.json"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class BenchImage:
    path: str  # relative to the benchmark folder, "real/..." or "ai/..."
    label: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    folder: Path
    images: tuple[BenchImage, ...]
    digest: str  # SHA-256 over "label<TAB>path<TAB>sha256" lines, sorted by path

    @property
    def counts(self) -> dict[str, int]:
        return {label: sum(1 for i in self.images if i.label == label) for label in PERSON_LABELS}


def _files(folder: Path) -> list[tuple[str, str, Path]]:
    """(label, relative path, path) of every image file under real/ and ai/, sorted by path."""
    if not folder.is_dir():
        raise BenchmarkError(f"EVAL_BENCHMARK_DIR={folder} is not a folder")
    found = []
    for label in PERSON_LABELS:
        sub = folder / label
        if not sub.is_dir():
            continue
        for path in sub.rglob("*"):
            rel = path.relative_to(folder).as_posix()
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.is_file() and not hidden and path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((label, rel, path))
    if not found:
        raise BenchmarkError(f"EVAL_BENCHMARK_DIR={folder} has no images under real/ or ai/")
    return sorted(found, key=lambda f: f[1])


_digest_cache: dict[tuple, Manifest] = {}
_digest_lock = threading.Lock()


def read_manifest(folder: Path) -> Manifest:
    """The benchmark's manifest; files are hashed again only when a name, size or mtime changed."""
    files = _files(Path(folder))
    key = (str(folder), tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for _, rel, p in files))
    with _digest_lock:
        cached = _digest_cache.get(key)
    if cached is not None:
        return cached
    images = tuple(
        BenchImage(rel, label, hashlib.sha256(p.read_bytes()).hexdigest()) for label, rel, p in files
    )
    digest = hashlib.sha256(
        "".join(f"{i.label}\t{i.path}\t{i.sha256}\n" for i in images).encode()
    ).hexdigest()
    manifest = Manifest(Path(folder), images, digest)
    with _digest_lock:
        _digest_cache.clear()  # one benchmark at a time
        _digest_cache[key] = manifest
    return manifest


def result_path(settings: Settings, name: str, version: str) -> Path:
    return Path(settings.models_dir) / name / version / RESULT_FILE


def read_result(settings: Settings, name: str, version: str) -> dict | None:
    try:
        doc = json.loads(result_path(settings, name, version).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def stored_signatures(models_dir: Path, shas: Iterable[str]) -> dict[str, Signature]:
    """The content signatures kept for these SHA-256s (trainer/signatures.py); read only."""
    path = store_path(models_dir)
    wanted = sorted(set(shas))
    out: dict[str, Signature] = {}
    if not path.is_file() or not wanted:
        return out
    with closing(sqlite3.connect(path, timeout=60)) as con:
        out.update(read_stored(con, wanted, "not used for the benchmark"))
    return out


def bench_signatures(manifest: Manifest, data: Mapping[str, bytes], max_pixels: int) -> dict[str, Signature]:
    """{relative path: signature} of the benchmark images that decode (as the split signs pictures)."""
    out = {}
    for image in manifest.images:
        try:
            out[image.path] = signature(
                decode_rgb(data[image.path], max_pixels=max_pixels, reduce_to=DECODE_SIDE)
            )
        except (ImageRejected, OSError, ValueError) as exc:
            log.warning("benchmark image %s has no content signature: %s", image.path, exc)
    return out


def exclusions(
    manifest: Manifest,
    sigs: Mapping[str, Signature],
    train_sha256: Sequence[str],
    train_sigs: Mapping[str, Signature],
) -> dict[str, str]:
    """{relative path: why} of the benchmark images a version trained on, by content: the same
    SHA-256 as a training image ("same_sha256"), or an edited copy of one ("copy_of_training_image")."""
    shas = set(train_sha256)
    out = {i.path: "same_sha256" for i in manifest.images if i.sha256 in shas}
    train = [train_sigs[s] for s in sorted(set(train_sha256)) if s in train_sigs]
    rest = [i.path for i in manifest.images if i.path not in out and i.path in sigs]
    everyone: list[Signature | None] = [*train, *(sigs[p] for p in rest)]
    for a, b in copy_pairs(everyone, range(len(train), len(everyone))):
        if a < len(train) <= b:
            out[rest[b - len(train)]] = "copy_of_training_image"
    return out


def score_version(
    settings: Settings,
    entry: Mapping,
    manifest: Manifest,
    data: Mapping[str, bytes],
    sigs: Mapping[str, Signature],
) -> dict:
    """Scores one registered version on the benchmark and writes its ``benchmark.json``."""
    from trainer.model_store import version_folder  # torch-free, but heavy: only when scoring
    from trainer.predict import Predictor

    name, version = str(entry["model"]), str(entry["version"])
    folder = version_folder(settings, dict(entry))
    train_sha, note = _trained_on(folder)
    train_sigs = stored_signatures(settings.models_dir, train_sha)
    if len(train_sigs) < len(set(train_sha)):
        missing = len(set(train_sha)) - len(train_sigs)
        note = f"{missing} training image(s) without a stored content signature: matched by SHA-256 only"
    excluded = exclusions(manifest, sigs, train_sha, train_sigs)
    kept = [i for i in manifest.images if i.path not in excluded]
    predictor = Predictor(
        folder,
        device=settings.train_device,
        batch_size=settings.train_batch_size,
        max_pixels=settings.max_image_pixels,
    )
    outcomes = predictor.predict_each([data[i.path] for i in kept])
    scored = [(i, o.probability) for i, o in zip(kept, outcomes, strict=True) if o.probability is not None]
    unscored = {i.path: o.reason or "not scored" for i, o in zip(kept, outcomes, strict=True) if not o.ok}
    doc = _result(name, version, manifest, scored, unscored, excluded, note)
    write_json_atomic(result_path(settings, name, version), doc)
    log.info(
        "benchmark: %s %s AUC %s on %d real + %d ai (%d excluded as trained on)",
        name,
        version,
        doc["auc"],
        doc["n"]["real"],
        doc["n"]["ai"],
        len(excluded),
    )
    return doc


def _trained_on(folder: Path) -> tuple[list[str], str | None]:
    """The SHA-256s the version trained on (its train_ids.json), and a note when it cannot say."""
    from trainer.promotion import read_training_record

    record = read_training_record(folder)
    if record is None:
        return [], "the version has no train_ids.json: no benchmark image could be excluded"
    if record.sha256 is None:
        return [], "the version's train_ids.json has ids only: benchmark images were excluded by nothing"
    return record.sha256, None


def _result(
    name: str,
    version: str,
    manifest: Manifest,
    scored: list,
    unscored: dict[str, str],
    excluded: dict[str, str],
    note: str | None,
) -> dict:
    """The ``benchmark.json`` document: sizes, exclusions, the AUC with its interval, each score."""
    labels = np.array([1 if i.label == "ai" else 0 for i, _ in scored], dtype=int)
    est = auc_estimate(labels, np.array([p for _, p in scored], dtype=np.float64)) if scored else None
    reasons = list(excluded.values())
    return {
        "model": name,
        "version": version,
        "folder": str(manifest.folder),
        "manifest": manifest.digest,
        "scored_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "n": {"real": int((labels == 0).sum()), "ai": int(labels.sum())},
        "excluded": {
            "same_sha256": reasons.count("same_sha256"),
            "copy_of_training_image": reasons.count("copy_of_training_image"),
            "images": dict(sorted(excluded.items())),
        },
        "unscored": unscored,
        "auc": None if est is None else round(est.auc, 4),
        "auc_ci95": None if est is None else [round(v, 4) for v in est.ci95],
        "note": note if est is not None else (note or "both classes are needed for an AUC"),
        "images": [
            {"path": i.path, "label": i.label, "sha256": i.sha256, "p_ai": round(p, 6)} for i, p in scored
        ],
    }


def _entries(settings: Settings, name: str | None = None) -> list[dict]:
    from trainer.model_store import ModelRegistry

    wanted = name or settings.model_name
    return [dict(e) for e in ModelRegistry(settings).entries() if e.get("model") == wanted]


def pending(settings: Settings, manifest: Manifest, name: str | None = None) -> list[dict]:
    """The versions not yet scored on this manifest (oldest first)."""
    out = []
    for entry in _entries(settings, name):
        doc = read_result(settings, entry["model"], entry["version"])
        if doc is None or doc.get("manifest") != manifest.digest:
            out.append(entry)
    return out


def score_pending(settings: Settings, name: str | None = None) -> list[str]:
    """Scores every version of ``name`` (MODEL_NAME) not yet scored on the current benchmark; the
    versions scored. A version that cannot be loaded is logged and left for the next pass."""
    if settings.eval_benchmark_dir is None:
        return []
    manifest = read_manifest(settings.eval_benchmark_dir)
    unscored = pending(settings, manifest, name)
    if not unscored:
        return []
    data = {i.path: (manifest.folder / i.path).read_bytes() for i in manifest.images}
    sigs = bench_signatures(manifest, data, settings.max_image_pixels)
    done = []
    for entry in unscored:
        try:
            score_version(settings, entry, manifest, data, sigs)
        except (LookupError, RuntimeError, OSError, ValueError) as exc:  # ModelNotFound, ArtifactMissing ...
            log.warning("benchmark: %s %s cannot be scored: %s", entry["model"], entry["version"], exc)
            continue
        done.append(entry["version"])
    return done


def benchmark_view(settings: Settings, name: str) -> dict:
    """Every version of ``name`` with its benchmark AUC and interval (oldest first); ``pending``
    versions are not scored on the current manifest yet. BenchmarkError when none is set or usable."""
    if settings.eval_benchmark_dir is None:
        raise BenchmarkError("no benchmark: EVAL_BENCHMARK_DIR is not set")
    manifest = read_manifest(settings.eval_benchmark_dir)
    versions = []
    for entry in _entries(settings, name):
        doc = read_result(settings, name, entry["version"])
        row: dict = {"version": entry["version"], "promoted": bool(entry.get("promoted"))}
        if doc is None or doc.get("manifest") != manifest.digest:
            row.update(pending=True, auc=None, auc_ci95=None)
        else:
            row.update(
                pending=False,
                auc=doc.get("auc"),
                auc_ci95=doc.get("auc_ci95"),
                n=doc.get("n"),
                excluded={k: doc["excluded"][k] for k in ("same_sha256", "copy_of_training_image")},
                scored_at=doc.get("scored_at"),
                note=doc.get("note"),
            )
        versions.append(row)
    return {
        "model": name,
        "folder": str(manifest.folder),
        "manifest": manifest.digest,
        "n": manifest.counts,
        "pending": any(v["pending"] for v in versions),
        "versions": versions,
    }
