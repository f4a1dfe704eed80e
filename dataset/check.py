"""`exposr-trainer check [--rebuild-index] [--repair] [--force]`: find (and fix) drift between the
files and the index. The metadata files are the record of the dataset; the index is rebuilt from
them, never the other way round, and an image with valid metadata is never deleted.

Drift kinds (per image id, files grouped by their id):
- unindexed: image and valid metadata (its ``hash`` is the image's SHA-256) but no row: a lost,
  truncated or replaced index, or a crash between the writes and the insert -> ``--rebuild-index``
  (and ``--repair``) insert the row rebuilt from the metadata file;
- duplicate_copies: such a pair whose image is byte for byte one indexed under another id (a
  crash between the writes and the insert, then the same image imported again) -> repair deletes
  the copy's two files, as ingest itself never keeps a second copy; the indexed image stays;
- missing_meta: a row and its image, but no metadata file -> repair writes the file from the row;
- dead_rows: a row whose image is missing -> repair deletes the row and its metadata file;
- orphan_images / orphan_meta: an image with neither metadata nor row, or metadata with neither
  image nor row -> deletion candidates, listed first (the report, the log), deleted by repair;
- in_flight: a lone image or metadata file younger than ORPHAN_GRACE: an ingest may be between its
  two writes right now, so it is listed and left alone (``force`` includes them). A complete pair
  is rebuilt whatever its age: if its own ingest inserts the row a moment later, that ingest finds
  its row already there and keeps its files (DatasetManager._store);
- stale_temp_files: temp files of local writes older than ORPHAN_GRACE -> repair deletes them;
- unreadable_meta: a metadata file that is not valid JSON, or whose hash is not its image's ->
  reported, never deleted (nor is its image);
- mismatched: metadata and index disagree (label, confidence, hash, source) -> repair copies the
  metadata's label and confidence into the index; a differing hash or source is reported only.

Destructive repair is bounded: when it would delete more than REPAIR_MAX_DELETE_FRACTION of the
images (and more than REPAIR_MAX_DELETE_COUNT files), it deletes nothing and says so, unless
``force``: that many losses usually mean a broken mount or a wrong DATASET_DIR, not drift.

Safe while ingest runs: lone young files are in_flight, a file's row is looked up again just before
the file is deleted, a row counts as dead only if its file is still missing when asked one by one,
and an ingest whose row a rebuild inserted first keeps its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, cast

from sqlalchemy import delete, insert, select

from config.clock import utc_now
from dataset.contracts import CheckReport, DatasetParts
from dataset.db import marks_table, sqlite_path
from dataset.errors import DuplicateHash, MetadataInvalid, MetadataUnparsable, StorageError, StorageKeyError
from dataset.rebuild import json_bytes, metadata_from_row, read_metadata, row_from_metadata
from dataset.storage import write_file_atomic

log = logging.getLogger(__name__)

REPAIRABLE_FIELDS = ("label", "confidence")
COMPARED = {"label": "label", "confidence": "confidence", "hash": "sha256", "source": "source"}
# An ingest writes its two files and inserts its row within seconds; files without a row that are
# younger than this may belong to one that is still running.
ORPHAN_GRACE = timedelta(minutes=5)
# Start-up refuses an index holding fewer rows than this share of the metadata files (and more than
# PARTIAL_SLACK fewer): a rebuild cut off, or an old copy of the index.
PARTIAL_FRACTION = 0.9
PARTIAL_SLACK = 10
QUARANTINE = "quarantine"
REBUILD_MARK = "rebuild"
REPAIR_MAX_DELETE_FRACTION = 0.05
REPAIR_MAX_DELETE_COUNT = 10
DRIFT_KINDS = (
    "dead_rows",
    "unindexed",
    "duplicate_copies",
    "missing_meta",
    "orphan_images",
    "orphan_meta",
    "stale_temp_files",
    "unreadable_meta",
    "mismatched",
)


async def check_dataset(
    dm: DatasetParts,
    repair: bool,
    force: bool = False,
    grace: timedelta = ORPHAN_GRACE,
    rebuild_index: bool = False,
) -> CheckReport:
    image_files = set(await asyncio.to_thread(_list, dm, "images/"))
    meta_files = set(await asyncio.to_thread(_list, dm, "meta/"))
    rows = await dm.index.all_rows()
    report: dict = {
        "storage": dm.storage.describe(),
        "rows": len(rows),
        "image_files": len(image_files),
        "meta_files": len(meta_files),
        **{kind: [] for kind in DRIFT_KINDS},
        "in_flight": [],
        "repair": repair,
        "rebuild_index": rebuild_index or repair,
        "repaired": {},
    }
    live: list[dict] = []
    suspects: list[dict] = []
    for r in rows:
        (live if r["image_key"] in image_files and r["meta_key"] in meta_files else suspects).append(r)
    await asyncio.to_thread(_judge_suspects, dm, suspects, report)
    owned = {r[k] for r in rows for k in ("image_key", "meta_key")}
    unowned = (image_files | meta_files) - owned
    pairs = _pair_by_id(unowned & image_files, unowned & meta_files)
    complete = {key for keys in pairs.values() if len(keys) == 2 for key in keys.values()}
    young = set() if force else await asyncio.to_thread(_younger_than, dm, unowned - complete, grace)
    report["in_flight"] = sorted(young)
    pairs = {i: keys for i, keys in pairs.items() if not set(keys.values()) & young}
    rebuildable = await asyncio.to_thread(_classify_unowned, dm, pairs, report)
    rebuildable = await _set_apart_copies(dm, rebuildable, report, grace=None if force else grace)
    temp = set(await asyncio.to_thread(_temp_files, dm))
    report["stale_temp_files"] = sorted(
        temp - (set() if force else await asyncio.to_thread(_younger_than, dm, temp, grace))
    )
    for row in live:
        await _compare(dm, row, report)
    report["deletion_candidates"] = deletion_candidates(report)
    if rebuild_index or repair:
        by_id = {r["id"]: r for r in live} if repair else {}
        report["quarantined"] = await asyncio.to_thread(_quarantine, dm, report, by_id)
        report["repaired"]["rows_rebuilt"] = await _rebuild_rows(dm, rebuildable, report)
    if repair:
        report["repaired"].update(await _repair(dm, rows, report, force))
    report["ok"] = not any(report[k] for k in DRIFT_KINDS) and not report["repaired"].get("refused")
    return cast(CheckReport, report)  # built as a plain dict: the drift kinds are filled by name


def deletion_candidates(report: dict) -> list[str]:
    """Every file a repair would delete (temp files aside), for the operator to read first."""
    dead = [key for d in report["dead_rows"] for key in d["delete"]]
    copies = [c[kind] for c in report["duplicate_copies"] for kind in ("image_key", "meta_key")]
    return sorted(dead + copies + report["orphan_images"] + report["orphan_meta"])


async def _set_apart_copies(
    dm: DatasetParts, rebuildable: list[dict], report: dict, grace: timedelta | None
) -> list[dict]:
    """The rebuildable rows whose SHA-256 is indexed under another id are copies, not lost rows:
    moved from ``unindexed`` to ``duplicate_copies`` (a young one to ``in_flight``: an ingest that
    lost an exact-duplicate race removes its own files). The others are returned."""
    indexed = await dm.index.find_shas([row["sha256"] for row in rebuildable])
    copies = [row for row in rebuildable if indexed.get(row["sha256"], row["id"]) != row["id"]]
    if not copies:
        return rebuildable
    files = {row["id"]: (row["image_key"], row["meta_key"]) for row in copies}
    young = (
        set()
        if grace is None
        else await asyncio.to_thread(
            _younger_than, dm, {key for pair in files.values() for key in pair}, grace
        )
    )
    report["unindexed"] = [u for u in report["unindexed"] if u["id"] not in files]
    for row in copies:
        if set(files[row["id"]]) & young:
            report["in_flight"] = sorted({*report["in_flight"], *files[row["id"]]})
            continue
        report["duplicate_copies"].append(
            {
                "id": row["id"],
                "image_key": row["image_key"],
                "meta_key": row["meta_key"],
                "copy_of": indexed[row["sha256"]],
            }
        )
    return [row for row in rebuildable if row["id"] not in files]


def _list(dm: DatasetParts, prefix: str) -> list[str]:
    return list(dm.storage.list(prefix))


def _temp_files(dm: DatasetParts) -> list[str]:
    return [key for prefix in ("images/", "meta/") for key in dm.storage.temp_files(prefix)]


def _judge_suspects(dm: DatasetParts, suspects: list[dict], report: dict) -> None:
    """Rows whose files the listing missed, asked one by one: a file written after the listing
    started belongs to a row inserted before the rows were read, and that row is alive."""
    for row in suspects:
        has_image, has_meta = dm.storage.exists(row["image_key"]), dm.storage.exists(row["meta_key"])
        if not has_image:
            report["dead_rows"].append(
                {
                    "id": row["id"],
                    "missing": [row["image_key"]] + ([] if has_meta else [row["meta_key"]]),
                    "delete": [row["meta_key"]] if has_meta else [],
                }
            )
        elif not has_meta:
            report["missing_meta"].append({"id": row["id"], "key": row["meta_key"]})


def _younger_than(dm: DatasetParts, keys: set[str], grace: timedelta) -> set[str]:
    cutoff = utc_now() - grace
    young = set()
    for key in keys:
        try:
            if dm.storage.modified(key) > cutoff:
                young.add(key)
        except StorageKeyError:  # removed since the listing: nothing to judge
            continue
    return young


def _pair_by_id(images: set[str], metas: set[str]) -> dict[str, dict[str, str]]:
    pairs: dict[str, dict[str, str]] = {}
    for kind, keys in (("image", images), ("meta", metas)):
        for key in keys:
            pairs.setdefault(PurePosixPath(key).stem, {})[kind] = key
    return pairs


def _classify_unowned(dm: DatasetParts, pairs: dict[str, dict[str, str]], report: dict) -> list[dict]:
    """Sort files without a row into orphans, unreadable metadata and rebuildable rows."""
    rebuildable = []
    for image_id, keys in sorted(pairs.items()):
        if "meta" not in keys:
            report["orphan_images"].append(keys["image"])
        elif "image" not in keys:
            report["orphan_meta"].append(keys["meta"])
        else:
            try:
                row = _rebuilt_row(dm, image_id, keys)
            except (StorageError, MetadataInvalid) as exc:
                entry = {"id": image_id, "key": keys["meta"], "error": str(exc)}
                if isinstance(exc, MetadataUnparsable):  # set apart by a rebuild (quarantine)
                    entry["image_key"] = keys["image"]
                report["unreadable_meta"].append(entry)
                continue
            report["unindexed"].append({"id": image_id, "image_key": keys["image"], "meta_key": keys["meta"]})
            rebuildable.append(row)
    return rebuildable


def _rebuilt_row(dm: DatasetParts, image_id: str, keys: dict[str, str]) -> dict:
    raw = dm.storage.get(keys["meta"])
    data = dm.storage.get(keys["image"])
    doc = read_metadata(raw, keys["meta"])
    if doc.get("id") != image_id:
        raise MetadataInvalid(f"not the metadata of image {image_id} (no matching 'id')")
    if doc.get("hash") != hashlib.sha256(data).hexdigest():
        raise MetadataInvalid("its 'hash' is not the SHA-256 of the image file")
    try:
        return row_from_metadata(
            doc, data, (keys["image"], keys["meta"]), max_pixels=dm.settings.max_image_pixels
        )
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        if isinstance(exc, MetadataInvalid):
            raise
        raise MetadataUnparsable(f"a value cannot be read ({type(exc).__name__}: {exc})") from exc


async def _compare(dm: DatasetParts, row: dict, report: dict) -> None:
    try:
        doc = read_metadata(await asyncio.to_thread(dm.storage.get, row["meta_key"]), row["meta_key"])
    except (StorageError, ValueError) as exc:
        entry = {"id": row["id"], "key": row["meta_key"], "error": str(exc)}
        if isinstance(exc, MetadataUnparsable):  # --repair sets it apart and writes it from the row
            entry["unparsable"] = True
        report["unreadable_meta"].append(entry)
        return
    for field, column in COMPARED.items():
        if doc.get(field) != row[column]:
            report["mismatched"].append(
                {"id": row["id"], "field": field, "meta": doc.get(field), "index": row[column]}
            )


async def _rebuild_rows(dm: DatasetParts, rebuildable: list[dict], report: dict) -> int:
    """Insert the rebuilt rows, marked in the index as a rebuild in progress until the last one is
    in: a rebuild cut off leaves the mark, and start-up refuses the index (:func:`index_problem`)."""
    await _set_mark(dm, f"{len(rebuildable)} rows to insert, begun {utc_now():%Y-%m-%d %H:%M:%S} UTC")
    rebuilt = await _insert_rows(dm, rebuildable, report)
    await _clear_mark(dm)
    return rebuilt


async def _set_mark(dm: DatasetParts, value: str) -> None:
    async with dm.index.engine.begin() as conn:
        await conn.execute(delete(marks_table).where(marks_table.c.name == REBUILD_MARK))
        await conn.execute(insert(marks_table).values(name=REBUILD_MARK, value=value))


async def _clear_mark(dm: DatasetParts) -> None:
    async with dm.index.engine.begin() as conn:
        await conn.execute(delete(marks_table).where(marks_table.c.name == REBUILD_MARK))


async def _insert_rows(dm: DatasetParts, rebuildable: list[dict], report: dict) -> int:
    rebuilt = 0
    for row in rebuildable:
        try:
            await dm.index.insert(row)
        except DuplicateHash as dup:
            if dup.existing_id == row["id"]:  # its own ingest inserted it meanwhile
                continue
            report["unreadable_meta"].append(
                {
                    "id": row["id"],
                    "key": row["meta_key"],
                    "error": f"same image as indexed {dup.existing_id}; kept, not indexed twice",
                }
            )
            continue
        rebuilt += 1
    if rebuilt:
        log.info("check: rebuilt %d index rows from their metadata files", rebuilt)
    return rebuilt


def _refusal(dm: DatasetParts, report: dict) -> str | None:
    planned = len(report["deletion_candidates"])
    images = max(report["rows"], report["image_files"])
    allowed = max(REPAIR_MAX_DELETE_COUNT, int(REPAIR_MAX_DELETE_FRACTION * images))
    if planned <= allowed:
        return None
    return (
        f"refused to delete {planned} files (more than {REPAIR_MAX_DELETE_FRACTION:.0%} of {images} "
        f"images): check that DATASET_DIR / S3_BUCKET point at the right place and that the storage is "
        f"mounted, read the list under deletion_candidates, then run `exposr-trainer check --repair "
        f"--force` to delete them anyway"
    )


async def _repair(dm: DatasetParts, rows: list[dict], report: dict, force: bool) -> dict:
    done: dict[str, Any] = {
        "rows_deleted": 0,
        "files_deleted": 0,
        "temp_files_deleted": 0,
        "rows_updated": 0,
        "meta_rewritten": 0,
    }
    refused = None if force else _refusal(dm, report)
    if refused:
        log.error("check --repair: %s", refused)
        done["refused"] = refused
    else:
        for key in report["deletion_candidates"]:
            log.warning("check --repair: deleting %s (no image or no record to keep)", key)
        await _delete_drift(dm, {r["id"]: r for r in rows}, report, done)
    for key in report["stale_temp_files"]:
        await asyncio.to_thread(dm.storage.delete, key)
        done["temp_files_deleted"] += 1
    for missing in report["missing_meta"]:
        row = await dm.index.get(missing["id"])
        if row is not None and not await asyncio.to_thread(dm.storage.exists, row["meta_key"]):
            doc = metadata_from_row(row)
            await asyncio.to_thread(dm.storage.put, row["meta_key"], json_bytes(doc))
            done["meta_rewritten"] += 1
    for diff in report["mismatched"]:
        if diff["field"] in REPAIRABLE_FIELDS:
            values = {diff["field"]: diff["meta"]}
            if diff["field"] == "label":  # whose label it is: read again from the file (review queue)
                values["person_label"] = None
            await dm.index.update(diff["id"], **values)
            done["rows_updated"] += 1
    log.info("check --repair: %s", done)
    return done


async def _delete_drift(dm: DatasetParts, by_id: dict, report: dict, done: dict) -> None:
    for dead in report["dead_rows"]:
        await dm.index.delete(dead["id"])
        done["rows_deleted"] += 1
        for key in dead["delete"]:
            await asyncio.to_thread(dm.storage.delete, key)
            done["files_deleted"] += 1
    copies = [c[kind] for c in report["duplicate_copies"] for kind in ("meta_key", "image_key")]
    for key in report["orphan_images"] + report["orphan_meta"] + copies:
        if await dm.index.get(PurePosixPath(key).stem) is not None:  # its row arrived since: not an orphan
            continue
        await asyncio.to_thread(dm.storage.delete, key)
        done["files_deleted"] += 1


def quarantine_dir(dm: DatasetParts) -> Path:
    """Beside the index: the SQLite file's folder, else DATASET_DIR (a local folder either way)."""
    path = sqlite_path(dm.index.db_url)
    return (path.parent if path else Path(dm.settings.dataset_dir)) / QUARANTINE


