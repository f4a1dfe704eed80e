"""Plots drawn on the server as inline SVG: axes with round-number ticks, lines, bars, interval bars
and a 2x2 matrix. No chart library, no script, nothing fetched; works offline.

Every text that ends up in the SVG is escaped here. Each drawn series carries its data values
(``data-values="x,y x,y ..."``, in data units) beside the pixel coordinates, so a test or a reader
can check a curve against the numbers it was drawn from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#6b7280")
FONT = 11


def nice_step(span: float, count: int = 5) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``count`` intervals over ``span``."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high]: 0 / 20 / 40 / 60, never 20.2 / 40.5 / 60.8."""
    if high <= low:
        high = low + 1
    step = nice_step(high - low, count)
    if integer:
        step = max(1.0, math.ceil(step))
    start = math.floor(low / step + 1e-9) * step
    ticks: list[float] = []
    value = start
    while value < high + step * 0.5 and len(ticks) < 50:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high - 1e-9:
        ticks.append(round(value, 10))
    return ticks


def fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.1e}"


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    dashed: bool = False
    points: bool = True  # a dot on each value (off for long curves)
    colour: str | None = None


@dataclass
class Frame:
    """A plot area with its axes: maps data to pixels and draws ticks, grid, labels and legend."""

    title: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_label: str = ""
    y_label: str = ""
    width: int = 560
    height: int = 300
    left: int = 56
    right: int = 16
    top: int = 44
    bottom: int = 44
    x_ticks: list[tuple[float, str]] | None = None
    y_ticks: list[float] | None = None
    parts: list[str] = field(default_factory=list)
    legend: list[tuple[str, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        x0, x1 = self.x_range
        y0, y1 = self.y_range
        self.x_range = (x0, x1 if x1 > x0 else x0 + 1)
        self.y_range = (y0, y1 if y1 > y0 else y0 + 1)

    def x(self, v: float) -> float:
        x0, x1 = self.x_range
        return self.left + (v - x0) / (x1 - x0) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        y0, y1 = self.y_range
        return self.height - self.bottom - (v - y0) / (y1 - y0) * (self.height - self.top - self.bottom)

    def colour(self, n: int) -> str:
        return COLOURS[n % len(COLOURS)]

    def line(self, series: Series, n: int, kind: str = "series") -> None:
        colour = series.colour or self.colour(n)
        pairs = [(x, y) for x, y in zip(series.xs, series.ys, strict=True) if y is not None]
        pixels = " ".join(f"{self.x(x):.1f},{self.y(y):.1f}" for x, y in pairs)
        values = " ".join(f"{x:.6g},{y:.6g}" for x, y in pairs)
        dash = ' stroke-dasharray="5 4"' if series.dashed else ""
        self.parts.append(
            f'<polyline class="{kind}" data-name="{escape(series.name)}" data-points="{len(pairs)}" '
            f'data-values="{values}" fill="none" stroke="{colour}" stroke-width="2"{dash} points="{pixels}"/>'
        )
        if series.points:
            for x, y in pairs:
                self.parts.append(
                    f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="3" fill="{colour}">'
                    f"<title>{escape(f'{series.name}: {fmt(x)}, {fmt(y)}')}</title></circle>"
                )
        self.legend.append((series.name, colour, series.dashed))

    def rect(self, x0: float, x1: float, y0: float, y1: float, colour: str, tip: str, opacity: float = 1.0):
        left, right = sorted((self.x(x0), self.x(x1)))
        top, bottom = sorted((self.y(y0), self.y(y1)))
        self.parts.append(
            f'<rect class="bar" x="{left:.1f}" y="{top:.1f}" width="{max(right - left, 0.5):.1f}" '
            f'height="{max(bottom - top, 0.0):.1f}" fill="{colour}" fill-opacity="{opacity}">'
            f"<title>{escape(tip)}</title></rect>"
        )

    def text(self, x: float, y: float, text: str, anchor: str = "start", cls: str = "") -> None:
        klass = f' class="{cls}"' if cls else ""
        self.parts.append(
            f'<text{klass} x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{FONT}">'
            f"{escape(text)}</text>"
        )

    def reference(self, x0: float, y0: float, x1: float, y1: float, tip: str) -> None:
        self.parts.append(
            f'<line class="reference" x1="{self.x(x0):.1f}" y1="{self.y(y0):.1f}" x2="{self.x(x1):.1f}" '
            f'y2="{self.y(y1):.1f}" stroke="#9ca3af" stroke-dasharray="3 3">'
            f"<title>{escape(tip)}</title></line>"
        )

    def render(self, cls: str = "chart") -> Markup:
        head = [
            f'<svg class="{cls}" role="img" viewBox="0 0 {self.width} {self.height}" '
            f'xmlns="http://www.w3.org/2000/svg" data-title="{escape(self.title)}">',
            f"<title>{escape(self.title)}</title>",
        ]
        y_ticks = nice_ticks(*self.y_range) if self.y_ticks is None else self.y_ticks
        for tick in y_ticks:
            if self.y_range[0] - 1e-9 <= tick <= self.y_range[1] + 1e-9:
                yy = self.y(tick)
                head.append(
                    f'<line class="grid" x1="{self.left}" x2="{self.width - self.right}" '
                    f'y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e5e7eb"/>'
                )
                head.append(
                    f'<text class="tick" x="{self.left - 6}" y="{yy + 4:.1f}" text-anchor="end" '
                    f'font-size="{FONT}">{escape(fmt(tick))}</text>'
                )
        x_ticks = [(t, fmt(t)) for t in nice_ticks(*self.x_range)] if self.x_ticks is None else self.x_ticks
        for tick, label in x_ticks:
            if self.x_range[0] - 1e-9 <= tick <= self.x_range[1] + 1e-9:
                head.append(
                    f'<text class="tick" x="{self.x(tick):.1f}" y="{self.height - self.bottom + 15}" '
                    f'text-anchor="middle" font-size="{FONT}">{escape(label)}</text>'
                )
        bottom = self.height - self.bottom
        head.append(
            f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{bottom}" y2="{bottom}" '
            'stroke="#6b7280"/>'
        )
        if self.x_label:
            head.append(
                f'<text x="{(self.left + self.width - self.right) / 2:.1f}" y="{self.height - 6}" '
                f'text-anchor="middle" font-size="{FONT}">{escape(self.x_label)}</text>'
            )
        if self.y_label:
            head.append(
                f'<text x="12" y="{(self.top + bottom) / 2:.1f}" text-anchor="middle" font-size="{FONT}" '
                f'transform="rotate(-90 12 {(self.top + bottom) / 2:.1f})">{escape(self.y_label)}</text>'
            )
        head.append(
            f'<text x="{self.left}" y="16" font-size="12" font-weight="600">{escape(self.title)}</text>'
        )
        legend: list[str] = []
        lx: float = self.width - self.right
        for name, colour, dashed in reversed(self.legend):
            lx -= 18 + 6.5 * len(name)
            dash = ' stroke-dasharray="4 3"' if dashed else ""
            legend.append(
                f'<line x1="{lx:.1f}" x2="{lx + 12:.1f}" y1="28" y2="28" stroke="{colour}" '
                f'stroke-width="3"{dash}/><text x="{lx + 15:.1f}" y="32" font-size="{FONT}">'
                f"{escape(name)}</text>"
            )
        return Markup("".join([*head, *self.parts, *legend, "</svg>"]))


def empty(text: str) -> Markup:
    return Markup('<p class="empty plot-missing">{}</p>').format(text)


def line_plot(series: list[Series], frame: Frame, diagonal: str | None = None) -> Markup:
    """Lines in ``frame``; ``diagonal``: a dashed y = x reference with that tooltip."""
    if diagonal:
        frame.reference(frame.x_range[0], frame.y_range[0], frame.x_range[1], frame.y_range[1], diagonal)
    for n, s in enumerate(series):
        frame.line(s, n)
    return frame.render()


def bar_plot(
    edges: Sequence[float], series: Mapping[str, Sequence[float]], frame: Frame, overlay: bool = True
) -> Markup:
    """Bars between consecutive ``edges`` (one count per bin per series): a histogram, or counts per
    hour. ``overlay``: series drawn over each other, half transparent; otherwise stacked."""
    stacked = [0.0] * (len(edges) - 1)
    for n, (name, counts) in enumerate(series.items()):
        colour = frame.colour(n)
        for i, count in enumerate(counts):
            if not count:
                continue
            base = 0.0 if overlay else stacked[i]
            tip = f"{name} {fmt(edges[i])}–{fmt(edges[i + 1])}: {fmt(count)}"
            frame.rect(edges[i], edges[i + 1], base, base + count, colour, tip, 0.55 if overlay else 0.9)
            stacked[i] += count
        frame.parts.append(
            f'<g class="series" data-name="{escape(name)}" '
            f'data-values="{" ".join(fmt(c) for c in counts)}"></g>'
        )
        frame.legend.append((name, colour, False))
    return frame.render()


@dataclass
class Interval:
    name: str
    value: float | None
    low: float | None = None
    high: float | None = None
    note: str = ""


def interval_plot(rows: list[Interval], title: str, reference: float | None = 0.5, x_label: str = "AUC"):
    """One row per group: a dot at the value and a bar over its 95 % interval; a row without a value
    shows its note (``too few to evaluate``) instead."""
    if not rows:
        return empty(f"no groups for {title}")
    height = 44 + 36 + 24 * len(rows)
    frame = Frame(title, (0.0, 1.0), (0, len(rows)), x_label=x_label, height=height, left=170, bottom=36)
    frame.y_ticks = []
    if reference is not None:
        frame.reference(reference, 0, reference, len(rows), f"{x_label} {reference}: chance")
    for i, row in enumerate(rows):
        cy = frame.y(len(rows) - i - 0.5)
        label = row.name if len(row.name) <= 26 else row.name[:25] + "…"
        frame.parts.append(
            f'<text x="{frame.left - 8}" y="{cy + 4:.1f}" text-anchor="end" font-size="{FONT}">'
            f"<title>{escape(row.name)}</title>{escape(label)}</text>"
        )
        if row.value is None:
            frame.text(frame.left + 6, cy + 4, row.note or "no value", cls="note")
            continue
        if row.low is not None and row.high is not None:
            frame.parts.append(
                f'<line class="interval" data-name="{escape(row.name)}" '
                f'data-values="{row.low:.4g},{row.high:.4g}" '
                f'x1="{frame.x(row.low):.1f}" x2="{frame.x(row.high):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                'stroke="#2563eb" stroke-width="4" stroke-opacity="0.45"/>'
            )
        tip = f"{row.name}: {row.value:.3f}" + (
            f" [95% CI {row.low:.3f}, {row.high:.3f}]" if row.low is not None and row.high is not None else ""
        )
        frame.parts.append(
            f'<circle class="estimate" data-name="{escape(row.name)}" data-value="{row.value:.4g}" '
            f'cx="{frame.x(row.value):.1f}" cy="{cy:.1f}" r="4.5" fill="#1d4ed8">'
            f"<title>{escape(tip)}</title></circle>"
        )
        frame.text(frame.x(1.0) - 2, cy - 6, f"{row.value:.3f}", anchor="end", cls="value")
    return frame.render()


def horizontal_bars(rows: list[tuple[str, float, str]], title: str, x_label: str) -> Markup:
    """Named bars from 0 (``(name, value, tooltip)``): robustness drops."""
    if not rows:
        return empty(f"no data for {title}")
    high = max(0.05, *(abs(v) for _, v, _ in rows))
    low = min(0.0, *(v for _, v, _ in rows))
    height = 44 + 36 + 28 * len(rows)
    frame = Frame(
        title, (low, high * 1.1), (0, len(rows)), x_label=x_label, height=height, left=170, bottom=36
    )
    frame.y_ticks = []
    for i, (name, value, tip) in enumerate(rows):
        y0, y1 = len(rows) - i - 0.8, len(rows) - i - 0.2
        frame.rect(0.0, value, y0, y1, "#dc2626" if value > 0 else "#059669", tip)
        cy = frame.y(len(rows) - i - 0.5)
        frame.text(frame.left - 8, cy + 4, name, anchor="end")
        frame.text(max(frame.x(value), frame.x(0)) + 4, cy + 4, f"{value:+.3f}", cls="value")
    return frame.render()


def matrix(cells: list[list[int]], rows: Sequence[str], columns: Sequence[str], title: str) -> Markup:
    """A small count matrix (the confusion matrix), each cell shaded by its share of its row."""
    size, left, top = 90, 120, 48
    width, height = max(left + size * len(columns) + 16, 16 + 7 * len(title)), top + size * len(rows) + 16
    parts = [
        f'<svg class="chart matrix" role="img" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<text x="8" y="16" font-size="12" font-weight="600">{escape(title)}</text>',
    ]
    for j, name in enumerate(columns):
        parts.append(
            f'<text x="{left + size * j + size / 2}" y="{top - 8}" text-anchor="middle" '
            f'font-size="{FONT}">{escape(name)}</text>'
        )
    for i, name in enumerate(rows):
        total = sum(cells[i]) or 1
        parts.append(
            f'<text x="{left - 8}" y="{top + size * i + size / 2 + 4}" text-anchor="end" '
            f'font-size="{FONT}">{escape(name)}</text>'
        )
        for j, count in enumerate(cells[i]):
            share = count / total
            colour = "#059669" if i == j else "#dc2626"
            parts.append(
                f'<rect class="cell" data-row="{escape(name)}" data-column="{escape(columns[j])}" '
                f'data-value="{count}" x="{left + size * j}" y="{top + size * i}" width="{size - 2}" '
                f'height="{size - 2}" fill="{colour}" fill-opacity="{0.1 + 0.6 * share:.2f}"/>'
                f'<text x="{left + size * j + size / 2 - 1}" y="{top + size * i + size / 2 + 5}" '
                f'text-anchor="middle" font-size="15" font-weight="600">{count}</text>'
                f'<text x="{left + size * j + size / 2 - 1}" y="{top + size * i + size / 2 + 22}" '
                f'text-anchor="middle" font-size="10">{share:.0%} of row</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
