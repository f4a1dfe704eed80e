"""Line charts drawn on the server as inline SVG: no chart library, no script, nothing to fetch.

Every text that ends up in the SVG (series names, axis labels) is escaped here, so a value from
source metadata can never become markup.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 12, 36
COLOURS = ("#2563eb", "#dc2626", "#6b7280", "#059669", "#d97706", "#7c3aed")


def _fmt(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def line_chart(x_labels: list[str], series: dict[str, list[float | None]], *, title: str,
               y_min: float | None = None, y_max: float | None = None) -> Markup:
    """One polyline per series over ``x_labels`` (a None value leaves a gap in the points)."""
    values = [v for points in series.values() for v in points if v is not None]
    if not x_labels or not values:
        return Markup('<p class="empty">{}</p>').format(f"no data yet for {title}")
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    high = high if high > low else low + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(x_labels) - 1)

    def x(i: int) -> float:
        return LEFT + (i * step if len(x_labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h - (v - low) / (high - low) * plot_h

    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'xmlns="http://www.w3.org/2000/svg" data-series="{len(series)}">',
             f"<title>{escape(title)}</title>"]
    for tick in range(5):
        v = low + (high - low) * tick / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">'
                     f"{escape(_fmt(v))}</text>")
    every = max(1, len(x_labels) // 8)
    for i, label in enumerate(x_labels):
        if i % every == 0 or i == len(x_labels) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                         f'font-size="11">{escape(label)}</text>')
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = [(x(i), y(v), v, x_labels[i]) for i, v in enumerate(points) if v is not None]
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _, _ in coords)
        parts.append(f'<polyline class="series" data-name="{escape(name)}" data-points="{len(coords)}" '
                     f'fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for cx, cy, v, label in coords:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}">'
                         f"<title>{escape(f'{name} {label}: {_fmt(v)}')}</title></circle>")
        ly = TOP + 14 + n * 16
        parts.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 24}" y="{ly}" font-size="12">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
