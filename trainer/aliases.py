"""Aliases and their history: which version each alias (``champion``, ``canary``, ...) names, and
every change of it, appended and never rewritten. No torch, no I/O here: the stores read and write
the rows (trainer/registry.py on one host, trainer/model_store.py in the bucket).

``history.json`` (beside ``registry.json``) is a JSON array of rows, oldest first::

    {"seq": 3, "model": "vit", "alias": "champion", "from": "v2", "to": "v1",
     "at": "2026-12-01T10:00:00.000000+00:00", "cause": "rollback", "actor": "cli",
     "reason": "v2 flags every screenshot", "report": null}

The served version is the ``champion`` alias. A registry written before aliases existed has no
``history.json``: its history is reconstructed from the entries' ``promoted`` flags (each promoted
version served from its timestamp until the next one), so old registries load unchanged and the
first new row is appended after the reconstructed ones.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal, TypedDict

from config.clock import iso_micro
from trainer.errors import AliasError

HISTORY_FILE = "history.json"
CHAMPION = "champion"
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
CAUSES = ("promotion", "rollback", "manual")
ACTORS = ("scheduler", "api", "console", "cli")
Cause = Literal["promotion", "rollback", "manual"]
Actor = Literal["scheduler", "api", "console", "cli"]
_VERSION_RE = re.compile(r"^v(\d+)$")


# One row of models/history.json: ``alias`` of ``model`` moved ``from`` a version (None: first set)
# ``to`` another. The functional form: "from" is a Python keyword. ``reconstructed`` only on rows
# rebuilt from a registry that predates aliases.
HistoryRow = TypedDict(
    "HistoryRow",
    {
        "seq": int,
        "model": str,
        "alias": str,
        "from": str | None,
        "to": str,
        "at": str,
        "cause": str,
        "actor": str,
        "reason": str,
        "report": dict[str, Any] | None,
        "reconstructed": bool,
    },
    total=False,
)


def check_alias_name(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise AliasError(
            422, f"alias {alias!r} is not a valid name: use 1-32 lowercase letters, digits, '-' or '_'"
        )
    return alias


def reconstructed_history(entries: list[dict]) -> list[dict]:
    """The champion's history of a registry written before aliases: one row per promoted entry."""
    rows: list[dict] = []
    served: dict[str, str | None] = {}
    for entry in entries:
        model, version = entry.get("model"), entry.get("version")
        if not entry.get("promoted") or not model or not version:
            continue
        rows.append(
            {
                "seq": len(rows) + 1,
                "model": model,
                "alias": CHAMPION,
                "from": served.get(model),
                "to": version,
                "at": entry.get("timestamp") or entry.get("trained_at") or "",
                "cause": "promotion",
                "actor": "scheduler",
                "reason": entry.get("promotion_reason")
                or "promoted by its training (reconstructed from registry.json)",
                "report": _report_ref(entry),
                "reconstructed": True,
            }
        )
        served[model] = version
    return rows


def _report_ref(entry: dict) -> dict | None:
    if not entry.get("report"):
        return None
    ref: dict[str, Any] = {"url": f"/models/{entry['model']}/{entry['version']}/report"}
    for key in ("compared_with", "auc_difference", "auc_difference_ci95", "promotion_reason"):
        if entry.get(key) is not None:
            ref[key] = entry[key]
    return ref


def effective_history(history: list[dict] | None, entries: list[dict]) -> list[dict]:
    """The stored rows, or the reconstruction when the registry predates aliases (``None``)."""
    return reconstructed_history(entries) if history is None else history


def current(history: list[dict], model: str) -> dict[str, str]:
    """alias -> version, as the last row of each alias of ``model`` set it."""
    aliases: dict[str, str] = {}
    for row in history:
        if row.get("model") == model and row.get("to"):
            aliases[row["alias"]] = row["to"]
    return aliases


def alias_rows(history: list[dict], model: str) -> dict[str, dict]:
    """alias -> the row that set its current version."""
    last: dict[str, dict] = {}
    for row in history:
        if row.get("model") == model:
            last[row["alias"]] = row
    return last


def served_at(history: list[dict], model: str, at: datetime, alias: str = CHAMPION) -> str | None:
    """The version ``alias`` named at instant ``at`` (None before its first row)."""
    version = None
    for row in history:
        if row.get("model") != model or row.get("alias") != alias:
            continue
        when = parse_instant(row.get("at") or "")
        if when is None or when > at:
            continue  # rows are appended in time order; an unreadable time never matches
        version = row.get("to")
    return version


def parse_instant(text: str) -> datetime | None:
    """An RFC 3339 instant (``Z`` or an offset); None for text without a timezone or unreadable."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def version_number(version: str | None) -> int | None:
    match = _VERSION_RE.match(version or "")
    return int(match.group(1)) if match else None


def append_row(
    history: list[dict],
    *,
    model: str,
    alias: str,
    to: str,
    cause: str,
    actor: str,
    reason: str,
    report: dict | None = None,
) -> dict:
    """Append one row (its ``from`` is the alias's current version) and return it."""
    if cause not in CAUSES:
        raise ValueError(f"cause must be one of {CAUSES}, got {cause!r}")
    if actor not in ACTORS:
        raise ValueError(f"actor must be one of {ACTORS}, got {actor!r}")
    row = {
        "seq": (history[-1].get("seq", len(history)) if history else 0) + 1,
        "model": model,
        "alias": alias,
        "from": current(history, model).get(alias),
        "to": to,
        "at": iso_micro(),
        "cause": cause,
        "actor": actor,
        "reason": reason,
        "report": report,
    }
    history.append(row)
    return row


def promotion_report(entry: dict) -> dict | None:
    """What a ``promotion`` row carries of the decision: the report's URL and its figures."""
    return _report_ref(entry)
