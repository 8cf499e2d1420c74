"""Bar charts drawn on the server as SVG geometry: no chart library, no CDN, no script.

The functions return plain numbers for ``templates/usage/_chart.html``; each bar carries a
``<title>`` for hover and a table beside the chart carries the same figures for screen readers.
"""

import math
from dataclasses import dataclass

from django.utils import formats

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
