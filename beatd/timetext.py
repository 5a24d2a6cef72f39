"""Times and spans as `beatd history` and `beatd status` show them: absolute UTC stamps for
machines and logs, spans and times relative to now ("in 4 min", "3 h ago") for people."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

# The largest unit that fits is shown, floored: 119 s is "1 min", as `systemctl list-timers`
# rounds its "LEFT" and "PASSED" columns to one unit.
_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def stamp(moment: datetime | None) -> str | None:
    """UTC in ISO 8601 with a Z, milliseconds when the time is not a whole second (JSON)."""
    if moment is None:
        return None
    utc = moment.astimezone(UTC)
    spec = "seconds" if utc.microsecond == 0 else "milliseconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def local_stamp(moment: datetime, zone: str | None) -> str | None:
    """The time in the entry's zone, with its offset (as `beatd next` shows it); None when the
    zone is not known."""
    if zone is None:
        return None
    return moment.astimezone(ZoneInfo(zone)).isoformat(timespec="seconds")


def seconds(span: timedelta | None) -> float | None:
    return None if span is None else round(span.total_seconds(), 3)


def span_text(span: timedelta | None) -> str:
    """A run's delay or duration: "412 ms", "3.2 s", "4 min 12 s", "2 h 5 min", "3 d 1 h";
    "-" when there is none."""
    if span is None:
        return "-"
    total = span.total_seconds()
    if total < 0:
        return "-" + span_text(-span)
    if total < 1:
        return f"{total * 1000:.0f} ms"
    if total < 60:
        return f"{total:.1f} s"
    whole = int(total)
    for (unit, size), (small, small_size) in pairwise(_UNITS):
        if whole >= size:
            big, rest = divmod(whole, size)
            return f"{big} {unit}" + (
                f" {rest // small_size} {small}" if rest >= small_size else ""
            )
    return f"{whole} s"  # not reached: 60 s and more is at least a minute


def relative(moment: datetime, now: datetime) -> str:
    """ "in 4 min", "3 h ago", "now": the largest unit that fits, floored."""
    delta = (moment - now).total_seconds()
    size = abs(delta)
    if size < 1:
        return "now"
    unit, per = next((u, s) for u, s in _UNITS if size >= s)
    text = f"{int(size // per)} {unit}"
    return f"in {text}" if delta > 0 else f"{text} ago"


def absolute_and_relative(moment: datetime | None, now: datetime) -> str:
    """`2026-12-05T01:30:00Z (3 h ago)`, or "never"."""
    if moment is None:
        return "never"
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} ({relative(moment, now)})"
