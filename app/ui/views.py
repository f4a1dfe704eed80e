"""What the console pages show, built from the same cheap reads as /status (plain functions).

Dataset growth is one GROUP BY over the index; the registry is ``registry.json`` (no torch); jobs
come from the jobs table. Nothing here renders HTML except the charts (see app.ui.charts).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from itertools import accumulate
from typing import Any

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from app.routes.models import registered_artifact
from app.ui.charts import line_chart
from app.ui.plots import Frame, Interval, bar_plot, empty, interval_plot, nice_ticks
from dataset.contracts import LABELS
from dataset.errors import StorageError
from trainer.aliases import HistoryRow
from trainer.errors import ArtifactMissing
from trainer.model_store import model_store

log = logging.getLogger(__name__)

MODEL_METRICS = ("val_auc", "val_acc", "f1", "precision", "recall")
SCRAPE_HISTORY = 20  # newest succeeded scrape jobs searched for each source's last report
# (done, total) pairs a progress dict may carry, most specific first.
PROGRESS_PAIRS = (
    ("done", "total"),
    ("step", "total"),
    ("images_done", "images_total"),
    ("batch", "batches"),
    ("epoch", "epochs"),
)


async def growth(dataset) -> dict[str, Any]:
    """Images added per label: per day (cumulative line) over a history of days, per hour (bars)
    when everything arrived within one day."""
    rows = await dataset.added_by_label("day")
    days = sorted({row[0] for row in rows})
    if len(days) == 1:
        hourly = await dataset.added_by_label("hour")
        return {"days": days, "hours": _per_label(hourly), "series": {}}
    added = _per_label(rows)
    series = {label: list(accumulate(per_day.values())) for label, per_day in added.items()}
    return {"days": days, "series": series}


def _per_label(rows) -> dict[str, dict[str, int]]:
    keys = sorted({row[0] for row in rows})
    added: dict[str, dict[str, int]] = {label: dict.fromkeys(keys, 0) for label in LABELS}
    for when, label, n in rows:
        added.setdefault(label, dict.fromkeys(keys, 0))[when] += n
    return added


def growth_chart(data: dict) -> Any:
    if data.get("hours"):
        return hourly_chart(data["days"][0], data["hours"])
    days = []
    for day in data["days"]:
        try:
            days.append(float(date.fromisoformat(day).toordinal()))
        except ValueError:  # a row written by hand with an odd timestamp: keep its order
            days.append(days[-1] + 1 if days else 0.0)
    return line_chart(data["days"], data["series"], title="dataset size by label", y_min=0, x_values=days)


def hourly_chart(day: str, added: dict[str, dict[str, int]]) -> Any:
    """One day of arrivals: images added per hour (UTC), stacked by label."""
    hours = list(range(24))
    series = {
        label: [sum(n for when, n in per_hour.items() if when[11:13] == f"{h:02d}") for h in hours]
        for label, per_hour in added.items()
    }
    high = max(sum(values[h] for values in series.values()) for h in hours) or 1
    frame = Frame(
        f"images added per hour on {day} (UTC)",
        (0, 24),
        (0, high * 1.1),
        x_label="hour (UTC)",
        y_label="images",
        width=640,
        height=260,
    )
    frame.x_ticks = [(h, f"{h:02d}:00") for h in range(0, 25, 3)]
    frame.y_ticks = nice_ticks(0, high * 1.1, 5, integer=True)
    return bar_plot([float(h) for h in range(25)], series, frame, overlay=False)


def progress_view(job: dict) -> dict[str, Any]:
    """Percent, stage, rate and ETA of a job's latest progress report, for the page and its poller."""
    progress = job.get("progress") or {}
    percent = progress.get("percent")
    if not isinstance(percent, int | float):
        percent = None
        for done, total in PROGRESS_PAIRS:
            d, t = progress.get(done), progress.get(total)
            if isinstance(d, int | float) and isinstance(t, int | float) and t > 0:
                percent = 100.0 * d / t
                break
    stage = progress.get("stage") or progress.get("source") or job.get("kind")
    rate = progress.get("images_per_s")
    return {
        "id": job["id"],
        "kind": job["kind"],
        "state": job["state"],
        "trigger": job.get("trigger"),
        "started_at": job.get("started_at"),
        "stage": str(stage),
        "percent": None if percent is None else round(min(100.0, max(0.0, percent)), 1),
        "eta": format_seconds(progress.get("eta_s")),
        "rate": f"{rate:.1f} images/s" if isinstance(rate, int | float) else None,
        "detail": describe_progress(progress),
    }


