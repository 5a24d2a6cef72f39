"""Turning one raw entry mapping (from YAML or a Python file) into a validated `Entry`.

Every problem found is collected, located and reported together; nothing is retyped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from beatd.config.convert import (
    ENTRY_NAME,
    ENTRY_NAME_RULE,
    suggest,
    to_datetime,
    to_every,
    to_string,
)
from beatd.config.fields import (
    DEFAULTABLE,
    DEFAULTABLE_FIELDS,
    ENTRY_FIELDS,
    OWN,
    SCHEDULE_FIELDS,
    WINDOW_FIELDS,
)
from beatd.config.model import Entry, nominal_period, period_floor
from beatd.durations import format_duration
from beatd.errors import Problem, ScheduleError
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule
from beatd.schedules.crontab import CronSpec
from beatd.schedules.interval import EPOCH
from beatd.schedules.window import WindowedSchedule

DEFAULT_GRACE = timedelta(seconds=60)
DEFAULT_PROTOCOL = "beatd"
_ZERO = timedelta(0)

# Where a problem is: given a field (None for the entry itself) and whether the key rather than
# its value is meant, the (line, column) to report.
Locate = Callable[[str | None, bool], tuple[int, int]]


class EntryReader:
    """Reads the fields of one raw mapping, recording each problem with its location."""

    def __init__(self, path: str, entry: str | None, raw: Mapping[str, Any], locate: Locate):
        self.path, self.entry, self.raw, self.locate = path, entry, raw, locate
        self.problems: list[Problem] = []

    def problem(self, field: str | None, message: str, *, at_key: bool = False) -> None:
        line, column = self.locate(field, at_key)
        self.problems.append(Problem(self.path, line, column, message, self.entry, field))

    def check_keys(self, allowed: tuple[str, ...], what: str = "field") -> None:
        for key in self.raw:
            if key not in allowed:
                self.problem(key, f"unknown {what}" + suggest(key, allowed), at_key=True)

    def read(self, field: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        if field not in self.raw:
            return default
        try:
            return convert(self.raw[field])
        except ValueError as exc:
            self.problem(field, str(exc))
            return default

    def read_defaults(self) -> dict[str, Any]:
        """The converted values of a `defaults:` section."""
        self.check_keys(DEFAULTABLE_FIELDS)
        values = {}
        for field, convert in DEFAULTABLE:
            value = self.read(field, convert, _MISSING)
            if value is not _MISSING:
                values[field] = value
        return values


_MISSING = object()


def build_entry(
    reader: EntryReader,
    defaults: Mapping[str, Any],
    default_timezone: str,
    unset_protocol: list[str],
) -> Entry | None:
    """Validate one entry; on any problem record it on `reader` and return None.

    An entry that sets no protocol, nor do `defaults`, gets beatd's for now and its name is added
    to `unset_protocol` (see `SourceFile.unset_protocol`).
    """
    name, raw = reader.entry, reader.raw
    assert name is not None
    _check_name_and_keys(reader, name)
    values = dict(defaults)  # converted already; the entry's own fields win
    for key, convert in DEFAULTABLE:
        if key in raw:
            value = reader.read(key, convert, _MISSING)
            if value is not _MISSING:
                values[key] = value
    zone = values.pop("timezone", default_timezone)
    protocol_is_set = "protocol" in values
    schedule = _read_window(reader, zone, _read_schedule(reader, zone))
    own = {key: reader.read(key, convert, default) for key, convert, default in OWN}
    if reader.problems or schedule is None or not _derive_timing(reader, schedule, values):
        return None
    if not protocol_is_set:
        values["protocol"] = DEFAULT_PROTOCOL
        unset_protocol.append(name)
    line, _ = reader.locate(None, True)
    return Entry(
        name=name, schedule=schedule, timezone=zone, source=f"{reader.path}:{line}", **own, **values
    )


def _check_name_and_keys(reader: EntryReader, name: str) -> None:
    if not ENTRY_NAME.match(name):
        reader.problem(None, ENTRY_NAME_RULE, at_key=True)
    reader.check_keys(ENTRY_FIELDS)
    if "task" not in reader.raw:
        reader.problem(None, "missing required field 'task'", at_key=True)


def _derive_timing(reader: EntryReader, schedule: Schedule, values: dict[str, Any]) -> bool:
    """Check the jitter against the schedule's period and derive the default grace from it;
    False (the problem recorded) if the jitter is too long."""
    jitter = values.get("jitter", _ZERO)
    floor = period_floor(schedule)
    # the period costs a cron expression eight searches (most of a bulk import's time): not
    # needed when the floor answers both questions
    if jitter < floor and ("misfire_grace" in values or floor >= DEFAULT_GRACE):
        values.setdefault("misfire_grace", DEFAULT_GRACE)
        return True
    period = nominal_period(schedule)
    if period is not None and jitter >= period:
        field = "jitter" if "jitter" in reader.raw else None
        reader.problem(
            field,
            f"jitter {format_duration(jitter)} must be shorter than the schedule's period "
            f"{format_duration(period)}",
        )
        return False
    if "misfire_grace" not in values:
        values["misfire_grace"] = min(period or DEFAULT_GRACE, DEFAULT_GRACE)
    return True


def _read_window(reader: EntryReader, zone: str, schedule: Schedule | None) -> Schedule | None:
    """`schedule` bounded by the entry's `start:` and `end:`, if it gives them."""
    given = [f for f in WINDOW_FIELDS if f in reader.raw]
    if not given or schedule is None:
        return schedule
    if isinstance(schedule, OnceSchedule):
        reader.problem(given[0], f"{given[0]} only applies to every: and cron:", at_key=True)
        return None
    assert isinstance(schedule, CronSchedule | IntervalSchedule)
    start = reader.read("start", lambda v: to_datetime(v, zone))
    end = reader.read("end", lambda v: to_datetime(v, zone))
    if reader.problems:
        return None
    try:
        return WindowedSchedule(schedule, start, end)
    except ScheduleError as exc:
        reader.problem("end", str(exc))
        return None


def _read_schedule(reader: EntryReader, zone: str) -> Schedule | None:
    raw = reader.raw
    given = [f for f in SCHEDULE_FIELDS if f in raw]
    if not given:
        reader.problem(None, "no schedule: give exactly one of every, cron or at", at_key=True)
        return None
    if len(given) > 1:
        reader.problem(
            given[1],
            f"over-determined schedule: specify only one of every, cron or at "
            f"(got {' and '.join(given)})",
            at_key=True,
        )
        return None
    if "anchor" in raw and given[0] != "every":
        reader.problem("anchor", "anchor only applies to every:", at_key=True)
        return None
    field = given[0]
    value = raw[field]
    try:
        if field == "every":
            anchor = reader.read("anchor", lambda v: to_datetime(v, zone), EPOCH)
            return IntervalSchedule(to_every(value), anchor)
        if field == "at":
            return OnceSchedule(to_datetime(value, zone))
        spec = value if isinstance(value, CronSpec) else CronSpec(to_string(value))
        return CronSchedule.parse(spec.text, zone, both_days=spec.both_days, entry=reader.entry)
    except (ValueError, ScheduleError) as exc:
        reader.problem(field, str(exc))
        return None
