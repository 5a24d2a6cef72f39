"""The entry page's chart: duration and delay of the last runs as an inline SVG, drawn on the
server with no script or style attribute (the console's CSP), readable by a screen reader."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from beatd.console.chart import ChartRun, nice_ceiling, run_chart, summary

SVG = "{http://www.w3.org/2000/svg}"
RUNS = [
    ChartRun("2026-12-05T01:00:00Z", "succeeded", 2.0, 0.1),
    ChartRun("2026-12-05T01:10:00Z", "failed", 7.5, 0.3),
    ChartRun("2026-12-05T01:20:00Z", "running", None, 0.2),
    ChartRun("2026-12-05T01:30:00Z", "succeeded", 3.0, 1.5),
]


def parsed(runs: list[ChartRun]) -> ET.Element:
    return ET.fromstring(str(run_chart(runs)))


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (0.3, 0.5), (1, 1), (1.01, 2), (7.5, 10), (12, 20), (450, 500)],
    ids=["nothing", "tenths", "exact", "just_over", "to_ten", "tens", "hundreds"],
)
def test_the_scale_ends_at_a_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_the_chart_has_a_title_a_description_and_a_point_per_value() -> None:
    svg = parsed(RUNS)
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "chart-title chart-desc"
    assert svg.findtext(f"{SVG}title") == "Duration and delay of the last runs"
    assert svg.findtext(f"{SVG}desc") == (
        "4 runs, from 2026-12-05T01:00:00Z to 2026-12-05T01:30:00Z; longest duration 7.5 s; "
        "longest delay 1.5 s."
    )
    titles = [c.findtext(f"{SVG}title") for c in svg.iter(f"{SVG}circle")]
    assert titles == [
        "2026-12-05T01:00:00Z: duration 2.0 s, succeeded",
        "2026-12-05T01:10:00Z: duration 7.5 s, failed",
        "2026-12-05T01:30:00Z: duration 3.0 s, succeeded",
        "2026-12-05T01:00:00Z: delay 100 ms, succeeded",
        "2026-12-05T01:10:00Z: delay 300 ms, failed",
        "2026-12-05T01:20:00Z: delay 200 ms, running",
        "2026-12-05T01:30:00Z: delay 1.5 s, succeeded",
    ]


def test_a_run_without_a_duration_breaks_the_line_and_a_failure_is_hollow() -> None:
    svg = parsed(RUNS)
    lines = {p.get("class"): p.get("points") for p in svg.iter(f"{SVG}polyline")}
    # y = 184 - 156 * value / 10 s (the scale's top); duration: the first two runs, then a gap
    # (the running one), then one point alone: no line
    assert lines == {
        "line duration": "64.0,152.8 250.7,67.0",
        "line delay": "64.0,182.4 250.7,179.3 437.3,180.9 624.0,160.6",
    }
    failed = [c.get("fill") for c in svg.iter(f"{SVG}circle") if "failed" in c.get("class", "")]
    assert failed == ["none", "none"]


def test_the_axis_is_labelled_with_spans_and_the_first_and_last_slots() -> None:
    texts = [t.text for t in parsed(RUNS).iter(f"{SVG}text")]
    assert texts[:5] == ["0 ms", "5.0 s", "10.0 s", "2026-12-05T01:00:00Z", "2026-12-05T01:30:00Z"]
    assert texts[5:] == ["duration", "delay", "(hollow: the run did not succeed)"]


def test_no_run_says_so() -> None:
    svg = parsed([])
    assert svg.findtext(f"{SVG}desc") == "No runs to show."
    assert "No run has started yet." in [t.text for t in svg.iter(f"{SVG}text")]
    assert summary([ChartRun("s", "queued", None, None)]) == "1 run, from s to s."


def test_no_style_or_script_and_text_is_escaped() -> None:
    text = str(run_chart([ChartRun("<script>alert(1)</script>", "succeeded", 1.0, 0.0)]))
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "style" not in text
