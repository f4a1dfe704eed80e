"""The per-source scrape report: counts kept while a source runs, a dict for JSON, a table for the CLI."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

COUNTS = ("api_requests", "retries", "downloaded", "stored", "duplicates", "near_duplicates")


@dataclass
class SourceReport:
    source: str
    label: str
    status: str = "ok"          # ok | stopped (gave up early: rate limit, quota, key) | skipped | failed
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "label": self.label, "status": self.status, "message": self.message,
            **{name: getattr(self, name) for name in COUNTS},
            "rejected": dict(sorted(self.rejected.items())), "errors": dict(sorted(self.errors.items())),
            "duration_s": round(self.duration_s, 3),
        }

    def summary(self) -> str:
        text = (f"{self.source}: {self.status}; {self.api_requests} API requests, {self.downloaded} "
                f"downloaded, {self.stored} stored, {self.duplicates} duplicates, {self.near_duplicates} "
                f"near-duplicates, rejected {dict(self.rejected) or 0}, errors {dict(self.errors) or 0}, "
                f"{self.duration_s:.1f}s")
        return f"{text} ({self.message})" if self.message else text


def totals(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over sources: every count, plus rejected and errors merged by reason."""
    out: dict[str, Any] = {name: sum(r[name] for r in reports) for name in COUNTS}
    for key in ("rejected", "errors"):
        merged: Counter[str] = Counter()
        for r in reports:
            merged.update(r[key])
        out[key] = dict(sorted(merged.items()))
    return out


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def format_report_table(report: dict[str, Any]) -> Table:
    """A rich table of a ``FetcherManager.run()`` report: one row per source and a total row."""
    table = Table(title=f"Scrape report ({report.get('duration_s', 0):.1f}s)")
    for column in ("source", "status", "requests", "downloaded", "stored", "dups", "near-dups",
                   "rejected", "errors"):
        table.add_column(column, justify="left" if column in {"source", "status", "rejected", "errors"}
                         else "right")
    for key, r in report["sources"].items():
        status = r["status"] if not r.get("message") else f"{r['status']}: {r['message']}"
        table.add_row(key, status, *(str(r[n]) for n in ("api_requests", "downloaded", "stored",
                      "duplicates", "near_duplicates")), _reasons(r["rejected"]), _reasons(r["errors"]))
    t = report["totals"]
    table.add_row("total", "", *(str(t[n]) for n in ("api_requests", "downloaded", "stored", "duplicates",
                  "near_duplicates")), _reasons(t["rejected"]), _reasons(t["errors"]), style="bold")
    return table
