"""How `beatd history` and `beatd status` write spans and times relative to now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from beatd.timetext import absolute_and_relative, local_stamp, relative, span_text, stamp

NOW = datetime(2026, 12, 5, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0004, "0 ms"),
        (0.412, "412 ms"),
        (3.24, "3.2 s"),
        (59.9, "59.9 s"),
        (60, "1 min"),
        (252, "4 min 12 s"),
        (3600 * 2 + 300, "2 h 5 min"),
        (3600 * 2 + 59, "2 h"),
        (86400 * 3 + 3600, "3 d 1 h"),
        (-1.5, "-1.5 s"),
    ],
    ids=[
        "sub_ms", "ms", "seconds", "under_a_minute", "a_minute", "minutes_and_seconds",
        "hours_and_minutes", "hours_seconds_dropped", "days_and_hours", "negative_delay",
    ],
)  # fmt: skip
def test_span_text(seconds: float, text: str) -> None:
    assert span_text(timedelta(seconds=seconds)) == text


def test_no_span_is_a_dash() -> None:
    assert span_text(None) == "-"


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (0.4, "now"),
        (-0.9, "now"),
        (12, "in 12 s"),
        (-12, "12 s ago"),
        (4 * 60 + 59, "in 4 min"),
        (-(3 * 3600 + 3599), "3 h ago"),
        (2 * 86400 + 5, "in 2 d"),
    ],
    ids=["now_ahead", "now_behind", "s_ahead", "s_behind", "floored_min", "floored_h", "days"],
)
def test_relative_takes_the_largest_unit_floored(offset: float, text: str) -> None:
    assert relative(NOW + timedelta(seconds=offset), NOW) == text


def test_stamps() -> None:
    assert stamp(NOW) == "2026-12-05T01:30:00Z"
    assert stamp(NOW + timedelta(microseconds=412_345)) == "2026-12-05T01:30:00.412Z"
    assert stamp(None) is None
    assert local_stamp(NOW, "Europe/Berlin") == "2026-12-05T02:30:00+01:00"
    assert local_stamp(NOW, None) is None
    assert absolute_and_relative(NOW - timedelta(hours=3), NOW) == "2026-12-04T22:30:00Z (3 h ago)"
    assert absolute_and_relative(None, NOW) == "never"
