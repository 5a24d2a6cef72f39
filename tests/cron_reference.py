"""A slow, deliberately naive oracle for cron fire times, to check `beatd.schedules.cron` against.

It shares no code with beatd and uses no cron library: a small field parser, then a walk over
every wall-clock second or minute in a window, applying cronie's rules as literally as they read:

- The zone's offset is sampled every minute and each change is pinned to the exact second, so
  the window splits into stretches of constant offset where ``wall time = instant + offset``.
- A *wildcard* job (minute or hour field starts with ``*``) fires at every instant whose wall
  time matches. A *fixed-time* job does too, except on the second pass of wall times repeated by
  a daylight-saving change, and it also fires at the instant of a spring-forward change when any
  wall time the change skipped matches.
- A change of three hours or more is a clock correction: the skipped wall times fire nothing and
  the repeated ones fire again for every job.

Only `reference_fires` is meant to be used; it is slow (a few milliseconds per day of window).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
CLOCK_CORRECTION = timedelta(hours=3)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def reference_fires(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every instant in (start, end] at which `expr` fires in `zone`, as aware datetimes."""
    job = Job.parse(expr)
    first = start.replace(microsecond=0) + SECOND  # the first whole second after start
    after_end = end.replace(microsecond=0) + SECOND
    # A daylight-saving repeat lasts under three hours, so looking that far back finds any
    # change whose repeated wall times are still running at `first`.
    stretches = offset_stretches(ZoneInfo(zone), first - CLOCK_CORRECTION, after_end)
    fires = set()
    for begin, until, offset, previous in stretches:
        change = offset - previous
        for wall in job.wall_times(begin + offset, until + offset):
            instant = (wall - offset).replace(tzinfo=UTC)
            if not first <= instant < after_end or not job.matches(wall):
                continue
            repeated = -CLOCK_CORRECTION < change < timedelta(0)
            second_pass = repeated and wall < _naive(begin + previous)
            if second_pass and not job.wildcard:
                continue
            fires.add(instant)
        spring_forward = timedelta(0) < change < CLOCK_CORRECTION
        if spring_forward and not job.wildcard and first <= begin < after_end:
            skipped = job.wall_times(begin + previous, begin + offset)
            if any(job.matches(wall) for wall in skipped):
                fires.add(begin)
    return sorted(fires)


@lru_cache(maxsize=64)
def offset_stretches(
    zone: ZoneInfo, low: datetime, high: datetime
) -> tuple[tuple[datetime, datetime, timedelta, timedelta], ...]:
    """Split [low, high) into (begin, until, offset, previous offset) stretches of one offset.

    The offset is sampled every minute (no zone keeps an offset for less than a minute) and a
    change is then located to the second by trying each second of that minute. The first
    stretch's previous offset is its own offset: nothing is known to have changed at `low`.
    """
    begins = [low]
    offsets = [_offset(zone, low)]
    t = low
    while t < high:
        step = min(t + MINUTE, high)
        if _offset(zone, step) != offsets[-1]:
            change = t + SECOND
            while _offset(zone, change) == offsets[-1]:
                change += SECOND
            begins.append(change)
            offsets.append(_offset(zone, change))
        t = step
    ends = [*begins[1:], high]
    previous = [offsets[0], *offsets[:-1]]
    return tuple(zip(begins, ends, offsets, previous, strict=True))


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


