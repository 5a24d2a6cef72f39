"""What every backend shares: instants stored as microseconds since the Unix epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from beatd.backends.base import from_micros, to_micros


def test_micros_round_trip_to_the_microsecond() -> None:
    moment = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC)
    assert to_micros(moment) == 1_774_747_800_123_456
    assert from_micros(to_micros(moment)) == moment
    assert from_micros(to_micros(moment)).tzinfo is UTC
    assert to_micros(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1_000_000
    assert from_micros(-1_000_001) == datetime(1969, 12, 31, 23, 59, 58, 999999, tzinfo=UTC)


def test_local_times_equal_across_a_fold_are_two_instants() -> None:
    # 01:30 happens twice in New York on 2026-11-01; Python calls the two equal
    first = datetime(2026, 11, 1, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    assert to_micros(first) == to_micros(first.astimezone(UTC))
    assert to_micros(second) - to_micros(first) == timedelta(hours=1) // timedelta(microseconds=1)
