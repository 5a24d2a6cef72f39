"""An entry's runs as a chart drawn on the server: duration and delay of the last runs, oldest
on the left, as an inline SVG (no script, no style attribute: the console's Content Security
Policy is `default-src 'self'`; colours are presentation attributes and classes).

The chart is a picture of the history table beside it, not a substitute: its <title> and <desc>
say what it shows for a screen reader, and each point's <title> gives the run's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from markupsafe import Markup, escape

from beatd.timetext import span_text

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 36  # room for the axis labels and the legend
SUCCEEDING = frozenset({"succeeded", "retried", "running", "queued"})  # drawn filled
SERIES = (  # (field, name, colour: readable on light and dark backgrounds)
    ("duration_s", "duration", "#2f7fd1"),
    ("delay_s", "delay", "#d9822b"),
)


@dataclass(frozen=True, slots=True)
class ChartRun:
    """One run as the chart draws it: its slot (a label), its status, and its duration and
    delay in seconds (None: not known, such as a run not started yet)."""

    slot: str
    status: str
    duration_s: float | None
    delay_s: float | None


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power  # not reached


def run_chart(
    runs: Sequence[ChartRun], title: str = "Duration and delay of the last runs"
) -> Markup:
    """The chart of `runs`, oldest first, as one <svg> element."""
    values = [v for run in runs for v in (run.duration_s, run.delay_s) if v is not None]
    top = nice_ceiling(max((max(v, 0.0) for v in values), default=0.0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="run-chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'aria-labelledby="chart-title chart-desc">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(summary(runs))}</desc>',
        *_axes(runs, top),
    ]
    if values:
        for field, name, colour in SERIES:
            parts += _series(runs, field, name, colour, top)
    else:
        parts.append(
            f'<text x="{WIDTH / 2:g}" y="{HEIGHT / 2:g}" text-anchor="middle" '
            'fill="currentColor">No run has started yet.</text>'
        )
    parts += _legend()
    parts.append("</svg>")
    return Markup("".join(parts))


def summary(runs: Sequence[ChartRun]) -> str:
    """The chart in one sentence: how many runs, and the longest duration and delay."""
    if not runs:
        return "No runs to show."
    said = [
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}, from {runs[0].slot} to {runs[-1].slot}"
    ]
    for field, name, _colour in SERIES:
        known = [v for run in runs if (v := getattr(run, field)) is not None]
        if known:
            said.append(f"longest {name} {_span(max(known))}")
    return "; ".join(said) + "."


def _x(index: int, count: int) -> float:
    inner = WIDTH - LEFT - RIGHT
    if count <= 1:
        return LEFT + inner / 2
    return LEFT + inner * index / (count - 1)


def _y(value: float, top: float) -> float:
    inner = HEIGHT - TOP - BOTTOM
    return HEIGHT - BOTTOM - inner * max(value, 0.0) / top


def _axes(runs: Sequence[ChartRun], top: float) -> list[str]:
    base = HEIGHT - BOTTOM
    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" '
        'stroke="currentColor"/>',
        f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" '
        'stroke="currentColor"/>',
    ]
    for value in (0.0, top / 2, top):
        y = _y(value, top)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            'stroke="currentColor" stroke-opacity="0.15"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="currentColor">{escape(_span(value))}</text>'
        )
    if runs:
        ends = [(0, "start"), (len(runs) - 1, "end")] if len(runs) > 1 else [(0, "middle")]
        for index, anchor in ends:
            parts.append(
                f'<text x="{_x(index, len(runs)):.1f}" y="{base + 16}" text-anchor="{anchor}" '
                f'font-size="11" fill="currentColor">{escape(runs[index].slot)}</text>'
            )
    return parts


def _series(runs: Sequence[ChartRun], field: str, name: str, colour: str, top: float) -> list[str]:
    """The series' line (broken where a run has no value) and a point per run with its title."""
    parts: list[str] = []
    segment: list[str] = []
    points: list[str] = []
    for index, run in enumerate(runs):
        value = getattr(run, field)
        if value is None:
            parts += _line(segment, name, colour)
            segment = []
            continue
        x, y = _x(index, len(runs)), _y(value, top)
        segment.append(f"{x:.1f},{y:.1f}")
        failed = "" if run.status in SUCCEEDING else " failed"
        points.append(
            f'<circle class="point {name}{failed}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" '
            f'fill="{colour if not failed else "none"}" stroke="{colour}">'
            f"<title>{escape(f'{run.slot}: {name} {_span(value)}, {run.status}')}</title></circle>"
        )
    parts += _line(segment, name, colour)
    return parts + points


def _line(segment: list[str], name: str, colour: str) -> list[str]:
    if len(segment) < 2:
        return []
    return [
        f'<polyline class="line {name}" points="{" ".join(segment)}" fill="none" '
        f'stroke="{colour}" stroke-width="2"/>'
    ]


def _legend() -> list[str]:
    parts = []
    x = LEFT
    for _field, name, colour in SERIES:
        parts.append(
            f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 16}" y="18" font-size="12" fill="currentColor">{name}</text>'
        )
        x += 96
    parts.append(
        f'<text x="{x}" y="18" font-size="12" fill="currentColor">'
        "(hollow: the run did not succeed)</text>"
    )
    return parts


def _span(value: float) -> str:
    return span_text(timedelta(seconds=value))