def _quarantine(dm: DatasetParts, report: dict, rows: dict[str, dict]) -> list[dict]:
    """Metadata files that cannot be parsed or hold out-of-range values are moved beside the index
    (``quarantine/<id>/``, with ``reason.txt``), so the rebuild goes on with every other row:
    without a row, together with their image (which has no record without them); with a row, the
    file alone, written again from the row (``--repair``). Nothing is deleted."""
    moved = []
    for entry in report["unreadable_meta"]:
        unindexed = "image_key" in entry
        if not (unindexed or (entry.get("unparsable") and entry["id"] in rows)):
            continue  # a hash that is not its image's: reported only (docs/hardening.md)
        keys = [entry["key"], *([entry["image_key"]] if unindexed else [])]
        folder = quarantine_dir(dm) / entry["id"]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for key in keys:
                write_file_atomic(folder / PurePosixPath(key).name, dm.storage.get(key))
            write_file_atomic(folder / "reason.txt", f"{entry['key']}: {entry['error']}\n".encode())
            for key in keys:
                dm.storage.delete(key)
        except (OSError, StorageError) as exc:
            log.error("check: cannot quarantine %s (%s); left where it is", entry["key"], exc)
            continue
        if not unindexed:  # the row holds the record: its metadata file is written again from it
            dm.storage.put(entry["key"], json_bytes(metadata_from_row(rows[entry["id"]])))
        entry["quarantined_to"] = str(folder)
        moved.append({"id": entry["id"], "files": keys, "to": str(folder), "reason": entry["error"]})
        log.warning("check: %s set apart in %s: %s", entry["key"], folder, entry["error"])
    return moved


