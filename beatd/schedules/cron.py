"""Cron expressions evaluated in an IANA timezone with cronie's daylight-saving rules.

Parsing turns each field into a sorted tuple of allowed values; `next_wall` finds the next
matching wall-clock time, and `CronSchedule.next_after` maps wall times onto instants:

- A *wildcard* job (minute or hour field starts with ``*``) fires at every instant whose wall
  time matches: never inside a spring-forward gap, at both passes of a repeated hour.
- A *fixed-time* job fires once for a wall time that exists once; at the first pass of a repeated
  wall time only; and when its wall time falls in a spring-forward gap, at the first real instant
  after the jump.
- Offset changes of three hours or more are clock corrections, not DST (cronie's rule): the new
  time is used at once, so gaps fire nothing and repeated wall times fire again for every job.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from beatd.errors import ScheduleError
from beatd.schedules import hashed

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES = {
    name: i
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}
DAY_NAMES = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
CLOCK_CORRECTION = timedelta(hours=3)
SEARCH_YEARS = 400  # the Gregorian calendar repeats every 400 years: nothing found means never
# The end of what datetime holds: a schedule that has not fired by then never fires (None).
LAST_WALL = datetime(MAXYEAR, 12, 31, 23, 59, 59)
_SECOND = timedelta(seconds=1)
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)


SECOND = _Field("second", 0, 59)
MINUTE = _Field("minute", 0, 59)
HOUR = _Field("hour", 0, 23)
DAY_OF_MONTH = _Field("day of month", 1, 31)
MONTH = _Field("month", 1, 12, MONTH_NAMES)
DAY_OF_WEEK = _Field("day of week", 0, 7, DAY_NAMES)


def _error(expr: str, spec: _Field, message: str) -> ScheduleError:
    return ScheduleError(
        f"invalid cron expression {expr!r}: {spec.name} field: {message}", field=spec.name
    )


def _number(text: str, spec: _Field, expr: str) -> int:
    upper = text.upper()
    if upper in spec.names:
        return spec.names[upper]
    if not text.isdigit():
        known = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise _error(expr, spec, f"{text!r} is not a number{known}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise _error(expr, spec, f"{value} is out of range {spec.low}-{spec.high}")
    return value


def _parse_values(text: str, spec: _Field, expr: str) -> set[int]:
    """Expand one field made of `*`, `a`, `a-b`, and `/step` items joined by commas."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _error(expr, spec, f"empty item in {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _error(expr, spec, f"step {step_text!r} must be a positive whole number")
            step = int(step_text)
            if step > spec.high - spec.low + (spec is not DAY_OF_WEEK):
                raise _error(
                    expr, spec, f"step {step} is larger than the range {spec.low}-{spec.high}"
                )
        if base == "*":
            low, high = spec.low, (6 if spec is DAY_OF_WEEK else spec.high)
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _number(first, spec, expr), _number(last, spec, expr)
            if spec is DAY_OF_WEEK and high == 0 and low > 0:
                high = 7  # FRI-SUN: Sunday is also 7
            if low > high:
                raise _error(
                    expr,
                    spec,
                    f"range {base} runs backwards; write it as two ranges joined by a comma",
                )
        else:
            low = _number(base, spec, expr)
            high = (6 if spec is DAY_OF_WEEK else spec.high) if slash else low
        values.update(range(low, high + 1, step))
    if spec is DAY_OF_WEEK and 7 in values:
        values.discard(7)
        values.add(0)
    return values


@dataclass(frozen=True, slots=True)
class _DayRule:
    """Which days of a month match: plain day sets plus the L, W and # extensions."""

    days: frozenset[int]  # day of month
    last_day: bool  # L
    last_weekday: bool  # LW
    nearest_weekday: frozenset[int]  # nW
    dom_restricted: bool
    weekdays: frozenset[int]  # 0 = Sunday
    last_of_weekday: frozenset[int]  # nL: the last such weekday of the month
    nth_weekday: frozenset[tuple[int, int]]  # n#k
    dow_restricted: bool
    either: bool  # both fields restricted: a day matches when either field does

    def matching_days(self, year: int, month: int) -> tuple[int, ...]:
        first_weekday, length = calendar.monthrange(year, month)
        first_dow = (first_weekday + 1) % 7  # calendar counts Monday as 0
        dom = self._dom_days(year, month, length)
        out = []
        for day in range(1, length + 1):
            in_dom = day in dom
            dow = (first_dow + day - 1) % 7
            in_dow = (
                dow in self.weekdays
                or (dow in self.last_of_weekday and day + 7 > length)
                or (dow, (day - 1) // 7 + 1) in self.nth_weekday
            )
            if (in_dom or in_dow) if self.either else (in_dom and in_dow):
                out.append(day)
        return tuple(out)

    def _dom_days(self, year: int, month: int, length: int) -> set[int]:
        dom = {d for d in self.days if d <= length}
        if self.last_day:
            dom.add(length)
        if self.last_weekday:
            dom.add(_nearest_weekday(year, month, length, length))
        for day in self.nearest_weekday:
            if day <= length:
                dom.add(_nearest_weekday(year, month, day, length))
        return dom


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """Quartz's `W`: the weekday nearest to `day`, never leaving the month."""
    weekday = date(year, month, day).weekday()
    if weekday == 5:  # Saturday: Friday before, or Monday after when the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before when the last day
        return day + 1 if day < length else day - 2
    return day


def _parse_day_of_month(text: str, expr: str) -> tuple[set[int], bool, bool, set[int]]:
    plain: list[str] = []
    extras: list[str] = []
    for item in text.split(","):
        (extras if item.upper().endswith(("L", "W")) else plain).append(item)
    days = _parse_values(",".join(plain), DAY_OF_MONTH, expr) if plain else set()
    last_day = last_weekday = False
    nearest: set[int] = set()
    for item in (x.upper() for x in extras):
        if item == "L":
            last_day = True
        elif item == "LW":
            last_weekday = True
        elif item.endswith("W") and item[:-1].isdigit():
            nearest.add(_number(item[:-1], DAY_OF_MONTH, expr))
        else:
            raise _error(expr, DAY_OF_MONTH, f"{item!r} is not a day, L, LW or a day followed by W")
    return days, last_day, last_weekday, nearest


def _parse_day_of_week(text: str, expr: str) -> tuple[set[int], set[int], set[tuple[int, int]]]:
    plain: list[str] = []
    extras: list[str] = []
    for item in text.split(","):
        (extras if ("#" in item or item.upper().endswith("L")) else plain).append(item)
    weekdays = _parse_values(",".join(plain), DAY_OF_WEEK, expr) if plain else set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for item in extras:
        if "#" in item:
            day_text, _, k_text = item.partition("#")
            if not k_text.isdigit() or not 1 <= int(k_text) <= 5:
                raise _error(expr, DAY_OF_WEEK, f"in {item!r} the week must be 1-5")
            nth.add((_number(day_text, DAY_OF_WEEK, expr) % 7, int(k_text)))
        elif item[:-1]:
            last.add(_number(item[:-1], DAY_OF_WEEK, expr) % 7)
        else:
            raise _error(expr, DAY_OF_WEEK, "L needs a weekday before it, such as 5L (last Friday)")
    return weekdays, last, nth


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed crontab line: allowed values per field, and whether it is a wildcard job."""

    text: str
    both_days: bool
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    day_rule: _DayRule
    wildcard: bool
    has_seconds: bool
    hashed_from: str = ""  # the expression as written, when it has `H` items (`text` resolves them)
    _days: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def parse(
        cls, text: str, *, both_days: bool = False, entry: str | None = None
    ) -> CronExpression:
        """Parse a crontab line; `both_days` makes the two day fields always both match
        (Celery's crontab meaning) instead of cron's either-when-both-restricted rule; `entry`
        is the name `H` items are hashed from (beatd.schedules.hashed)."""
        expr = " ".join(text.split())
        source = MACROS.get(expr.lower(), expr)
        if source.startswith("@"):
            raise ScheduleError(
                f"invalid cron expression {text!r}: unknown macro; use one of {', '.join(MACROS)}"
            )
        fields = source.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(
                f"invalid cron expression {text!r}: expected 5 fields (minute hour day-of-month "
                f"month day-of-week) or 6 with leading seconds, got {len(fields)}"
            )
        has_seconds = len(fields) == 6
        if not has_seconds:
            fields.insert(0, "0")
        hashed_from, hashed_wildcard = "", False
        if hashed.uses_hash(fields):
            hashed_from, hashed_wildcard = expr, _hashed_wildcard(fields)
            fields = _resolve_hashes(fields, text, entry)
        sec, minute, hour, dom, month, dow = fields
        days, last_day, last_weekday, nearest = _parse_day_of_month(dom, text)
        weekdays, last_of, nth = _parse_day_of_week(dow, text)
        dom_restricted, dow_restricted = not dom.startswith("*"), not dow.startswith("*")
        rule = _DayRule(
            days=frozenset(days),
            last_day=last_day,
            last_weekday=last_weekday,
            nearest_weekday=frozenset(nearest),
            dom_restricted=dom_restricted,
            weekdays=frozenset(weekdays),
            last_of_weekday=frozenset(last_of),
            nth_weekday=frozenset(nth),
            dow_restricted=dow_restricted,
            either=dom_restricted and dow_restricted and not both_days,
        )
        parsed = cls(
            text=" ".join(fields[not has_seconds :]) if hashed_from else expr,
            both_days=both_days,
            seconds=tuple(sorted(_parse_values(sec, SECOND, text))),
            minutes=tuple(sorted(_parse_values(minute, MINUTE, text))),
            hours=tuple(sorted(_parse_values(hour, HOUR, text))),
            months=tuple(sorted(_parse_values(month, MONTH, text))),
            day_rule=rule,
            wildcard=minute.startswith("*") or hour.startswith("*") or hashed_wildcard,
            has_seconds=has_seconds,
            hashed_from=hashed_from,
        )
        if parsed.next_wall(datetime(1999, 12, 31, 23, 59, 59)) is None:
            wanted = _list(sorted(rule.days)) if rule.days else "the days asked for"
            raise ScheduleError(
                f"invalid cron expression {text!r}: it can never fire: "
                f"{_list(parsed.months, _MONTHS)} never has day {wanted}"
            )
        return parsed

    def next_wall(self, after: datetime) -> datetime | None:
        """The first matching naive wall time strictly after `after`, ignoring timezones; None
        if there is none in the next 400 years or before the end of year 9999."""
        if after.replace(tzinfo=None) >= LAST_WALL:
            return None
        start = after.replace(microsecond=0) + _SECOND
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        months, hours, minutes, seconds = self.months, self.hours, self.minutes, self.seconds
        days_of = self._days_of
        while year <= min(start.year + SEARCH_YEARS, MAXYEAR):
            i = bisect_left(months, month)
            if i == len(months):
                year, month, day, hour, minute, second = year + 1, months[0], 1, 0, 0, 0
                continue
            if months[i] != month:
                month, day, hour, minute, second = months[i], 1, 0, 0, 0
            days = days_of(year, month)
            i = bisect_left(days, day)
            if i == len(days):
                year, month = (year, month + 1) if month < 12 else (year + 1, 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if days[i] != day:
                day, hour, minute, second = days[i], 0, 0, 0
            i = bisect_left(hours, hour)
            if i == len(hours):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if hours[i] != hour:
                hour, minute, second = hours[i], 0, 0
            i = bisect_left(minutes, minute)
            if i == len(minutes):
                hour, minute, second = hour + 1, 0, 0
                continue
            if minutes[i] != minute:
                minute, second = minutes[i], 0
            i = bisect_left(seconds, second)
            if i == len(seconds):
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, seconds[i])
        return None

    def _days_of(self, year: int, month: int) -> tuple[int, ...]:
        days = self._days.get((year, month))
        if days is None:
            if len(self._days) > 256:
                self._days.clear()
            days = self._days[(year, month)] = self.day_rule.matching_days(year, month)
        return days


@lru_cache(maxsize=4096)  # asked for every cron entry of a bulk import: the texts repeat
def uses_hash(text: str) -> bool:
    """Whether the expression has `H` items (a day name such as THU or a macro has none)."""
    expr = " ".join(text.split())
    return hashed.uses_hash(MACROS.get(expr.lower(), expr).split())


def _hashed_wildcard(fields: list[str]) -> bool:
    """Whether the minute or hour field is `H/n`, a wildcard for the DST rules like `*/n`."""
    return fields[1].startswith("H/") or fields[2].startswith("H/")


def _resolve_hashes(fields: list[str], text: str, entry: str | None) -> list[str]:
    specs = (SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK)
    resolved = []
    for spec, key, field_text in zip(specs, hashed.KEYS, fields, strict=True):
        if entry is None and hashed.uses_hash([field_text]):
            raise _error(text, spec, "H is hashed from the entry's name, and none was given")
        try:
            resolved.append(hashed.resolve_field(field_text, key, entry or ""))
        except hashed.HashError as exc:
            raise _error(text, spec, str(exc)) from None
    return resolved


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: CronExpression
    timezone: ZoneInfo
    # Entries that share an expression and zone share one schedule (see `parse`) and, at a
    # burst, ask it for the fire after the same slot: the answers are kept for a while.
    _fires: dict[datetime, datetime | None] = field(default_factory=dict, compare=False, repr=False)
    # the canonical text (`spec` below), made once: every entry's state holds it as its identity
    _spec: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        expression = self.expression
        days = " both-days" if expression.both_days else ""
        # With H, the text as written too: `H/n` is a wildcard, its resolved range is not.
        text = expression.text
        if expression.hashed_from:
            text = f"{expression.hashed_from} = {text}"
        object.__setattr__(self, "_spec", f"cron {text}{days} tz {self.timezone.key}")

    @classmethod
    def parse(
        cls,
        text: str,
        timezone: str | ZoneInfo = "UTC",
        *,
        both_days: bool = False,
        entry: str | None = None,
    ) -> CronSchedule:
        """`entry` is the name `H` items are hashed from; without `H` it is not needed."""
        zone = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
        # Expressions without H do not depend on the entry: all of them share one schedule.
        return _parse_schedule(text, zone, both_days, entry if uses_hash(text) else None)

    def next_after(self, t: datetime) -> datetime | None:
        if t.tzinfo is not UTC:  # local times equal across a fold must not share an answer
            return self._next_after(t)
        fires = self._fires
        fire = fires.get(t, _UNKNOWN)
        if fire is _UNKNOWN:
            if len(fires) >= 64:
                fires.clear()
            fire = fires[t] = self._next_after(t)
        return fire  # type: ignore[return-value]

    def _next_after(self, t: datetime) -> datetime | None:
        try:
            return self._search_after(t)
        except OverflowError:  # a fire late on 9999-12-31 whose UTC instant is in year 10000
            return None

    def _search_after(self, t: datetime) -> datetime | None:
        zone = self.timezone
        local = t.astimezone(zone)
        wall = local.replace(tzinfo=None)
        best = None
        w: datetime | None = wall
        while w is not None:
            w = self.expression.next_wall(w)
            if w is None:
                break
            best = self._instant_after(w, t)
            if best is not None:
                break
            gap_end = self._gap_end(w)
            if gap_end is not None:  # nothing in this gap fires: resume after it
                w = gap_end - _SECOND
        if local.fold == 0:
            second_pass = self._second_pass_after(t, local)
            if second_pass is not None and (best is None or second_pass < best):
                best = second_pass
        return best

    def _instant_after(self, wall: datetime, t: datetime) -> datetime | None:
        """The earliest instant after `t` at which this job fires for `wall`, if any."""
        first = wall.replace(tzinfo=self.timezone)
        before = first.utcoffset()
        after = first.replace(fold=1).utcoffset()
        assert before is not None and after is not None
        if before == after:
            instant = (wall - before).replace(tzinfo=UTC)
            return instant if instant > t else None
        if before > after:  # a repeated wall time
            instant = (wall - before).replace(tzinfo=UTC)
            if instant > t:
                return instant
            if self.expression.wildcard or before - after >= CLOCK_CORRECTION:
                instant = (wall - after).replace(tzinfo=UTC)
                return instant if instant > t else None
            return None
        if self.expression.wildcard or after - before >= CLOCK_CORRECTION:
            return None  # a wall time in a gap does not exist
        jump = transition(
            (wall - after).replace(tzinfo=UTC), (wall - before).replace(tzinfo=UTC), self.timezone
        )
        return jump if jump > t else None

    def _gap_end(self, wall: datetime) -> datetime | None:
        """The wall time at which the spring-forward gap containing `wall` ends, if any."""
        first = wall.replace(tzinfo=self.timezone)
        before = first.utcoffset()
        after = first.replace(fold=1).utcoffset()
        assert before is not None and after is not None
        if before >= after:
            return None
        jump = transition(
            (wall - after).replace(tzinfo=UTC), (wall - before).replace(tzinfo=UTC), self.timezone
        )
        return (jump + after).replace(tzinfo=None)

    def _second_pass_after(self, t: datetime, local: datetime) -> datetime | None:
        """When `t` is in the first pass of a repeated hour, the first fire in its second pass."""
        before = local.utcoffset()
        after = local.replace(fold=1).utcoffset()
        assert before is not None and after is not None
        if before <= after:
            return None
        if not (self.expression.wildcard or before - after >= CLOCK_CORRECTION):
            return None
        jump = transition(t, t + (before - after), self.timezone)
        repeat_start = (jump + after).replace(tzinfo=None)
        repeat_end = repeat_start + (before - after)
        wall = self.expression.next_wall(repeat_start - _SECOND)
        if wall is None or wall >= repeat_end:
            return None
        return (wall - after).replace(tzinfo=UTC)

    def describe(self) -> str:
        expression = self.expression
        resolved = f" (H: {expression.text})" if expression.hashed_from else ""
        return describe(expression) + resolved

    @property
    def spec(self) -> str:
        return self._spec


@lru_cache(maxsize=1024)
def _parse_schedule(text: str, zone: ZoneInfo, both_days: bool, entry: str | None) -> CronSchedule:
    return CronSchedule(_parse_expression(text, both_days, entry), zone)


# Apart from the zone: a daily expression in 50 zones is parsed once, not in each (1,440 daily
# expressions in 50 zones are more schedules than the cache above keeps)
@lru_cache(maxsize=4096)
def _parse_expression(text: str, both_days: bool, entry: str | None) -> CronExpression:
    return CronExpression.parse(text, both_days=both_days, entry=entry)


def transition(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The instant in (low, high] where the zone's offset changes from its value at `low`."""
    offset = low.astimezone(zone).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def describe(expr: CronExpression) -> str:
    """A plain-English reading of the expression, good enough for `beatd check` tables."""
    return f"{_describe_time(expr)}, {_describe_days(expr)}"


def _list(values: Sequence[int | str], names: Sequence[str] | None = None) -> str:
    items = [names[v] if names and isinstance(v, int) else str(v) for v in values]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _step_of(values: tuple[int, ...], low: int, high: int) -> int | None:
    if len(values) < 2 or values[0] != low:
        return None
    step = values[1] - values[0]
    if values == tuple(range(low, high + 1, step)):
        return step
    return None


def _describe_time(expr: CronExpression) -> str:
    sec, mins, hours = expr.seconds, expr.minutes, expr.hours
    all_hours = len(hours) == 24
    if len(sec) == 1 and len(mins) == 1 and len(hours) == 1:
        clock = f"{hours[0]:02d}:{mins[0]:02d}" + (f":{sec[0]:02d}" if sec[0] else "")
        return f"at {clock}"
    if len(sec) == 1 and len(hours) * len(mins) <= 6 and not all_hours:
        times = [f"{h:02d}:{m:02d}" for h in hours for m in mins]
        return "at " + _list(times)
    parts = []
    if expr.has_seconds and len(sec) != 1:
        step = _step_of(sec, 0, 59)
        parts.append(f"every {step} seconds" if step else f"at seconds {_list(sec)}")
    if len(mins) == 60:
        parts.append("every minute")
    elif len(mins) == 1 and all_hours:
        parts.append(f"at minute {mins[0]} of every hour")
    else:
        step = _step_of(mins, 0, 59)
        parts.append(f"every {step} minutes" if step else f"at minute {_list(mins)}")
    if not all_hours:
        step = _step_of(hours, 0, 23)
        parts.append(f"every {step} hours" if step else f"during hour {_list(hours)}")
    return ", ".join(parts)


_WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_MONTHS = ["", *calendar.month_name[1:]]


def _describe_days(expr: CronExpression) -> str:
    rule = expr.day_rule
    day_parts = []
    if rule.dom_restricted:
        dom = [*map(str, sorted(rule.days))]
        dom += ["the last day"] * rule.last_day + ["the last weekday"] * rule.last_weekday
        dom += [f"the weekday nearest day {d}" for d in sorted(rule.nearest_weekday)]
        day_parts.append("on day " + _list(dom) + " of the month")
    if rule.dow_restricted:
        dow = [_WEEKDAYS[d] for d in sorted(rule.weekdays)]
        dow += [f"the last {_WEEKDAYS[d]}" for d in sorted(rule.last_of_weekday)]
        dow += [f"the {_ordinal(k)} {_WEEKDAYS[d]}" for d, k in sorted(rule.nth_weekday)]
        day_parts.append("on " + _list(dow))
    text = (" or " if rule.either else " and ").join(day_parts) or "every day"
    if len(expr.months) != 12:
        text += " in " + _list(expr.months, _MONTHS)
    return text


def _ordinal(k: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}[k]