def describe_progress(progress: dict) -> str:
    """``epoch 2/5 · batch 3/7 · train_loss=0.41``: counts as n/total, other short fields as k=v."""
    parts, used = [], {"percent", "eta_s", "images_per_s", "stage", "done", "total"}
    for done, total in (("epoch", "epochs"), ("batch", "batches"), ("step", "total"), ("done", "total")):
        if isinstance(progress.get(done), int) and isinstance(progress.get(total), int) and done not in used:
            parts.append(f"{done} {progress[done]}/{progress[total]}")
            used |= {done, total}
    parts += [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in progress.items()
        if k not in used and isinstance(v, str | int | float) and len(str(v)) < 60
    ]
    return " · ".join(parts)[:200]


def format_seconds(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float) or seconds < 0:
        return None
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def duration(job: dict) -> str | None:
    try:
        start = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    return format_seconds((end - start).total_seconds())


async def last_scrape_reports(store) -> list[dict]:
    """The newest report of each source, from the newest succeeded scrape jobs."""
    found: dict[str, dict] = {}
    for job in await store.list(limit=SCRAPE_HISTORY, kind="scrape", state="succeeded"):
        for name, report in ((job.get("result") or {}).get("sources") or {}).items():
            if name not in found and isinstance(report, dict):
                found[name] = {**report, "name": name, "finished_at": job.get("finished_at")}
    return sorted(found.values(), key=lambda r: r["name"])


def model_entries(settings) -> list[dict]:
    """Every registered version, newest first (a corrupt registry shows as none, with a log line)."""
    try:
        entries = model_store(settings).load_registry()  # MODELS_DIR, or the bucket (STORAGE_DRIVER=s3)
    except (ValueError, StorageError) as exc:
        log.error("cannot read the model registry: %s", exc)
        return []
    return list(reversed(entries))


def alias_trail(settings, rows: int = 50) -> tuple[dict[str, list[str]], list[HistoryRow]]:
    """version -> the aliases naming it (champion = served), and the newest ``rows`` alias changes."""
    from trainer.model_store import ModelRegistry

    try:
        registry = ModelRegistry(settings)
        history = registry.model_history(settings.model_name)
    except (ValueError, StorageError) as exc:
        log.error("cannot read the alias history: %s", exc)
        return {}, []
    named: dict[str, list[str]] = {}
    for alias, row in sorted(registry.aliases(settings.model_name).items()):
        named.setdefault(row["to"], []).append(alias)
    return named, history[::-1][:rows]


def models_chart(entries: list[dict]) -> Any:
    ordered = list(reversed(entries))  # oldest first, left to right
    labels = [f"{e.get('model')} {e.get('version')}" for e in ordered]
    series = {
        name: [e.get(name) if isinstance(e.get(name), int | float) else None for e in ordered]
        for name in MODEL_METRICS
    }
    return line_chart(
        labels,
        {k: v for k, v in series.items() if any(x is not None for x in v)},
        title="validation metrics per version",
        y_min=0,
        y_max=1,
    )


def benchmark_chart(request, settings) -> Any:
    """The frozen benchmark's AUC of every version of MODEL_NAME on one plot (oldest at the top),
    with its 95 % interval; a version not yet scored says so, and the background scoring is kicked
    (app/benchmark.py). None when EVAL_BENCHMARK_DIR is not set."""
    from trainer.benchmark import BenchmarkError, benchmark_view

    if settings.eval_benchmark_dir is None:
        return None
    try:
        view = benchmark_view(settings, settings.model_name)
    except (BenchmarkError, OSError, ValueError, StorageError) as exc:
        return empty(f"benchmark: {exc}")
    scorer = getattr(request.app.state, "benchmark", None)
    if view["pending"] and scorer is not None:
        scorer.kick()
    rows = []
    for v in view["versions"]:
        ci = v.get("auc_ci95") or [None, None]
        note = "being scored" if v["pending"] else (v.get("note") or "no AUC")
        rows.append(Interval(f"{view['model']} {v['version']}", v.get("auc"), ci[0], ci[1], note))
    n = view["n"]
    title = f"benchmark AUC per version ({n['real']} real + {n['ai']} ai, manifest {view['manifest'][:8]})"
    return interval_plot(rows, title)


