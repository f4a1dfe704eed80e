"""Rich output of the CLI: a progress bar fed by a job's progress dicts, and summary tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

console = Console()
_DONE_KEYS = ("done", "completed", "step", "images_done", "batch", "epoch")
_TOTAL_KEYS = ("total", "steps", "images_total", "batches", "epochs")


def _first(data: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if isinstance(data.get(key), int | float):
            return data[key]
    return None


STAGES = {  # training steps before the epochs (trainer/train.py), as the bar names them
    "starting the training process": "starting the training process",
    "load": "loading the labelled samples",
    "split": "split (train / evaluation sides)",
    "audit": "audit (shortcut probe)",
    "model": "building the model",
    "cache": "cache",
    "evaluate": "evaluating, report, promotion",
}


def describe(data: dict) -> str:
    """A one-line description of a progress dict: its short scalar fields (training: its rate)."""
    stage = data.get("stage")
    if stage == "evaluate" and "images_per_s" in data:  # after the epochs: their figures stay in view
        return describe_training(data) + "  evaluating"
    if stage in STAGES:
        if stage == "cache" and isinstance(data.get("total"), int):
            return f"cache {data.get('done', 0)}/{data['total']}"
        return STAGES[stage]
    if "images_per_s" in data:
        return describe_training(data)
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in data.items()
        if isinstance(v, str | int | float) and len(str(v)) < 40
    ]
    return " ".join(parts)[:100]


def describe_training(data: dict) -> str:
    """``epoch 2/5  41.3 img/s  ETA 1:23  auc 0.912``: short enough for an 80-column terminal."""
    parts = [f"epoch {data.get('epoch')}/{data.get('epochs')}"]
    if isinstance(data.get("images_per_s"), int | float):
        parts.append(f"{data['images_per_s']:.1f} img/s")
    eta = data.get("eta_s")
    if isinstance(eta, int | float):
        minutes, seconds = divmod(int(eta), 60)
        parts.append(
            f"ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
            if minutes >= 60
            else f"ETA {minutes}:{seconds:02d}"
        )
    if isinstance(data.get("val_auc"), int | float):
        parts.append(f"auc {data['val_auc']:.3f}")
    return "  ".join(parts)


@contextmanager
def progress_bar(title: str, console: Console = console) -> Iterator[Callable[[dict], None]]:
    """A bar fed by progress dicts; dicts that name a ``source`` (scrape) get one bar per source,
    since sources run side by side and one shared bar would jump between them.

    Each bar keeps the fields it was sent before: training's per-epoch metrics arrive without the
    batch counts, and the bar stays where the last batch left it instead of jumping back.
    """
    columns = (
        TextColumn("[bold]{task.fields[name]}[/]"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {None: progress.add_task("starting", total=None, name=title)}
        seen: dict[str | None, dict] = {}
        fresh = True  # the first bar is taken over by the first source instead of left at "starting"

        def report(data: dict) -> None:
            nonlocal fresh
            part = data["source"] if isinstance(data.get("source"), str) else None
            if part not in tasks:
                tasks[part] = tasks.pop(None) if fresh else progress.add_task("", total=None, name=title)
            fresh = False
            fields = {k: v for k, v in data.items() if k != "source"} if part else data
            previous = seen.get(part, {})
            stage = fields.get("stage")
            if stage not in (None, "evaluate") and stage != previous.get("stage", stage):
                previous = {}  # a new step: the last one's counts (cache 117/117) do not carry over
            fields = seen[part] = {**previous, **fields}
            progress.update(
                tasks[part],
                name=f"{title} {part}" if part else title,
                description=describe(fields),
                completed=_first(fields, _DONE_KEYS) or 0,
                total=_first(fields, _TOTAL_KEYS),
            )

        yield report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def print_mapping(title: str, data: Mapping[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(str(key), _cell(value))
    console.print(table)
