"""`exposr-trainer check [--repair]`: find (and fix) drift between the files and the index.

Drift kinds:
- dead_rows: an index row whose image or metadata file is missing -> repair deletes the row
  (and whichever of its two files is left);
- orphan_images / orphan_meta: files no row points at (a crash between the writes and the index
  insert) -> repair deletes them;
- unreadable_meta: a metadata file that is not valid JSON -> reported, never deleted;
- mismatched: metadata and index disagree (label, confidence, hash, source) -> repair copies the
  metadata's label and confidence into the index (metadata is written first, so it is the newer);
  a differing hash or source is reported only.

Run `--repair` while no ingest is in flight: an image whose files are written but whose row is not
yet inserted looks exactly like a crash orphan.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from dataset.storage import StorageError

if TYPE_CHECKING:
    from dataset.manager import DatasetManager

log = logging.getLogger(__name__)

REPAIRABLE_FIELDS = ("label", "confidence")
COMPARED = {"label": "label", "confidence": "confidence", "hash": "sha256", "source": "source"}


async def check_dataset(dm: DatasetManager, repair: bool) -> dict:
    # Files first, rows second: a row inserted in between is then seen with its files.
    image_files = set(await asyncio.to_thread(_list, dm, "images/"))
    meta_files = set(await asyncio.to_thread(_list, dm, "meta/"))
    rows = await dm.index.all_rows()
    report = {
        "storage": dm.storage.describe(), "rows": len(rows), "image_files": len(image_files),
        "meta_files": len(meta_files), "dead_rows": [], "orphan_images": [], "orphan_meta": [],
        "unreadable_meta": [], "mismatched": [], "repair": repair, "repaired": {},
    }
    live = [r for r in rows if r["image_key"] in image_files and r["meta_key"] in meta_files]
    report["dead_rows"] = [
        {"id": r["id"], "missing": [k for k in (r["image_key"], r["meta_key"])
                                    if k not in image_files and k not in meta_files]}
        for r in rows if r not in live
    ]
    report["orphan_images"] = sorted(image_files - {r["image_key"] for r in rows})
    report["orphan_meta"] = sorted(meta_files - {r["meta_key"] for r in rows})
    for row in live:
        await _compare(dm, row, report)
    if repair:
        report["repaired"] = await _repair(dm, rows, report)
    report["ok"] = not any(report[k] for k in
                           ("dead_rows", "orphan_images", "orphan_meta", "unreadable_meta", "mismatched"))
    return report


def _list(dm: DatasetManager, prefix: str) -> list[str]:
    return list(dm.storage.list(prefix))


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
    done = {"rows_deleted": 0, "files_deleted": 0, "rows_updated": 0}
    for dead in report["dead_rows"]:
        row = by_id[dead["id"]]
        await dm.index.delete(row["id"])
        done["rows_deleted"] += 1
        for key in (row["image_key"], row["meta_key"]):
            await asyncio.to_thread(dm.storage.delete, key)
    for key in report["orphan_images"] + report["orphan_meta"]:
        await asyncio.to_thread(dm.storage.delete, key)
        done["files_deleted"] += 1
    for diff in report["mismatched"]:
        if diff["field"] in REPAIRABLE_FIELDS:
            await dm.index.update(diff["id"], **{diff["field"]: diff["meta"]})
            done["rows_updated"] += 1
    log.info("check --repair: %s", done)
    return done
