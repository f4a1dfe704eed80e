"""The one clock helper: the current time in UTC, and the two ways the product writes it down."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso_seconds(when: datetime | None = None) -> str:
    """``2026-11-27T05:20:41Z``: metadata files, model versions, registry entries."""
    return (when or utc_now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(when: datetime | None = None) -> str:
    """``2026-11-27T05:20:41.449541Z``: job rows (sortable as text, distinct within a second)."""
    return (when or utc_now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
