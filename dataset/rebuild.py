"""Index rows rebuilt from metadata files, and metadata files rebuilt from index rows.

Every metadata file holds what its index row needs (docs/dataset.md: id, source, label,
confidence, timestamp, hash; ingest adds format, width, height and the pHash), so a lost index
costs nothing but the time to read the files back. Rows from before a field existed get it from
the image bytes (size, EXIF) or stay None (generator, split: trainer/split.py decides those again).
"""

from __future__ import annotations

import json
import math
from typing import TypeGuard

import orjson

from dataset.contracts import LABELS
from dataset.errors import ImageRejected, MetadataInvalid, MetadataUnparsable
from dataset.facts import has_exif
from dataset.images import FORMAT_EXT, inspect_image

SPLITS = ("train", "eval", "excluded")
_TEXT_COLUMNS = {"generator": 64, "group_hint": 100, "split_group": 36}


def scorer_json(scored_by: object) -> str | None:
    """The scorer's identity as the index stores it (the one definition of the scorer column):
    sorted JSON without the time it scored."""
    if not isinstance(scored_by, dict):
        return None
    identity = {k: v for k, v in scored_by.items() if k != "at"}
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


MAX_METADATA_BYTES = 1 << 20  # a metadata file is a few hundred bytes; API data included, a few KB
MAX_SIDE = (1 << 31) - 1  # an image side the index (a 32-bit integer) can hold


def read_metadata(raw: bytes, where: str = "the metadata file") -> dict:
    """A metadata file's JSON object, parsed with bounds: size, nesting depth (the parser's
    recursion limit) and an object at the top; MetadataUnparsable naming ``where`` otherwise."""
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataUnparsable(f"{where} is {len(raw)} bytes, over {MAX_METADATA_BYTES}")
    try:
        doc = json.loads(raw)
    except RecursionError as exc:
        raise MetadataUnparsable(f"{where} is nested too deep to be metadata") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataUnparsable(f"{where} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MetadataUnparsable(f"{where} holds a JSON {type(doc).__name__}, not an object")
    return doc


def row_from_metadata(doc: dict, data: bytes, keys: tuple[str, str], *, max_pixels: int) -> dict:
    """The index row of one image, from its metadata document and its bytes."""
    if doc.get("label") not in LABELS:
        raise MetadataInvalid(f"label {doc.get('label')!r} is not one of {', '.join(LABELS)}")
    if not isinstance(doc.get("timestamp"), str):
        raise MetadataInvalid("no 'timestamp'")
    facts = _image_facts(doc, data, max_pixels)
    row = dict(
        id=doc["id"],
        sha256=doc["hash"],
        label=doc["label"],
        person_label=int(
            isinstance(doc.get("label_source"), dict) and doc["label_source"].get("kind") == "person"
        ),
        confidence=_confidence(doc.get("confidence")),
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
    for side in ("width", "height"):  # range-checked on read: 1e999, 2**64 - 1 fit no index column
        value = doc.get(side)
        if value is not None and not (_is_number(value) and 1 <= value <= MAX_SIDE):
            raise MetadataUnparsable(f"'{side}' {_short(value)} is out of range (1 to {MAX_SIDE})")
    try:
        phash = int(doc["phash"], 16)
        facts = {"format": str(doc["format"]), "width": int(doc["width"]), "height": int(doc["height"])}
        if facts["format"] in FORMAT_EXT and 0 <= phash < 1 << 64:
            return {**facts, "phash": phash}
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    try:  # an older file without the image facts: measure them again
        info = inspect_image(data, max_bytes=len(data) + 1, min_side=1, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise MetadataInvalid(f"the image cannot be decoded again ({exc})") from exc
    return {"format": info.format, "width": info.width, "height": info.height, "phash": info.phash}


def _confidence(value: object) -> float | None:
    """P(ai) in [0, 1], or None; anything else (10**400, -3, "x", NaN) is out of range."""
    if value is None:
        return None
    if not (_is_number(value) and 0 <= value <= 1):
        raise MetadataUnparsable(f"'confidence' {_short(value)} is out of range (0 to 1, or null)")
    return float(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # 10**400: an int


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def metadata_from_row(row: dict) -> dict:
    """A metadata file for an image whose file was lost but whose row and image remain: the
    original fields the row holds; attribution is gone and says so."""
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


# orjson: json's indented output is written by its pure-Python encoder, which holds the GIL that
# the decode threads need; orjson writes the same text 24x faster (a 660-byte metadata file:
# 16.2 us -> 0.7 us).
_ORJSON_OPTIONS = (
    orjson.OPT_INDENT_2
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _json_default(value: object) -> object:
    """What json's ``default=str`` would give for what orjson does not write itself: a float
    subclass (numpy's float64) as the number it is, anything else as its ``str``."""
    return float(value) if isinstance(value, float) else str(value)


def json_bytes(doc: dict) -> bytes:
    """A metadata file: JSON indented by two spaces, UTF-8, anything else as its ``str``. The same
    text as ``json.dumps(doc, indent=2, ensure_ascii=False, default=str)``, which still writes what
    orjson refuses (an integer beyond 64 bits). Where they differ: orjson spells some floats
    differently (``1e-05`` as ``0.00001``), writes an Enum as its value, and a NaN or infinity as
    ``null`` where json writes ``NaN``, which is not JSON (no field we fill can hold one)."""
    try:
        return orjson.dumps(doc, default=_json_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode("utf-8")
