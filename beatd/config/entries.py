"""Turning one raw entry mapping (from YAML or a Python file) into a validated `Entry`.

Every problem found is collected, located and reported together; nothing is retyped silently.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import types
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from beatd.config.model import NO_ITEMS, Entry, MissedPolicy, nominal_period
from beatd.durations import format_duration, read_duration
from beatd.errors import Problem, ScheduleError
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule
from beatd.schedules.crontab import CronSpec
from beatd.schedules.interval import EPOCH

SCHEDULE_FIELDS = ("every", "cron", "at")
DEFAULTABLE_FIELDS = (
    "timezone",
    "queue",
    "protocol",
    "priority",
    "headers",
    "enabled",
    "jitter",
    "expires",
    "missed",
    "max_catch_up",
    "misfire_grace",
)
ENTRY_FIELDS = (
    "task",
    "args",
    "kwargs",
    "description",
    *SCHEDULE_FIELDS,
    "anchor",
    *DEFAULTABLE_FIELDS,
)
DEFAULT_GRACE = timedelta(seconds=60)
DEFAULT_PROTOCOL = "beatd"
ENTRY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
PROTOCOLS = ("beatd", "celery")
QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")

# Where a problem is: given a field (None for the entry itself) and whether the key rather than
# its value is meant, the (line, column) to report.
Locate = Callable[[str | None, bool], tuple[int, int]]


def suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


_KINDS: tuple[tuple[type | types.UnionType, str], ...] = (
    (bool, "boolean"),
    (int | float, "number"),
    (str, "string"),
)


def describe_value(value: object) -> str:
    """How a wrong value is named in a message: its kind, and the value when it is short."""
    if value is None:
        return "null"
    for kind, word in _KINDS:
        if isinstance(value, kind):
            return f"{word} {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# --- converters: value -> converted value, or ValueError with the user's message ---------------
# Names that many entries repeat (task, queue, timezone) are interned: one string each, not one
# per entry.


def to_string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe_value(value)}")
    return value


def to_task_name(value: object) -> str:
    text = to_string(value)
    if not TASK_NAME.match(text):
        raise ValueError(f"{text!r} is not a dotted task name such as 'reports.nightly'")
    return sys.intern(text)


def to_queue_name(value: object) -> str:
    text = to_string(value)
    if not QUEUE_NAME.match(text):
        raise ValueError(f"{text!r} is not a queue name (letters, digits and _ . : -)")
    return sys.intern(text)


def to_protocol(value: object) -> str:
    if value not in PROTOCOLS:
        hint = suggest(value, PROTOCOLS) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}, got {value!r}{hint}")
    assert isinstance(value, str)
    return value


def to_json(value: object) -> Any:
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()  # as messages carry it
    except UnicodeEncodeError as exc:
        raise ValueError(f"must be valid Unicode text, got {exc.object[exc.start]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable: {exc}") from None
    return value


_JSON_AS_IS = frozenset({str, int, bool, type(None)})  # no NaN or infinity, nothing to nest


def to_args(value: object) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, got {describe_value(value)}")
    if all(type(item) in _JSON_AS_IS for item in value) and not any(
        type(item) is str and not item.isascii() for item in value
    ):  # the usual args, checked cheaply
        return tuple(value)
    return tuple(to_json(list(value)))


def to_mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {describe_value(value)}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ValueError(f"keys must be strings, got {bad[0]!r}")
    return dict(to_json(dict(value)))


def to_priority(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ValueError(f"expected a whole number 0-9 (9 highest), got {describe_value(value)}")
    return value


def to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe_value(value)}")
    return value


_ZERO = timedelta(0)


to_duration = read_duration


def to_optional_duration(value: object) -> timedelta | None:
    return None if value is None else read_duration(value)


def to_missed(value: object) -> MissedPolicy:
    choices = [p.value for p in MissedPolicy]
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(choices)}, got {describe_value(value)}{hint}")
    return MissedPolicy(value)


def to_max_catch_up(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {describe_value(value)}")
    return value


@cache
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def to_timezone(value: object) -> str:
    name = to_string(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}{suggest(name, _zone_names())}") from None
    return sys.intern(name)


def to_datetime(value: object, zone: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO date and time such as 2026-12-24T18:00:00"
            ) from None
    else:
        raise ValueError(f"expected an ISO date and time, got {describe_value(value)}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment


def to_every(value: object) -> timedelta:
    delta = to_duration(value)
    if delta.total_seconds() != int(delta.total_seconds()):
        raise ValueError(f"must be a whole number of seconds, got {value!r}")
    return delta


DEFAULT_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "timezone": to_timezone,
    "queue": to_queue_name,
    "protocol": to_protocol,
    "priority": to_priority,
    "headers": to_mapping,
    "enabled": to_bool,
    "jitter": lambda v: to_duration(v, zero_ok=True),
    "expires": to_optional_duration,
    "missed": to_missed,
    "max_catch_up": to_max_catch_up,
    "misfire_grace": to_duration,
}


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
        for field, convert in DEFAULT_CONVERTERS.items():
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
    if not ENTRY_NAME.match(name):
        reader.problem(
            None,
            "entry names use letters, digits and _ . : / - (a run's id is NAME@SLOT)",
            at_key=True,
        )
    reader.check_keys(ENTRY_FIELDS)
    if "task" not in raw:
        reader.problem(None, "missing required field 'task'", at_key=True)
    values = dict(defaults)  # converted already; the entry's own fields win
    for key, convert in DEFAULT_CONVERTERS.items():
        if key in raw:
            value = reader.read(key, convert, _MISSING)
            if value is not _MISSING:
                values[key] = value
    zone = values.pop("timezone", default_timezone)
    protocol_is_set = "protocol" in values
    schedule = _read_schedule(reader, zone)
    entry_values: dict[str, Any] = {
        "task": reader.read("task", to_task_name),
        "args": reader.read("args", to_args, ()),
        "kwargs": reader.read("kwargs", to_mapping, NO_ITEMS),
        "description": reader.read("description", to_string, ""),
    }
    if reader.problems or schedule is None:
        return None
    period = nominal_period(schedule)
    jitter = values.get("jitter", _ZERO)
    if period is not None and jitter >= period:
        field = "jitter" if "jitter" in raw else None
        reader.problem(
            field,
            f"jitter {format_duration(jitter)} must be shorter than the schedule's period "
            f"{format_duration(period)}",
        )
        return None
    if "misfire_grace" not in values:
        values["misfire_grace"] = min(period or DEFAULT_GRACE, DEFAULT_GRACE)
    if not protocol_is_set:
        values["protocol"] = DEFAULT_PROTOCOL
        unset_protocol.append(name)
    line, _ = reader.locate(None, True)
    return Entry(
        name=name,
        schedule=schedule,
        timezone=zone,
        source=f"{reader.path}:{line}",
        **entry_values,
        **values,
    )


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
        return CronSchedule.parse(spec.text, zone, both_days=spec.both_days)
    except (ValueError, ScheduleError) as exc:
        reader.problem(field, str(exc))
        return None