def artifact_json(settings, entry: dict, filename: str) -> dict | None:
    """model.json / report.json of a registered version, wherever the store keeps it; None when
    absent or unreadable."""
    try:
        data = json.loads(model_store(settings).artifact(entry, filename).read().decode("utf-8"))
    except ArtifactMissing:
        return None
    except (StorageError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s of %s %s: %s", filename, entry.get("model"), entry.get("version"), exc)
        return None
    return data if isinstance(data, dict) else None


async def version_files(settings, name: str, version: str) -> tuple[dict, dict | None, dict | None]:
    """(registry entry, model.json, report.json) of a registered version; HTTPException 404 (unknown
    version) or 503 (registry unreadable) as the API answers."""
    artifact = await run_in_threadpool(registered_artifact, settings, name, version, "weights.pt")
    entry = artifact.entry
    card = await run_in_threadpool(artifact_json, settings, entry, "model.json")
    report = await run_in_threadpool(artifact_json, settings, entry, "report.json")
    return entry, card, report


def decision_text(entry: dict) -> str:
    """ "Promoted: first promoted version ..." / "Not promoted: AUC 0.71 ..." without saying it twice
    (the stored reason often starts with its own verdict)."""
    verdict = "Promoted" if entry.get("promoted") else "Not promoted"
    reason = str(entry.get("promotion_reason") or "").strip()
    for prefix in ("not promoted:", "promoted:", "not promoted", "promoted"):
        if reason.lower().startswith(prefix):
            reason = reason[len(prefix) :].lstrip(" :")
            break
    return f"{verdict}: {reason}" if reason else verdict


def read_json(path) -> dict | None:
    """A JSON file beside the weights, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("cannot read %s: %s", path.name, exc)
        return None
    return data if isinstance(data, dict) else None


def safe_url(value: Any) -> str | None:
    """A link target from source metadata, only when it is plain http(s) (never javascript:)."""
    if isinstance(value, str) and value.lower().startswith(("https://", "http://")):
        return value
    return None


def when(value: Any) -> Markup:
    """A timestamp as ``<time>``: the page's script shows it as "3 min ago" with the full time in
    the viewer's zone on hover; without the script, minutes in UTC (never microseconds)."""
    if not isinstance(value, str) or not value:
        return Markup("–")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return Markup("{}").format(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        iso, moment.strftime("%Y-%m-%d %H:%M:%S UTC"), moment.strftime("%Y-%m-%d %H:%M UTC")
    )


SCRAPE_COLUMNS = ("label", "status", "downloaded", "stored", "duplicates", "near_duplicates")
TRAIN_FACTS = (
    ("version", "version"),
    ("promoted", "promoted"),
    ("promotion_reason", "why"),
    ("val_auc", "AUC"),
    ("val_acc", "accuracy"),
    ("dataset_size", "dataset size"),
    ("train_size", "training images"),
    ("val_size", "evaluation images"),
    ("epochs", "epochs"),
    ("device", "device"),
    ("duration_s", "seconds"),
)


def cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in sorted(value.items())) or "0"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value[:10]) + (" …" if len(value) > 10 else "")
    return "–" if value is None else str(value)


def result_tables(job: dict) -> list[dict]:
    """A succeeded job's result as small tables (``{title, columns, rows, link}``): a scrape per
    source, a training's version and figures, any other kind (those added later too) as its fields."""
    result = job.get("result")
    if not isinstance(result, dict) or not result:
        return []
    if job.get("kind") == "scrape" and isinstance(result.get("sources"), dict):
        rows = [
            [
                name,
                *(cell(r.get(c)) for c in SCRAPE_COLUMNS),
                cell(r.get("rejected") or {}),
                cell(r.get("errors") or {}),
            ]
            for name, r in sorted(result["sources"].items())
            if isinstance(r, dict)
        ]
        totals = result.get("totals") or {}
        if totals:
            rows.append(
                [
                    "total",
                    "",
                    cell(result.get("status")),
                    *(cell(totals.get(c)) for c in SCRAPE_COLUMNS[2:]),
                    cell(totals.get("rejected") or {}),
                    cell(totals.get("errors") or {}),
                ]
            )
        columns = ["source", *SCRAPE_COLUMNS, "rejected", "errors"]
        return [
            {"title": "images per source", "columns": [c.replace("_", " ") for c in columns], "rows": rows}
        ]
    if job.get("kind") == "train" and result.get("version"):
        rows = [[title, cell(result.get(key))] for key, title in TRAIN_FACTS if key in result]
        link = f"/ui/models/{result.get('model')}/{result.get('version')}" if result.get("model") else None
        return [{"title": "the trained version", "columns": ["", ""], "rows": rows, "link": link}]
    rows = []
    for key, value in sorted(result.items()):
        if isinstance(value, dict) and value and all(not isinstance(v, dict | list) for v in value.values()):
            rows += [[f"{key} · {k}", cell(v)] for k, v in sorted(value.items())]
        else:
            rows.append([key, cell(value)])
    return [{"title": "result", "columns": ["", ""], "rows": rows[:60]}]


def served_line(status: dict, entries: list[dict]) -> dict:
    """The overview's served-model card: the version, or none with how many were trained and why
    the newest one did not pass the gate."""
    served = status.get("latest_model")
    if served:
        return {"served": served}
    if not entries:
        return {"served": None, "trained": 0}
    newest = entries[0]  # model_entries: newest first
    return {"served": None, "trained": len(entries), "newest": newest, "why": decision_text(newest)}


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
