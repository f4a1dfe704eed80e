"""Content signatures (trainer/copies.py) for the split, computed once per picture and kept.

Kept in ``{MODELS_DIR}/.content-signatures.sqlite``, keyed by the image's SHA-256 (and the
signature version): a picture is decoded for it once, however often the split runs, and the same
file re-ingested into a new ``DATASET_DIR`` reuses it. Why here and not in the index at ingest:
measured by ``bench/copies_bench.py`` a signature costs about as much again as ingest's own decode
and pHash, and an index column would need a migration and a backfill that reads every stored
picture anyway; here the pictures not yet signed are read, reduced in the decoder (as ingest
does), by a few threads, at the start of the training that first needs them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from dataset.errors import ImageRejected, StorageError
from dataset.images import decode_rgb
from dataset.storage import StorageDriver
from trainer.copies import SIGNATURE_VERSION, Signature, signature

log = logging.getLogger(__name__)

STORE_FILE = ".content-signatures.sqlite"
DECODE_SIDE = 128  # pictures are decoded reduced to about this shorter side (ingest's pHash scale)
_BATCH = 500  # signatures looked up / written per statement


def store_path(models_dir: Path) -> Path:
    return Path(models_dir) / STORE_FILE


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    con.execute(
        "CREATE TABLE IF NOT EXISTS signatures "
        "(sha256 TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (sha256, version))"
    )
    return con


def compute(storage: StorageDriver, image_key: str, max_pixels: int) -> Signature | None:
    """The signature of a stored picture; None (logged) when it cannot be read or decoded."""
    try:
        return signature(decode_rgb(storage.get(image_key), max_pixels=max_pixels, reduce_to=DECODE_SIDE))
    except (StorageError, ImageRejected, OSError, ValueError) as exc:
        log.warning("no content signature for %s: %s", image_key, exc)
        return None


def read_stored(con: sqlite3.Connection, wanted: Sequence[str], if_damaged: str) -> dict[str, Signature]:
    """{SHA-256: signature} of the ``wanted`` ones kept in the store at this SIGNATURE_VERSION; a
    damaged one is left out with a warning that ends with ``if_damaged`` (what the caller does)."""
    out: dict[str, Signature] = {}
    for start in range(0, len(wanted), _BATCH):
        chunk = list(wanted[start : start + _BATCH])
        marks = ",".join("?" * len(chunk))
        rows = con.execute(
            f"SELECT sha256, data FROM signatures WHERE version = ? AND sha256 IN ({marks})",  # noqa: S608
            [SIGNATURE_VERSION, *chunk],
        )
        for sha, data in rows:
            try:
                out[sha] = Signature.from_bytes(data)
            except ValueError:
                log.warning("content signature of %s is damaged; %s", sha, if_damaged)
    return out


def content_signatures(
    models_dir: Path, storage: StorageDriver, samples: Sequence, max_pixels: int, workers: int = 4
) -> dict[str, Signature]:
    """{sample id: signature} for every sample that can be read; new signatures are stored."""
    path = store_path(models_dir)
    by_sha: dict[str, Signature] = {}
    wanted = sorted({s.sha256 for s in samples})
    with closing(_connect(path)) as con:
        by_sha.update(read_stored(con, wanted, "computing it again"))
    missing = {s.sha256: s.image_key for s in samples if s.sha256 not in by_sha}
    if missing:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            keys = list(missing)
            for sha, sig in zip(
                keys, pool.map(lambda k: compute(storage, missing[k], max_pixels), keys), strict=True
            ):
                if sig is not None:
                    by_sha[sha] = sig
        new = [(sha, SIGNATURE_VERSION, by_sha[sha].to_bytes()) for sha in missing if sha in by_sha]
        with closing(_connect(path)) as con, con:
            con.executemany("INSERT OR REPLACE INTO signatures VALUES (?, ?, ?)", new)
        log.info("content signatures: %d computed, %d reused", len(new), len(wanted) - len(missing))
    return {s.id: by_sha[s.sha256] for s in samples if s.sha256 in by_sha}
