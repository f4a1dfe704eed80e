"""Line charts drawn on the server as inline SVG: no chart library, no script, nothing to fetch.

Every text that ends up in the SVG (series names, axis labels) is escaped here, so a value from
source metadata can never become markup.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from app.ui.plots import fmt, nice_ticks

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 120, 12, 36
COLOURS = ("#2563eb", "#dc2626", "#6b7280", "#059669", "#d97706", "#7c3aed")


def _fmt(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def line_chart(
    x_labels: list[str],
    series: dict[str, list[float | None]],
    *,
    title: str,
    y_min: float | None = None,
    y_max: float | None = None,
    x_values: list[float] | None = None,
) -> Markup:
    """One polyline per series over ``x_labels`` (a None value leaves a gap in the points).

    Points are evenly spaced, or placed by ``x_values`` (for example days, so a gap in time shows).
    """
    values = [v for points in series.values() for v in points if v is not None]
    if not x_labels or not values:
        return Markup('<p class="empty">{}</p>').format(f"no data yet for {title}")
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    high = high if high > low else low + 1
    ticks = nice_ticks(low, high, 4, integer=all(float(v).is_integer() for v in values) and high - low >= 4)
    low, high = min(low, ticks[0]), max(high, ticks[-1])  # the axis ends on a round number
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    xs = x_values if x_values is not None else list(range(len(x_labels)))
    x_low, x_span = min(xs), (max(xs) - min(xs)) or 1

    def x(i: int) -> float:
        return LEFT + ((xs[i] - x_low) / x_span * plot_w if len(x_labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h - (v - low) / (high - low) * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" data-series="{len(series)}">',
        f"<title>{escape(title)}</title>",
    ]
    for v in ticks:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#e5e7eb"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{escape(fmt(v))}</text>"
        )
    shown = -1e9
    for i, label in enumerate(x_labels):
        last = i == len(x_labels) - 1
        if last or (x(i) - shown >= 80 and x(len(x_labels) - 1) - x(i) >= 80):  # labels 80 px apart
            shown = x(i)
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                f'font-size="11">{escape(label)}</text>'
            )
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = [(x(i), y(v), v, x_labels[i]) for i, v in enumerate(points) if v is not None]
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _, _ in coords)
        parts.append(
            f'<polyline class="series" data-name="{escape(name)}" data-points="{len(coords)}" '
            f'fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'
        )
        for cx, cy, v, label in coords:
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(f'{name} {label}: {_fmt(v)}')}</title></circle>"
            )
        ly = TOP + 14 + n * 16
        parts.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 24}" y="{ly}" font-size="12">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
