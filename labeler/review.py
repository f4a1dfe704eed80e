"""The review queue: images that need a person, and recording that person's label.

Who is in the queue:

* ``unlabeled``: every image labelled ``unlabeled`` (uploads without a label). Unlabeled images
  never enter training, so each one a person labels is a new training sample.
* ``disagreement``: an image labelled ``real`` whose score is above ``REVIEW_REAL_MAX_SCORE``, or
  labelled ``ai`` whose score is below ``REVIEW_AI_MIN_SCORE``. A label a person already gave
  (``label_source.kind == "person"``) is settled and never queued again.

Order (the rule the API documents): disagreements first, strongest first (``|score - target|``
descending, target 0 for real and 1 for ai), because a wrong label already harms every training;
then unlabeled images, most uncertain first (``|score - 0.5|`` ascending; an image without a score
counts as fully uncertain). Ties: oldest first, then id.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from PIL import Image, UnidentifiedImageError
from rich import box
from rich.table import Table
from rich.text import Text

from config.settings import Settings
from dataset.contracts import LABELS, PERSON_LABELS, ImageMetadata
from dataset.errors import InvalidImageId, NothingToUndo, UnknownImageId

KINDS = ("all", "disagreement", "unlabeled")
SORTS = ("disagreement", "uncertainty", "newest")  # disagreement: the documented queue order
METADATA_READS_AT_ONCE = 64
METADATA_READS_PER_THREAD = 256
# Pillow's name for a camera JPEG with extra frames (previews, stereo) is MPO, its MIME "image/mpo",
# which browsers do not display; the bytes are a JPEG (and stored as .jpg).
MEDIA_TYPES = {"MPO": "image/jpeg"}


def parse_image_id(raw: str) -> str:
    """The canonical form of a UUID image id; InvalidImageId otherwise. Paths are never built from raw."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidImageId(f"{raw!r} is not an image id: ids are UUIDs such as {uuid.uuid4()}") from exc


def review_reason(meta: dict, settings: Settings) -> tuple[str, float, str] | None:
    """(kind, sort key, why) when the image needs a person, else None. Smaller sort keys come first."""
    label, score = meta.get("label"), meta.get("confidence")
    if label == "unlabeled":
        if score is None:
            return "unlabeled", 0.0, "unlabeled and not scored yet"
        return "unlabeled", abs(score - 0.5), f"unlabeled, scored {score:.2f}"
    if score is None or (meta.get("label_source") or {}).get("kind") == "person":
        return None
    real_max, ai_min = settings.review_real_max_score, settings.review_ai_min_score
    if label == "real" and score > real_max:
        why = f"labelled real but scored {score:.2f} (above REVIEW_REAL_MAX_SCORE={real_max})"
        return "disagreement", -score, why
    if label == "ai" and score < ai_min:
        why = f"labelled ai but scored {score:.2f} (below REVIEW_AI_MIN_SCORE={ai_min})"
        return "disagreement", -(1.0 - score), why
    return None


def rank(
    entries: list[dict], settings: Settings, kind: str = "all", sort: str = "disagreement"
) -> list[tuple[dict, tuple]]:
    """(entry, (kind, key, why)) in review order (see the module docstring), or by ``sort``:
    ``uncertainty`` (|score - 0.5| ascending, unscored first), ``newest`` (latest stored first)."""
    ranked = []
    for entry in entries:
        found = review_reason(entry, settings)
        if found is None or kind not in ("all", found[0]):
            continue
        ranked.append((sort_key(entry, found, sort), entry, found))
    ranked.sort(key=lambda item: item[0], reverse=sort == "newest")
    return [(entry, found) for _, entry, found in ranked]


def sort_key(entry: dict, found: tuple[str, float, str], sort: str) -> tuple:
    when, image_id = entry.get("timestamp") or "", entry["id"]
    if sort == "uncertainty":
        score = entry.get("confidence")
        return (0.0 if score is None else abs(score - 0.5), when, image_id)
    if sort == "newest":  # sorted in reverse: newest first, ties by id descending
        return (when, image_id)
    group = 0 if found[0] == "disagreement" else 1
    return (group, found[1], when, image_id)