@dataclass(frozen=True)
class Job:
    """One parsed cron line: the allowed values of each field, kept as plain sets."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    days: DayMatcher
    wildcard: bool
    has_seconds: bool

    @classmethod
    def parse(cls, expr: str) -> Job:
        fields = MACROS.get(expr.strip().lower(), expr).split()
        has_seconds = len(fields) == 6
        if not has_seconds:
            fields.insert(0, "0")
        second, minute, hour, dom, month, dow = fields
        return cls(
            seconds=_values(second, 0, 59),
            minutes=_values(minute, 0, 59),
            hours=_values(hour, 0, 23),
            months=_values(month, 1, 12, MONTHS, first_name=1),
            days=DayMatcher.parse(dom, dow),
            wildcard=minute.startswith("*") or hour.startswith("*"),
            has_seconds=has_seconds,
        )

    def wall_times(self, low: datetime, high: datetime) -> list[datetime]:
        """The naive wall times in [low, high) that could match: whole minutes, or with a
        seconds field, whole seconds."""
        step = SECOND if self.has_seconds else MINUTE
        wall = _naive_ceil(low, step)
        walls = []
        while wall < _naive(high):
            walls.append(wall)
            wall += step
        return walls

    def matches(self, wall: datetime) -> bool:
        return (
            wall.second in self.seconds
            and wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
            and self.days.matches(wall.date())
        )


def _naive(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


def _naive_ceil(t: datetime, step: timedelta) -> datetime:
    """`t` as a naive wall time, rounded up to a whole `step` (a second or a minute)."""
    t = _naive(t)
    floor = t.replace(microsecond=0) if step == SECOND else t.replace(second=0, microsecond=0)
    return floor if floor == t else floor + step


@dataclass(frozen=True)
class DayMatcher:
    """The two day fields. When either starts with `*` both must match, else either may."""

    month_days: frozenset[int]
    last_day: bool  # L
    last_weekday: bool  # LW
    nearest_weekday_to: frozenset[int]  # 15W
    weekdays: frozenset[int]  # 0 is Sunday
    last_of: frozenset[int]  # 5L: the last Friday of the month
    nth: frozenset[tuple[int, int]]  # 5#3: the third Friday of the month
    both_must_match: bool

    @classmethod
    def parse(cls, dom: str, dow: str) -> DayMatcher:
        dom_items, dow_items = dom.upper().split(","), dow.upper().split(",")
        plain_dom = [i for i in dom_items if not i.endswith(("L", "W"))]
        plain_dow = [i for i in dow_items if not i.endswith("L") and "#" not in i]
        nth = set()
        for item in dow_items:
            if "#" in item:
                day, _, k = item.partition("#")
                nth.add((_weekday_number(day), int(k)))
        return cls(
            month_days=_values(",".join(plain_dom), 1, 31) if plain_dom else frozenset(),
            last_day="L" in dom_items,
            last_weekday="LW" in dom_items,
            nearest_weekday_to=frozenset(
                int(i[:-1]) for i in dom_items if i.endswith("W") and i != "LW"
            ),
            weekdays=_weekday_values(",".join(plain_dow)) if plain_dow else frozenset(),
            last_of=frozenset(
                _weekday_number(i[:-1]) for i in dow_items if i.endswith("L") and "#" not in i
            ),
            nth=frozenset(nth),
            both_must_match=dom.startswith("*") or dow.startswith("*"),
        )

    def matches(self, day: date) -> bool:
        by_month_day = self._month_day_matches(day)
        by_weekday = self._weekday_matches(day)
        if self.both_must_match:
            return by_month_day and by_weekday
        return by_month_day or by_weekday

    def _month_day_matches(self, day: date) -> bool:
        length = calendar.monthrange(day.year, day.month)[1]
        weekdays_of_month = _monday_to_friday(day.year, day.month)
        return (
            day.day in self.month_days
            or (self.last_day and day.day == length)
            or (self.last_weekday and day.day == weekdays_of_month[-1])
            or any(
                n <= length and day.day == min(weekdays_of_month, key=lambda d: abs(d - n))
                for n in self.nearest_weekday_to
            )
        )

    def _weekday_matches(self, day: date) -> bool:
        weekday = day.isoweekday() % 7  # Sunday is 0
        length = calendar.monthrange(day.year, day.month)[1]
        return (
            weekday in self.weekdays
            or (weekday in self.last_of and day.day + 7 > length)
            or (weekday, (day.day - 1) // 7 + 1) in self.nth
        )


@lru_cache(maxsize=256)
def _monday_to_friday(year: int, month: int) -> list[int]:
    length = calendar.monthrange(year, month)[1]
    return [d for d in range(1, length + 1) if date(year, month, d).isoweekday() <= 5]


def _values(
    text: str, low: int, high: int, names: list[str] | None = None, first_name: int = 0
) -> frozenset[int]:
    """Expand `*`, `a`, `a-b`, `*/n`, `a-b/n` and `a/n` (a to the top, step n), comma-joined."""

    def number(token: str) -> int:
        if names and token.upper() in names:
            return names.index(token.upper()) + first_name
        return int(token)

    values: set[int] = set()
    for item in text.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = number(a), number(b)
        else:
            first = number(span)
            last = high if step else first
        values.update(range(first, last + 1, int(step) if step else 1))
    assert all(low <= v <= high for v in values), text
    return frozenset(values)


def _weekday_values(text: str) -> frozenset[int]:
    """Day-of-week values: 0 and 7 are both Sunday, and a range may end on Sunday (FRI-SUN)."""
    items = []
    for item in text.split(","):
        span, slash, step = item.partition("/")
        if "-" in span:
            a, _, b = span.partition("-")
            if _weekday_number(b) == 0 and _weekday_number(a) > 0:
                span = f"{a}-7"
        if slash and span != "*" and "-" not in span:
            raise ValueError(f"{item!r}: 'a/n' has no agreed meaning in day of week")
        items.append(span + slash + step)
    return frozenset(v % 7 for v in _values(",".join(items), 0, 7, WEEKDAYS))


def _weekday_number(token: str) -> int:
    return WEEKDAYS.index(token) if token in WEEKDAYS else int(token) % 7
