"""Entries as every way in shows them (issue 18): one JSON object per entry, runtime or file
(what `beatd entries list --json` prints, `GET /v1/entries` returns and `beatd.Client` gives),
pages of them by name, and an entry's next slots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from beatd.backends import Backend
from beatd.config.fields import WINDOW_FIELDS
from beatd.config.model import AmqpTarget, Config, Entry
from beatd.operations.upcoming import next_marked, run_object
from beatd.runtime_entries import API_SOURCE, RuntimeEntry, UnknownEntry, amqp_json
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule
from beatd.schedules.window import WindowedSchedule
from beatd.timetext import stamp

MAX_PAGE = 10_000
MAX_NEXT_RUNS = 1000
SOURCES = (API_SOURCE, "file")  # what `list --source` chooses between


# The write times of a batch's entries are a few instants (one a step), shown 100,000 times
_stamp = lru_cache(maxsize=256)(stamp)


def entry_object(entry: RuntimeEntry) -> dict[str, Any]:
    """A runtime entry's JSON form: its name, source, version, every field of its definition,
    and when and by whom it was created and last changed."""
    return {
        "name": entry.name,
        "source": entry.source,
        "version": entry.version,
        "definition": dict(entry.definition),
        "created_at": _stamp(entry.created_at),
        "created_by": entry.created_by,
        "updated_at": _stamp(entry.updated_at),
        "updated_by": entry.updated_by,
    }


# json.dumps(..., ensure_ascii=False), as the API answers, without an encoder per value
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def entries_text(entries: Sequence[RuntimeEntry]) -> str:
    """`{"entries": [entry_object(e), ...]}` as the API's JSON text (json.dumps(...,
    ensure_ascii=False) of it), each definition the text its put made (`RuntimeEntry.text`)
    rather than encoded again: 100,000 definitions encoded twice were a twentieth of the CPU
    of an import over HTTP (docs/design.md, "Bulk imports over HTTP")."""
    return '{"entries": [' + ", ".join([entry_text(e) for e in entries]) + "]}"


def entry_text(entry: RuntimeEntry) -> str:
    """`entry_object(entry)` as JSON text, in its keys' order."""
    if entry.text is None:
        return _ENCODE(entry_object(entry))
    name, source, by, changed_by = (
        _ENCODE(entry.name),
        _ENCODE(entry.source),
        _ENCODE(entry.created_by),
        _ENCODE(entry.updated_by),
    )
    created, updated = _ENCODE(_stamp(entry.created_at)), _ENCODE(_stamp(entry.updated_at))
    return (
        f'{{"name": {name}, "source": {source}, "version": {int(entry.version)}, '
        f'"definition": {entry.text}, "created_at": {created}, "created_by": {by}, '
        f'"updated_at": {updated}, "updated_by": {changed_by}}}'
    )


def file_entry_object(entry: Entry) -> dict[str, Any]:
    """A file entry's JSON form, in a runtime entry's shape: its source is its file, and it
    has no version nor write times (its file's history has them)."""
    path = entry.source.rsplit(":", 1)[0]
    return {
        "name": entry.name,
        "source": path,
        "version": None,
        "definition": file_definition(entry),
        "created_at": None,
        "created_by": None,
        "updated_at": None,
        "updated_by": None,
    }


def file_definition(entry: Entry) -> dict[str, Any]:
    """Every field of a file entry, as a runtime entry stores them."""
    definition: dict[str, Any] = {"task": entry.task, **schedule_fields(entry.schedule)}
    definition |= {
        "args": list(entry.args),
        "kwargs": dict(entry.kwargs),
        "description": entry.description,
        "timezone": entry.timezone,
        "queue": entry.queue,
        "protocol": entry.protocol or "beatd",
        "amqp": _amqp(entry.amqp),
        "priority": entry.priority,
        "headers": dict(entry.headers),
        "enabled": entry.enabled,
        "jitter": _seconds(entry.jitter.total_seconds()),
        "expires": _optional_seconds(entry.expires),
        "missed": entry.missed.value,
        "max_catch_up": entry.max_catch_up,
        "misfire_grace": _seconds(entry.misfire_grace.total_seconds()),
        "deadline": _optional_seconds(entry.deadline),
        "alert_after_failures": entry.alert_after_failures,
        "overlap": entry.overlap.value,
        "overlap_timeout": _optional_seconds(entry.overlap_timeout),
        "pause_after_failures": entry.pause_after_failures,
    }
    return definition


def schedule_fields(schedule: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if isinstance(schedule, WindowedSchedule):
        for bound in WINDOW_FIELDS:
            moment = getattr(schedule, bound)
            if moment is not None:
                fields[bound] = moment.isoformat()
        schedule = schedule.inner
    if isinstance(schedule, IntervalSchedule):
        fields["every"] = _seconds(schedule.every.total_seconds())
        fields["anchor"] = schedule.anchor.isoformat()
    elif isinstance(schedule, CronSchedule):
        fields["cron"] = schedule.expression.text
    elif isinstance(schedule, OnceSchedule):
        fields["at"] = schedule.at.isoformat()
    return fields


def _amqp(target: AmqpTarget | None) -> dict[str, str] | None:
    return None if target is None else amqp_json(target)


def _seconds(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _optional_seconds(value: Any) -> int | float | None:
    return None if value is None else _seconds(value.total_seconds())


class EntryPage(NamedTuple):
    """One page of `list_entries`: entry objects by name; `next_after` is the name to pass for
    the next page (None: this is the last)."""

    entries: list[dict[str, Any]]
    next_after: str | None


def list_entries(
    store: Backend,
    config: Config | None,
    *,
    after: str = "",
    limit: int = 1000,
    source: str | None = None,
) -> EntryPage:
    """Runtime entries and the entries of `config` (the caller's schedule files), merged by
    name: at most `limit` whose names sort after `after`. `source`: only `api` or `file`."""
    found: list[dict[str, Any]] = []
    if source in (None, API_SOURCE):
        found += [entry_object(e) for e in store.list_entries(after, limit)]
    if source in (None, "file") and config is not None:
        names = sorted(n for n in config.entries if n > after)[:limit]
        found += [file_entry_object(config.entries[n]) for n in names]
    found.sort(key=lambda e: str(e["name"]))
    page = found[:limit]
    return EntryPage(page, page[-1]["name"] if page and len(page) == limit else None)


def all_runtime_entries(store: Backend, batch: int = 1000) -> list[RuntimeEntry]:
    entries: list[RuntimeEntry] = []
    after = ""
    while True:
        page = store.list_entries(after, batch)
        entries += page
        if len(page) < batch:
            return entries
        after = page[-1].name


def get_entry(store: Backend, config: Config | None, name: str) -> dict[str, Any]:
    """The entry object of `name`, a runtime entry or one of `config`'s; UnknownEntry."""
    stored = store.get_entry(name)
    if stored is not None:
        return entry_object(stored)
    if config is not None and name in config.entries:
        return file_entry_object(config.entries[name])
    raise UnknownEntry(name)


def next_runs(
    store: Backend, config: Config | None, name: str, count: int, now: datetime
) -> list[dict[str, Any]]:
    """The next `count` runs of entry `name` after `now` (fewer when its schedule ends), each
    its slot as a UTC stamp and its DST mark as `beatd next --json` shows it: a runtime
    entry's, else one of `config`'s; UnknownEntry."""
    stored = store.get_entry(name)
    if stored is not None:
        entry = stored.entry()
    elif config is not None and name in config.entries:
        entry = config.entries[name]
    else:
        raise UnknownEntry(name)
    return [run_object(t, mark) for t, mark in next_marked(entry.schedule, now, count)]
