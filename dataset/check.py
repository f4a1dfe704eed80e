"""`exposr-trainer check [--repair]`: find (and fix) drift between the files and the index.

Drift kinds:
- dead_rows: an index row whose image or metadata file is missing -> repair deletes the row
  (and whichever of its two files is left);
- orphan_images / orphan_meta: files no row points at (a crash between the writes and the index
  insert) -> repair deletes them;
- in_flight: files without a row that are younger than ORPHAN_GRACE: an ingest may be between its
  file writes and its row right now, so they are listed and left alone (``force`` treats them as
  orphans);
- stale_temp_files: temp files of local writes older than ORPHAN_GRACE (a process killed in the
  middle of a put; never visible as data) -> repair deletes them; younger ones may be in flight;
- unreadable_meta: a metadata file that is not valid JSON -> reported, never deleted;
- mismatched: metadata and index disagree (label, confidence, hash, source) -> repair copies the
  metadata's label and confidence into the index (metadata is written first, so it is the newer);
  a differing hash or source is reported only.

Safe while ingest runs: young files are in_flight, a file's row is looked up again just before the
file is deleted, and a row counts as dead only if its file is still missing when asked one by one
(files are listed before rows, so a row inserted during the listing has files the listing missed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from dataset.storage import StorageError, StorageKeyError

if TYPE_CHECKING:
    from dataset.manager import DatasetManager

log = logging.getLogger(__name__)

REPAIRABLE_FIELDS = ("label", "confidence")
COMPARED = {"label": "label", "confidence": "confidence", "hash": "sha256", "source": "source"}
# An ingest writes its two files and inserts its row within seconds; files without a row that are
# younger than this may belong to one that is still running.
ORPHAN_GRACE = timedelta(minutes=5)


async def check_dataset(dm: DatasetManager, repair: bool, force: bool = False,
                        grace: timedelta = ORPHAN_GRACE) -> dict:
    image_files = set(await asyncio.to_thread(_list, dm, "images/"))
    meta_files = set(await asyncio.to_thread(_list, dm, "meta/"))
    rows = await dm.index.all_rows()
    report = {
        "storage": dm.storage.describe(), "rows": len(rows), "image_files": len(image_files),
        "meta_files": len(meta_files), "dead_rows": [], "orphan_images": [], "orphan_meta": [],
        "in_flight": [], "stale_temp_files": [], "unreadable_meta": [], "mismatched": [],
        "repair": repair, "repaired": {},
    }
    live, suspects = [], []
    for r in rows:
        (live if r["image_key"] in image_files and r["meta_key"] in meta_files else suspects).append(r)
    report["dead_rows"] = await asyncio.to_thread(_dead_rows, dm, suspects)
    unowned = (image_files | meta_files) - {r[k] for r in rows for k in ("image_key", "meta_key")}
    young = set() if force else await asyncio.to_thread(_younger_than, dm, unowned, grace)
    report["in_flight"] = sorted(young)
    report["orphan_images"] = sorted((unowned & image_files) - young)
    report["orphan_meta"] = sorted((unowned & meta_files) - young)
    temp = set(await asyncio.to_thread(_temp_files, dm))
    report["stale_temp_files"] = sorted(temp - (set() if force else
                                                await asyncio.to_thread(_younger_than, dm, temp, grace)))
    for row in live:
        await _compare(dm, row, report)
    if repair:
        report["repaired"] = await _repair(dm, rows, report)
    report["ok"] = not any(report[k] for k in ("dead_rows", "orphan_images", "orphan_meta",
                                               "stale_temp_files", "unreadable_meta", "mismatched"))
    return report


def _list(dm: DatasetManager, prefix: str) -> list[str]:
    return list(dm.storage.list(prefix))


def _temp_files(dm: DatasetManager) -> list[str]:
    return [key for prefix in ("images/", "meta/") for key in dm.storage.temp_files(prefix)]


def _dead_rows(dm: DatasetManager, suspects: list[dict]) -> list[dict]:
    """Rows whose files the listing missed, asked one by one: a file written after the listing
    started belongs to a row inserted before the rows were read, and that row is alive."""
    dead = []
    for row in suspects:
        missing = [k for k in (row["image_key"], row["meta_key"]) if not dm.storage.exists(k)]
        if missing:
            dead.append({"id": row["id"], "missing": missing})
    return dead


def _younger_than(dm: DatasetManager, keys: set[str], grace: timedelta) -> set[str]:
    cutoff = datetime.now(UTC) - grace
    young = set()
    for key in keys:
        try:
            if dm.storage.modified(key) > cutoff:
                young.add(key)
        except StorageKeyError:  # removed since the listing: nothing to judge
            continue
    return young


async def _compare(dm: DatasetManager, row: dict, report: dict) -> None:
    try:
        doc = json.loads(await asyncio.to_thread(dm.storage.get, row["meta_key"]))
    except (StorageError, ValueError) as exc:
        report["unreadable_meta"].append({"id": row["id"], "key": row["meta_key"], "error": str(exc)})
        return
    for field, column in COMPARED.items():
        if doc.get(field) != row[column]:
            report["mismatched"].append(
                {"id": row["id"], "field": field, "meta": doc.get(field), "index": row[column]})


async def _repair(dm: DatasetManager, rows: list[dict], report: dict) -> dict:
    by_id = {r["id"]: r for r in rows}
    done = {"rows_deleted": 0, "files_deleted": 0, "temp_files_deleted": 0, "rows_updated": 0}
    for dead in report["dead_rows"]:
        row = by_id[dead["id"]]
        await dm.index.delete(row["id"])
        done["rows_deleted"] += 1
        for key in (row["image_key"], row["meta_key"]):
            await asyncio.to_thread(dm.storage.delete, key)
    for key in report["orphan_images"] + report["orphan_meta"]:
        if await dm.index.get(PurePosixPath(key).stem) is not None:  # its row arrived since: not an orphan
            continue
        await asyncio.to_thread(dm.storage.delete, key)
        done["files_deleted"] += 1
    for key in report["stale_temp_files"]:
        await asyncio.to_thread(dm.storage.delete, key)
        done["temp_files_deleted"] += 1
    for diff in report["mismatched"]:
        if diff["field"] in REPAIRABLE_FIELDS:
            await dm.index.update(diff["id"], **{diff["field"]: diff["meta"]})
            done["rows_updated"] += 1
    log.info("check --repair: %s", done)
    return done