def matches(row: dict, filters: ReviewFilter) -> bool:
    if filters.label and row["label"] != filters.label:
        return False
    if filters.source and row.get("source") != filters.source:
        return False
    if filters.generator and (row.get("generator") or "") != filters.generator:
        return False
    if filters.min_score is not None or filters.max_score is not None:
        score = row.get("confidence")
        if score is None:
            return False
        if filters.min_score is not None and score < filters.min_score:
            return False
        if filters.max_score is not None and score > filters.max_score:
            return False
    return True


def build_queue(metas: list[dict], settings: Settings, kind: str = "all") -> list[QueueEntry]:
    """Queue entries in review order, from full metadata documents."""
    return [queue_entry(meta, *found) for meta, found in rank(metas, settings, kind)]


class QueueEntry(TypedDict):
    """One image of the review queue, from its metadata file (or its index row when the file is gone)."""

    id: str
    generator: str | None
    reason: str  # the queue kind that holds it
    why: str  # for a person
    label: str | None
    score: float | None
    scored_by: dict[str, Any] | None
    source: str | None
    attribution: dict[str, Any]
    timestamp: str | None
    image_url: str


class QueueItem(QueueEntry):
    width: int
    height: int


class QueuePage(TypedDict):
    """:func:`review_queue`'s page (``GET /review``, the console, ``exposr-trainer review``)."""

    total: int
    limit: int
    offset: int
    kind: str
    sort: str
    items: list[QueueItem]
    facets: dict[str, list[str]]  # {"sources": [...], "generators": [...]} in the queue before the filter


def queue_entry(meta: Mapping[str, Any], kind: str, _key: float, why: str) -> QueueEntry:
    return {
        "id": meta["id"],
        "generator": meta.get("generator"),
        "reason": kind,
        "why": why,
        "label": meta.get("label"),
        "score": meta.get("confidence"),
        "scored_by": meta.get("scored_by"),
        "source": meta.get("source"),
        "attribution": meta.get("attribution") or {},
        "timestamp": meta.get("timestamp"),
        "image_url": f"/images/{meta['id']}",
    }


@dataclass(frozen=True)
class ReviewFilter:
    """What a page of the queue is narrowed to (every field optional)."""

    label: str | None = None  # real | ai | unlabeled
    source: str | None = None
    generator: str | None = None
    min_score: float | None = None  # P(ai) bounds, inclusive; unscored images are left out
    max_score: float | None = None

    def check(self) -> ReviewFilter:
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, got {self.label!r}")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score {self.min_score} is above max_score {self.max_score}")
        return self


async def review_queue(
    dataset,
    settings: Settings,
    *,
    kind: str = "all",
    limit: int = 50,
    offset: int = 0,
    filters: ReviewFilter | None = None,
    sort: str = "disagreement",
) -> QueuePage:
    """One page of the queue: ``{total, limit, offset, kind, sort, items, facets}``; ``facets``:
    the sources and generators in the queue (before the filter), for a person to choose from.

    Ranked, filtered, paged and counted by the database (dataset/index.py ``review_page``, in the
    order :func:`rank` defines); metadata files are read for the page's entries (attribution), and
    once for rows whose ``person_label`` is not known yet (see :func:`fill_person_labels`).
    """
    check_query(kind, sort)
    filters = (filters or ReviewFilter()).check()
    offset = max(0, offset)  # a negative offset would count from the end
    await fill_person_labels(dataset, settings)
    total, values, facets = await dataset.index.review_page(
        QUEUE_COLUMNS,
        kind=kind,
        sort=sort,
        real_max=settings.review_real_max_score,
        ai_min=settings.review_ai_min_score,
        label=filters.label,
        source=filters.source,
        generator=filters.generator,
        min_score=filters.min_score,
        max_score=filters.max_score,
        limit=limit,
        offset=offset,
    )
    rows = [_queue_row(row) for row in values]
    page = [(row, found) for row in rows if (found := review_reason(row, settings)) is not None]
    return await _page(dataset, page, total, facets, kind=kind, sort=sort, limit=limit, offset=offset)


