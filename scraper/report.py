"""The per-source scrape report: counts kept while a source runs, a dict for JSON, a table for the CLI."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from rich import box
from rich.console import Group
from rich.table import Table

COUNTS = ("api_requests", "retries", "downloaded", "stored", "duplicates", "near_duplicates")


class ScrapeTotals(TypedDict):
    api_requests: int
    retries: int
    downloaded: int
    stored: int
    duplicates: int
    near_duplicates: int
    rejected: dict[str, int]  # by reason
    errors: dict[str, int]  # by kind


class SourceReportDict(ScrapeTotals):
    """One source's line of the scrape report (``SourceReport.to_dict()``)."""

    source: str
    label: str
    status: str  # ok | partial | stopped | skipped | failed
    message: str | None  # why it stopped, was skipped or failed, for a person
    duration_s: float


class ScrapeReport(TypedDict):
    """What a scrape returns (``FetcherManager.run``, ``run_scrape``; a scrape job's result)."""

    sources: dict[str, SourceReportDict]  # by key: the source name, or name#2 for a second entry
    totals: ScrapeTotals
    status: str  # ok | partial | failed (every source that ran failed)
    duration_s: float


@dataclass
class SourceReport:
    source: str
    label: str
    # ok | partial (some images could not be stored) | stopped (gave up early: rate limit, quota,
    # key, DNS) | skipped | failed (nothing stored because of storage errors, or the source broke)
    status: str = "ok"
    message: str | None = None  # why a source stopped, was skipped or failed, for a person
    api_requests: int = 0
    retries: int = 0
    downloaded: int = 0
    stored: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    duration_s: float = 0.0

    def to_dict(self) -> SourceReportDict:
        return {
            "source": self.source,
            "label": self.label,
            "status": self.status,
            "message": self.message,
            "api_requests": self.api_requests,
            "retries": self.retries,
            "downloaded": self.downloaded,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "rejected": dict(sorted(self.rejected.items())),
            "errors": dict(sorted(self.errors.items())),
            "duration_s": round(self.duration_s, 3),
        }

    def summary(self) -> str:
        text = (
            f"{self.source}: {self.status}; {self.api_requests} API requests, {self.downloaded} "
            f"downloaded, {self.stored} stored, {self.duplicates} duplicates, {self.near_duplicates} "
            f"near-duplicates, rejected {dict(self.rejected) or 0}, errors {dict(self.errors) or 0}, "
            f"{self.duration_s:.2f}s"
        )
        return f"{text} ({self.message})" if self.message else text


def note_storage_errors(report: SourceReport) -> None:
    """Images the dataset could not keep (full disk, index down) make the source partial or failed."""
    # ingest_storage_error, ingest_index_error, ingest_<Exception>: rejections are counted apart.
    lost = sum(n for kind, n in report.errors.items() if kind.startswith("ingest_"))
    if not lost or report.status in ("failed", "skipped"):
        return
    what = (
        f"{lost} downloaded image(s) could not be stored (storage or index errors: "
        f"{', '.join(f'{k} {n}' for k, n in sorted(report.errors.items()) if k.startswith('ingest_'))}); "
        "see the log, free disk space or fix the storage, and scrape again"
    )
    status = "partial" if report.stored else "failed"
    report.message = f"{what}; {report.message}" if report.message else what
    report.status = status if report.status == "ok" or status == "failed" else report.status


def overall_status(reports: list[SourceReportDict]) -> str:
    """The run in one word: failed (every source that ran failed), partial, or ok."""
    ran = [r["status"] for r in reports if r["status"] != "skipped"]
    if ran and all(s == "failed" for s in ran):
        return "failed"
    return "partial" if any(s in ("failed", "partial") for s in ran) else "ok"


def totals(reports: list[SourceReportDict]) -> ScrapeTotals:
    """Sums over sources: every count, plus rejected and errors merged by reason."""
    out: dict[str, Any] = {name: sum(r[name] for r in reports) for name in COUNTS}  # type: ignore[literal-required]
    for key in ("rejected", "errors"):
        merged: Counter[str] = Counter()
        for r in reports:
            merged.update(r[key])
        out[key] = dict(sorted(merged.items()))
    return cast(ScrapeTotals, out)


ROWS = (
    ("api_requests", "API requests"),
    ("retries", "retries"),
    ("downloaded", "downloaded"),
    ("stored", "stored"),
    ("duplicates", "duplicates"),
    ("near_duplicates", "near-duplicates"),
)


def format_report_table(report: dict[str, Any]) -> Group:
    """What the CLI prints for a ``FetcherManager.run()`` report: the counts with one column per
    source (narrow enough for an 80-column terminal), then each source's reasons and messages."""
    return Group(_counts_table(report), *([details] if (details := _details_table(report)) else []))


def _counts_table(report: dict[str, Any]) -> Table:
    sources, total = report["sources"], report["totals"]
    table = Table(title=f"Scrape report ({report.get('duration_s', 0):.1f}s)", box=box.SIMPLE_HEAD)
    table.add_column("")
    for key in sources:
        table.add_column(key, justify="right")
    table.add_column("total", justify="right", style="bold")
    table.add_row("label", *(r["label"] for r in sources.values()), "")
    table.add_row("status", *(r["status"] for r in sources.values()), "")
    for name, title in ROWS:
        table.add_row(title, *(str(r[name]) for r in sources.values()), str(total[name]))
    for name in ("rejected", "errors"):
        table.add_row(
            name, *(str(sum(r[name].values())) for r in sources.values()), str(sum(total[name].values()))
        )
    table.add_row(
        "seconds", *(f"{r['duration_s']:.1f}" for r in sources.values()), f"{report.get('duration_s', 0):.1f}"
    )
    return table


def _details_table(report: dict[str, Any]) -> Table | None:
    """One row per message, rejection reason and error kind, so nothing is cut to fit a column."""
    table = Table(box=box.SIMPLE_HEAD, show_header=True)
    for column in ("source", "what", "details"):
        table.add_column(column, overflow="fold" if column == "details" else "ellipsis")
    for key, r in report["sources"].items():
        if r.get("message"):
            table.add_row(key, r["status"], r["message"])
        for name in ("rejected", "errors"):
            if r[name]:
                table.add_row(key, name, ", ".join(f"{reason} {n}" for reason, n in r[name].items()))
    return table if table.row_count else None
