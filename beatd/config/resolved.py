"""Entries built from resolved definitions without validating them again (issue 18's scale).

A runtime entry is validated once, when it is written (`beatd.runtime_entries.resolve_entry`),
and stored in its resolved form: every field given, in the JSON values that function writes.
Every node builds every stored entry at start (a million of them, issue 18), and running the
file validator again was most of a leader's start-up. `EntryBuilder.build` trusts a resolved
definition: it converts each value to what `Entry` holds and nothing more.

The resolved form is recognised by its fields (format 1: every field `resolve_entry` fills is
present, none unknown). A definition without that form — written by an older beatd, or by hand
through a migration — is not trusted: `build` returns None and the caller validates it.
That both ways build equal entries is tested over the bench's mix and generated definitions
(tests/config/test_resolved.py).

The builder also shares values between entries: equal schedules (expression, zone, window) are
one object, so are equal durations, names and empty mappings.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from beatd.config.convert import to_amqp
from beatd.config.fields import ENTRY_FIELDS, FIELDS, SCHEDULE_FIELDS, WINDOW_FIELDS
from beatd.config.model import NO_ITEMS, Entry, MissedPolicy
from beatd.controls import Overlap
from beatd.durations import parse_duration
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule
from beatd.schedules.cron import uses_hash
from beatd.schedules.window import WindowedSchedule

# The fields every resolved definition of format 1 holds (the schedule is one of three; a
# window's bounds and a destination only when given).
RESOLVED_FIELDS = frozenset(
    f.name for f in FIELDS if f.name not in (*SCHEDULE_FIELDS, *WINDOW_FIELDS, "amqp", "anchor")
)
_KNOWN = frozenset(ENTRY_FIELDS)
_MISSED = {p.value: p for p in MissedPolicy}
_OVERLAP = {o.value: o for o in Overlap}
_SOURCE = "api"  # beatd.runtime_entries.API_SOURCE (which imports this module)


class EntryBuilder:
    """Builds entries from resolved definitions, sharing equal schedules and values between
    them. One per reader of many entries (a node's `RuntimeView`); it holds every distinct
    schedule it has built, at most one per entry."""

    def __init__(self) -> None:
        self._schedules: dict[tuple[Any, ...], Schedule] = {}
        self._durations: dict[int | float | str, timedelta] = {}
        self._zones: dict[str, ZoneInfo] = {}
        self._hashed: dict[str, bool] = {}  # whether a cron text has `H` (spread by the name)

    def build(self, name: str, definition: Mapping[str, Any]) -> Entry | None:
        """The entry `definition` schedules, or None when it is not in the resolved form (the
        caller validates it instead). A resolved definition was validated when written: its
        values are not checked again."""
        keys = definition.keys()
        if not keys >= RESOLVED_FIELDS or not keys <= _KNOWN:
            return None
        try:
            return self._entry(name, definition)
        except (TypeError, ValueError, KeyError, AttributeError):
            return None  # not the form this version writes after all: validated instead

    def _entry(self, name: str, d: Mapping[str, Any]) -> Entry:
        zone = sys.intern(d["timezone"])
        kwargs, headers = d["kwargs"], d["headers"]
        amqp = d.get("amqp")
        return Entry(
            name,
            sys.intern(d["task"]),
            self._schedule(name, d, zone),
            zone,
            tuple(d["args"]),
            dict(kwargs) if kwargs else NO_ITEMS,
            sys.intern(d["queue"]),
            _name(d["protocol"]),
            d["priority"],
            dict(headers) if headers else NO_ITEMS,
            d["description"],
            _flag(d["enabled"]),
            self._duration(d["jitter"]),
            self._optional(d["expires"]),
            _MISSED[d["missed"]],
            _whole(d["max_catch_up"]),
            self._duration(d["misfire_grace"]),
            self._optional(d["deadline"]),
            _optional_whole(d["alert_after_failures"]),
            _OVERLAP[d["overlap"]],
            self._optional(d["overlap_timeout"]),
            _optional_whole(d["pause_after_failures"]),
            None if amqp is None else to_amqp(amqp),
            _SOURCE,
        )

    def _schedule(self, name: str, d: Mapping[str, Any], zone: str) -> Schedule:
        given = [f for f in SCHEDULE_FIELDS if f in d]
        if len(given) != 1 or ("anchor" in d and given[0] != "every"):
            raise KeyError("schedule")
        kind = given[0]
        value, anchor = d[kind], d.get("anchor")
        start, end = d.get("start"), d.get("end")
        if type(value) is not str and (kind != "every" or isinstance(value, bool)):
            raise TypeError(kind)
        hashed = kind == "cron" and self._uses_hash(value)
        key = (kind, _name(value), zone, _name(anchor), start, end, name if hashed else None)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = self._new_schedule(name, kind, value, d, zone)
        return schedule

    def _new_schedule(
        self, name: str, kind: str, value: Any, d: Mapping[str, Any], zone: str
    ) -> Schedule:
        inner: CronSchedule | IntervalSchedule | OnceSchedule
        if kind == "cron":
            inner = CronSchedule.parse(value, self._zone(zone), entry=name)
        elif kind == "at":
            inner = OnceSchedule(self._time(value, zone))
        else:
            anchor = d.get("anchor")
            every = self._duration(value)
            inner = (
                IntervalSchedule(every)
                if anchor is None
                else IntervalSchedule(every, self._time(anchor, zone))
            )
        start, end = d.get("start"), d.get("end")
        if start is None and end is None:
            return inner
        return WindowedSchedule(
            inner,
            None if start is None else self._time(start, zone),
            None if end is None else self._time(end, zone),
        )

    def _uses_hash(self, text: str) -> bool:
        found = self._hashed.get(text)
        if found is None:
            found = self._hashed[text] = uses_hash(text)
        return found

    def _time(self, text: str, zone: str) -> datetime:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self._zone(zone))

    def _zone(self, zone: str) -> ZoneInfo:
        found = self._zones.get(zone)
        if found is None:
            found = self._zones[zone] = ZoneInfo(zone)
        return found

    def _duration(self, value: int | float | str) -> timedelta:
        """A duration as stored: seconds, or the text given (`"90s"`), as `parse_duration`
        reads it; equal ones are one object."""
        if type(value) not in (int, float, str):
            raise TypeError("duration")
        delta = self._durations.get(value)
        if delta is None:
            delta = self._durations[value] = parse_duration(value)
        return delta

    def _optional(self, value: int | float | str | None) -> timedelta | None:
        return None if value is None else self._duration(value)


def _name(value: Any) -> Any:
    """A string many entries repeat, as one object (`sys.intern`); any other value as is."""
    return sys.intern(value) if type(value) is str else value


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError("flag")
    return value


def _whole(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("whole number")
    return value


def _optional_whole(value: Any) -> int | None:
    return None if value is None else _whole(value)