async def fill_person_labels(dataset, settings: Settings) -> int:
    """Rows the disagreement queue would hold whose ``person_label`` is NULL (indexed before the
    column) get it from their metadata files (``label_source.kind``), once; how many were filled."""
    unknown = await dataset.index.unknown_person_labels(
        settings.review_real_max_score, settings.review_ai_min_score
    )
    if not unknown:
        return 0
    metas = await read_metadata_files(dataset, [{"meta_key": key} for _, key in unknown])
    values = {
        image_id: int(((meta or {}).get("label_source") or {}).get("kind") == "person")
        for (image_id, _), meta in zip(unknown, metas, strict=True)
    }
    await dataset.index.set_person_labels(values)
    return len(values)


async def review_queue_in_python(
    dataset,
    settings: Settings,
    *,
    kind: str = "all",
    limit: int = 50,
    offset: int = 0,
    filters: ReviewFilter | None = None,
    sort: str = "disagreement",
) -> QueuePage:
    """:func:`review_queue` as it was before the database ranked it: every row read and ranked in
    Python per request, the disputed rows' metadata files read for their ``label_source``. Kept as
    the reference the database's order is tested against (tests/labeler/test_review_sql.py) and as
    bench/console_bench.py's baseline; not used to serve."""
    check_query(kind, sort)
    filters = (filters or ReviewFilter()).check()
    offset = max(0, offset)
    rows = [_queue_row(values) async for values in _queue_rows(dataset)]
    disputed = [row for row in rows if row["label"] != "unlabeled" and review_reason(row, settings)]
    for row, meta in zip(disputed, await read_metadata_files(dataset, disputed), strict=True):
        row["label_source"] = (meta or {}).get("label_source")
    ranked = rank(rows, settings, kind, sort)
    facets = {
        "sources": sorted({str(row.get("source")) for row, _ in ranked if row.get("source")}),
        "generators": sorted({str(row.get("generator")) for row, _ in ranked if row.get("generator")}),
    }
    ranked = [(row, found) for row, found in ranked if matches(row, filters)]
    page = ranked[offset : offset + limit]
    return await _page(dataset, page, len(ranked), facets, kind=kind, sort=sort, limit=limit, offset=offset)


