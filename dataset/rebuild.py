"""Index rows rebuilt from metadata files, and metadata files rebuilt from index rows.

Every metadata file holds what its index row needs (design.md section 5: id, source, label,
confidence, timestamp, hash; ingest adds format, width, height and the pHash), so a lost index
costs nothing but the time to read the files back. Rows from before a field existed get it from
the image bytes (size, EXIF) or stay None (generator, split: trainer/split.py decides those again).
"""

from __future__ import annotations

import json

from dataset.facts import has_exif
from dataset.images import FORMAT_EXT, ImageRejected, inspect_image

LABELS = ("real", "ai", "unlabeled")
SPLITS = ("train", "eval", "excluded")
_TEXT_COLUMNS = {"generator": 64, "group_hint": 100, "split_group": 36}


class MetadataInvalid(ValueError):
    """A metadata file that cannot be the record of its image; the message says why."""


def row_from_metadata(doc: dict, data: bytes, keys: tuple[str, str], *, max_pixels: int) -> dict:
    """The index row of one image, from its metadata document and its bytes."""
    from dataset.manager import scorer_json  # the one definition of the scorer column

    if doc.get("label") not in LABELS:
        raise MetadataInvalid(f"label {doc.get('label')!r} is not one of {', '.join(LABELS)}")
    if not isinstance(doc.get("timestamp"), str):
        raise MetadataInvalid("no 'timestamp'")
    facts = _image_facts(doc, data, max_pixels)
    row = dict(
        id=doc["id"],
        sha256=doc["hash"],
        label=doc["label"],
        confidence=_float_or_none(doc.get("confidence")),
        scorer=scorer_json(doc.get("scored_by")),
        source=str(doc.get("source") or "unknown")[:64],
        image_key=keys[0],
        meta_key=keys[1],
        created_at=doc["timestamp"][:32],
        size_bytes=len(data),
        has_exif=doc["has_exif"] if isinstance(doc.get("has_exif"), bool) else has_exif(data),
        **facts,
    )
    for column, width in _TEXT_COLUMNS.items():
        value = doc.get(column)
        row[column] = str(value)[:width] if isinstance(value, str | int) and value != "" else None
    row["split"] = doc.get("split") if doc.get("split") in SPLITS else None
    row["has_exif"] = int(row["has_exif"])
    return row


def _image_facts(doc: dict, data: bytes, max_pixels: int) -> dict:
    try:
        phash = int(doc["phash"], 16)
        facts = {"format": str(doc["format"]), "width": int(doc["width"]), "height": int(doc["height"])}
        if facts["format"] in FORMAT_EXT and 0 <= phash < 1 << 64:
            return {**facts, "phash": phash}
    except (KeyError, TypeError, ValueError):
        pass
    try:  # an older file without the image facts: measure them again
        info = inspect_image(data, max_bytes=len(data) + 1, min_side=1, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise MetadataInvalid(f"the image cannot be decoded again ({exc})") from exc
    return {"format": info.format, "width": info.width, "height": info.height, "phash": info.phash}


def _float_or_none(value: object) -> float | None:
    try:
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def metadata_from_row(row: dict) -> dict:
    """A metadata file for an image whose file was lost but whose row and image remain: the
    seed's fields the row holds; attribution is gone and says so."""
    doc = {
        "id": row["id"],
        "source": row["source"],
        "label": row["label"],
        "confidence": row["confidence"],
        "timestamp": row["created_at"],
        "hash": row["sha256"],
        "attribution": {},
        "api_data": {},
        "format": row["format"],
        "width": row["width"],
        "height": row["height"],
        "phash": f"{row['phash']:016x}",
        "rebuilt_from_index": True,
    }
    if row.get("scorer"):
        doc["scored_by"] = json.loads(row["scorer"])
    for column in ("generator", "group_hint", "split_group", "split"):
        if row.get(column) is not None:
            doc[column] = row[column]
    return doc