async def index_problem(dm: DatasetParts) -> str | None:
    """At start-up: an index with no rows beside a dataset with metadata files has been lost or
    replaced (truncated, deleted, a new DATABASE_URL): serving it would show an empty dataset. An
    index marked as being rebuilt, or far short of the metadata files, is partial: refused too."""
    async with dm.index.engine.connect() as conn:
        mark = (
            await conn.execute(select(marks_table.c.value).where(marks_table.c.name == REBUILD_MARK))
        ).first()
    if mark is not None:
        return (
            f"the dataset index {dm.index.describe()} is partial: an index rebuild ({mark[0]}) did not "
            "finish. Run `exposr-trainer check --rebuild-index` again (it inserts what is missing, "
            "nothing is deleted), then start the service"
        )
    rows = await dm.index.row_count()
    if rows > 0:
        return await asyncio.to_thread(_far_short, dm, rows)
    first = await asyncio.to_thread(lambda: next(iter(dm.storage.list("meta/")), None))
    if first is None:
        return None
    return (
        f"the dataset index {dm.index.describe()} has no rows, but the dataset at DATASET_DIR / "
        f"S3_BUCKET holds metadata files (for example {first}): the index was lost or replaced. "
        "Rebuild it from the metadata files with `exposr-trainer check --rebuild-index` "
        "(nothing is deleted), then start the service again"
    )


def _far_short(dm: DatasetParts, rows: int) -> str | None:
    """Metadata files counted until they show the index is partial (or the listing ends)."""
    limit = max(rows / PARTIAL_FRACTION, rows + PARTIAL_SLACK)
    for files, _key in enumerate(dm.storage.list("meta/"), start=1):
        if files > limit:
            return (
                f"the dataset index {dm.index.describe()} is partial: it has {rows} rows, but the "
                f"dataset at DATASET_DIR / S3_BUCKET holds more than {int(limit)} metadata files. "
                "Rebuild the missing rows with `exposr-trainer check --rebuild-index` (nothing is "
                "deleted), then start the service"
            )
    return None