def check_query(kind: str, sort: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")


def _queue_row(values: tuple) -> dict:
    row = dict(zip(QUEUE_COLUMNS, values, strict=True))
    row["timestamp"] = row.pop("created_at")
    return row


async def _page(dataset, page: list, total: int, facets: dict[str, list[str]], **query) -> QueuePage:
    metas = await read_metadata_files(dataset, [row for row, _ in page])
    items: list[QueueItem] = [
        {**queue_entry(meta or row, *found), "width": row["width"], "height": row["height"]}
        for (row, found), meta in zip(page, metas, strict=True)
    ]
    return {
        "total": total,
        "limit": query["limit"],
        "offset": query["offset"],
        "kind": query["kind"],
        "sort": query["sort"],
        "items": items,
        "facets": facets,
    }


# The index columns the queue ranks and filters on (one query, no metadata file read).
QUEUE_COLUMNS = (
    "id",
    "label",
    "confidence",
    "created_at",
    "source",
    "generator",
    "width",
    "height",
    "meta_key",
)


async def _queue_rows(dataset):
    async for page in dataset.index.column_pages(QUEUE_COLUMNS, ("real", "ai", "unlabeled")):
        for values in page:
            yield values


async def read_metadata_files(dataset, rows: list[dict]) -> list[dict | None]:
    """The metadata documents of ``rows`` read straight from their ``meta_key`` (no index lookup
    per image), in worker threads; None for a file that is gone or unreadable."""

    def read(keys: list[str]) -> list[dict | None]:
        out: list[dict | None] = []
        for key in keys:
            try:
                out.append(json.loads(dataset.storage.get(key)))
            except (KeyError, OSError, ValueError):  # StorageKeyError is a KeyError; `check` reports it
                out.append(None)
        return out

    keys = [row["meta_key"] for row in rows]
    chunks = [keys[i : i + METADATA_READS_PER_THREAD] for i in range(0, len(keys), METADATA_READS_PER_THREAD)]
    results = await asyncio.gather(*(asyncio.to_thread(read, chunk) for chunk in chunks))
    return [meta for chunk in results for meta in chunk]


async def read_metadata(dataset, rows: list[dict]) -> list[dict | None]:
    """The metadata documents of ``rows``, in order, a bounded number of reads at a time."""
    metas: list[dict | None] = []
    for start in range(0, len(rows), METADATA_READS_AT_ONCE):
        chunk = rows[start : start + METADATA_READS_AT_ONCE]
        metas.extend(await asyncio.gather(*(dataset.get_metadata(row["id"]) for row in chunk)))
    return metas


async def record_person_label(
    dataset, image_id: str, label: str, reviewer: str | None = None, keep_previous: bool = False
) -> ImageMetadata:
    """Store a person's label; ``label_source`` keeps who (the dataset adds when), and with
    ``keep_previous`` the label it replaces (``previous: {label, label_source}``), so
    :func:`undo_person_label` can put it back."""
    if label not in PERSON_LABELS:
        raise ValueError(f"label must be 'real' or 'ai', got {label!r}")
    source: dict = {"kind": "person", "by": reviewer or "api"}
    if keep_previous:
        meta = await dataset.get_metadata(image_id)
        if meta is not None:
            before = dict(meta.get("label_source") or {})
            before.pop("previous", None)  # one step back is kept, not the whole chain
            source["previous"] = {"label": meta.get("label"), "label_source": before or None}
    return await dataset.set_label(image_id, label, source)


async def undo_person_label(dataset, image_id: str, reviewer: str | None = None) -> ImageMetadata:
    """Put back the label a console label replaced (its ``label_source.previous``); the image goes
    back into the queue when that label was not a person's. NothingToUndo otherwise."""
    meta = await dataset.get_metadata(image_id)
    if meta is None:
        raise UnknownImageId(image_id)
    previous = (meta.get("label_source") or {}).get("previous")
    if not isinstance(previous, dict) or previous.get("label") not in LABELS:
        raise NothingToUndo(f"image {image_id} has no earlier label recorded: nothing to undo")
    source = previous.get("label_source") or {"kind": "undone", "by": reviewer or "api"}
    return await dataset.set_label(image_id, previous["label"], source)


def review_table(page: QueuePage) -> Table:
    """The queue page as a rich table for ``exposr-trainer review``.

    Each image's reason sits under its id (the id is never cut: PATCH /images/{id} takes it), so the
    table reads in an 80-column terminal too.
    """
    shown = f"{page['offset'] + 1}-{page['offset'] + len(page['items'])}" if page["items"] else "none"
    table = Table(
        title=f"Review queue ({page['kind']}): {shown} of {page['total']}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("id / why", min_width=36)
    table.add_column("label", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold", max_width=28)
    for item in page["items"]:
        score = "" if item["score"] is None else f"{item['score']:.3f}"
        cell = Text(item["id"]).append("\n").append(item["why"], style="dim")
        table.add_row(cell, item["label"], score, source_and_credit(item))
    return table


def source_and_credit(item: Mapping[str, Any]) -> str:
    credit = item["attribution"].get("photographer") or item["attribution"].get("platform") or ""
    source = item["source"] or ""
    return f"{source} ({credit})" if credit and str(credit).lower() != source.lower() else source


def image_media_type(data: bytes) -> str:
    """The content type from the bytes themselves (the stored extension came from them too)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            name = img.format or ""
            return MEDIA_TYPES.get(name) or Image.MIME.get(name, "application/octet-stream")
    except (UnidentifiedImageError, OSError):
        return "application/octet-stream"
