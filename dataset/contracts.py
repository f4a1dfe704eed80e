"""What the dataset hands to the other packages, typed once: the label vocabulary, the counts and
the check report.

(``IngestOutcome`` and ``Sample`` are dataclasses in ``dataset/manager.py``.) ``DatasetParts``: what
the check needs of a ``DatasetManager`` (dataset/check.py takes it, and never imports the manager).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

if TYPE_CHECKING:
    from config.settings import Settings
    from dataset.index import DedupeIndex
    from dataset.storage import StorageDriver

# The one label vocabulary: what an image's ``label`` may be, and what a person may give it.
Label = Literal["real", "ai", "unlabeled"]
LABELS: tuple[Label, ...] = ("real", "ai", "unlabeled")
PERSON_LABELS: tuple[Label, ...] = ("real", "ai")


class LabelCounts(TypedDict):
    total: int
    real: int
    ai_generated: int
    unlabeled: int


class DatasetCounts(LabelCounts):
    """``DatasetManager.counts()``: images by label, overall and per source."""

    by_source: dict[str, LabelCounts]


class ImageMetadata(TypedDict, total=False):
    """An image's metadata file (``meta/YYYY/MM/DD/{id}.json``, docs/dataset.md): what
    ``DatasetManager.get_metadata()``, ``set_label()`` and ``set_score()`` return.

    ``total=False``: a file rebuilt from the index, or written before a field existed, lacks some;
    a file also keeps the extra fields its source gave (``edit_of``, ...), which are not listed.
    """

    id: str
    source: str
    label: str  # one of LABELS in a valid file
    confidence: float | None  # the last model's P(ai)
    timestamp: str
    hash: str  # SHA-256
    attribution: dict[str, Any]
    api_data: dict[str, Any]
    format: str
    width: int
    height: int
    phash: str  # 16 hex digits
    generator: str | None
    group_hint: str
    split_group: str
    split: str
    label_source: dict[str, Any]  # who labelled it and when (a person's label: kind "person")
    scored_by: dict[str, Any]  # the scorer of ``confidence`` and when
    rebuilt_from_index: bool


class CheckReport(TypedDict, total=False):
    """``DatasetManager.check()`` / ``run_check()``: drift between files and index, and any repair.

    Each drift kind lists what was found (ids and keys); ``ok`` is True when none was, and no repair
    was refused. ``index_moved_aside`` is set when ``run_check`` moved an unreadable index aside.
    """

    storage: str
    rows: int
    image_files: int
    meta_files: int
    dead_rows: list[dict[str, Any]]
    unindexed: list[dict[str, Any]]
    duplicate_copies: list[dict[str, Any]]
    missing_meta: list[dict[str, Any]]
    orphan_images: list[str]
    orphan_meta: list[str]
    stale_temp_files: list[str]
    unreadable_meta: list[dict[str, Any]]
    mismatched: list[dict[str, Any]]
    in_flight: list[str]
    deletion_candidates: list[str]
    repair: bool
    rebuild_index: bool
    repaired: dict[str, Any]
    ok: bool
    index_moved_aside: str


class DatasetParts(Protocol):
    """The parts of an open ``DatasetManager`` that ``check_dataset`` reads and repairs."""

    settings: Settings
    storage: StorageDriver
    index: DedupeIndex
