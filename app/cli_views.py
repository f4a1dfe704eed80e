"""Rich output of the CLI: a progress bar fed by a job's progress dicts, and summary tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
_DONE_KEYS = ("done", "completed", "step", "images_done", "batch", "epoch")
_TOTAL_KEYS = ("total", "steps", "images_total", "batches", "epochs")


def _first(data: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if isinstance(data.get(key), int | float):
            return data[key]
    return None


def describe(data: dict) -> str:
    """A one-line description of a progress dict: its short scalar fields."""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in data.items() if isinstance(v, str | int | float) and len(str(v)) < 40]
    return " ".join(parts)[:100]


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[dict], None]]:
    """A bar fed by progress dicts; dicts that name a ``source`` (scrape) get one bar per source,
    since sources run side by side and one shared bar would jump between them."""
    columns = (TextColumn("[bold]{task.fields[name]}[/]"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {None: progress.add_task("starting", total=None, name=title)}
        fresh = True   # the first bar is taken over by the first source instead of left at "starting"

        def report(data: dict) -> None:
            nonlocal fresh
            part = data["source"] if isinstance(data.get("source"), str) else None
            if part not in tasks:
                tasks[part] = tasks.pop(None) if fresh else progress.add_task("", total=None, name=title)
            fresh = False
            fields = {k: v for k, v in data.items() if k != "source"} if part else data
            progress.update(tasks[part], name=f"{title} {part}" if part else title,
                            description=describe(fields), completed=_first(data, _DONE_KEYS) or 0,
                            total=_first(data, _TOTAL_KEYS))

        yield report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def print_mapping(title: str, data: dict) -> None:
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        table.add_row(str(key), _cell(value))
    console.print(table)
