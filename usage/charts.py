"""Bar charts drawn on the server as SVG: no chart library, no CDN, no script.

``stacked_bars`` computes the geometry and ``svg`` writes it out. The markup is built in Python
rather than in a template: a 90-day chart has hundreds of elements and the template engine
made it the slowest part of the Usage page. Each bar carries a ``<title>`` for hover, and a
table beside the chart carries the same figures for screen readers.
"""

import math
from dataclasses import dataclass

from django.utils import formats
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 720
HEIGHT = 220
PAD_LEFT = 56
PAD_RIGHT = 8
PAD_TOP = 10
PAD_BOTTOM = 26


@dataclass(frozen=True)
class Segment:
    css_class: str
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    title: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Label:
    x: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    baseline: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[Label, ...]


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2, 2.5, 5 times 10^n)."""
    if value <= 0:
        return 1
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return int(step * exponent) or 1
    return 10 * exponent


def _short(n: float) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return f"{n:g}"


def stacked_bars(days, layers, title_for) -> Chart:
    """One bar per day with ``layers`` stacked bottom-up.

    ``days`` is a list of rows (``DayTotals``), ``layers`` a list of (attribute, css class),
    ``title_for(row)`` the hover text of a bar.
    """
    plot_width = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_height = HEIGHT - PAD_TOP - PAD_BOTTOM
    baseline = PAD_TOP + plot_height
    peak = max((sum(getattr(row, attr) for attr, _ in layers) for row in days), default=0)
    top = _nice_max(peak)
    slot = plot_width / max(len(days), 1)
    gap = min(4.0, slot * 0.2)
    bars = []
    for index, row in enumerate(days):
        y = baseline
        segments = []
        for attr, css_class in layers:
            height = plot_height * getattr(row, attr) / top
            if height > 0:
                y -= height
                segments.append(Segment(css_class, round(y, 2), round(height, 2)))
        bars.append(
            Bar(
                x=round(PAD_LEFT + index * slot + gap / 2, 2),
                width=round(max(slot - gap, 1), 2),
                title=title_for(row),
                segments=tuple(segments),
            )
        )
    ticks = tuple(
        Tick(y=round(baseline - plot_height * i / 4, 2), label=_short(top * i / 4))
        for i in range(5)
    )
    # Up to ~8 date labels whatever the range, so they never overlap.
    every = max(1, math.ceil(len(days) / 8))
    labels = tuple(
        Label(x=round(PAD_LEFT + index * slot + slot / 2, 2), text=f"{row.day:%m-%d}")
        for index, row in enumerate(days)
        if (len(days) - 1 - index) % every == 0
    )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=PAD_LEFT,
        plot_right=WIDTH - PAD_RIGHT,
        baseline=baseline,
        bars=tuple(bars),
        ticks=ticks,
        labels=labels,
    )


def number(n: int) -> str:
    return formats.number_format(n, force_grouping=True)


def _n(value: float) -> str:
    # Never localised: SVG wants a dot as the decimal mark whatever the page language.
    return f"{value:.2f}".rstrip("0").rstrip(".")


def svg(chart: Chart, label: str) -> SafeString:
    parts = [
        f'<svg class="usage-chart" viewBox="0 0 {chart.width} {chart.height}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="none">'
    ]
    left, right = chart.plot_left, chart.plot_right
    for tick in chart.ticks:
        y = _n(tick.y)
        parts.append(
            f'<line class="chart-grid" x1="{left}" x2="{right}" y1="{y}" y2="{y}"></line>'
            f'<text class="chart-tick" x="{left - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(tick.label)}</text>'
        )
    baseline = _n(chart.baseline)
    for bar in chart.bars:
        x, width = _n(bar.x), _n(bar.width)
        parts.append(f'<g class="chart-bar"><title>{escape(bar.title)}</title>')
        for segment in bar.segments:
            parts.append(
                f'<rect class="{segment.css_class}" x="{x}" y="{_n(segment.y)}" '
                f'width="{width}" height="{_n(segment.height)}"></rect>'
            )
        parts.append(
            f'<rect class="chart-hit" x="{x}" y="0" width="{width}" height="{baseline}"></rect></g>'
        )
    parts.append(
        f'<line class="chart-axis" x1="{left}" x2="{right}" y1="{baseline}" y2="{baseline}"></line>'
    )
    for text in chart.labels:
        parts.append(
            f'<text class="chart-label" x="{_n(text.x)}" y="{chart.height - 6}" '
            f'text-anchor="middle">{escape(text.text)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped above
