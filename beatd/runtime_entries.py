"""Runtime entries' values (issue 18): entries written at runtime (the API, the CLI, a client)
rather than in schedule files, stored by the backend's `RuntimeEntries` role
(beatd.backends.base) and followed by every node through its change feed.

A runtime entry has exactly a file entry's fields and is validated by the same code
(`beatd.config.entries.build_entry`), so its problems read as `beatd check` words them. It is
stored with every field resolved at write time (`resolve_entry`): the timezone (UTC unless
given), the protocol (its queue's at that time), every default, since API entries have no
`defaults:` and nodes' flags may differ. Reading it back gives the same `Entry` on every node.

Pure: no backend, no clock (the caller passes `now`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from beatd.config.entries import EntryReader, build_entry
from beatd.config.fields import FIELDS, REQUIRED, SCHEDULE_FIELDS, WINDOW_FIELDS
from beatd.config.model import AmqpTarget, Entry, QueueSettings
from beatd.controls import AuditRecord
from beatd.errors import BackendError, BeatdError, ConfigError
from beatd.schedules import OnceSchedule
from beatd.schedules.interval import EPOCH

API_SOURCE = "api"  # the source of every runtime entry (a file entry's is its path)
# How many change records a backend keeps (`RuntimeEntries.entry_changes`): a reader further
# behind than this reloads every entry. At 100 changes a second, about a quarter of an hour.
FEED_RETENTION = 100_000


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem with a runtime entry's definition, in the words `beatd check` uses for the
    same field in a file; `pointer` locates it in an API request's body (RFC 6901)."""

    entry: str
    field: str | None
    message: str

    @property
    def pointer(self) -> str:
        return "" if self.field is None else f"/{self.field}"

    def __str__(self) -> str:
        where = f"entry {self.entry}:" + ("" if self.field is None else f" field {self.field}:")
        return f"{where} {self.message}"


class InvalidEntry(ConfigError):
    """A runtime entry's definition is refused: every problem, as `beatd check` words them."""

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        self.fields = list(problems)
        self.problems = []  # no file location: `fields` locates them
        BeatdError.__init__(self, "\n".join(str(p) for p in self.fields))


class NameTaken(BackendError):
    """A runtime entry cannot take a name a file entry has (the leader's registered file set)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(
            f"entry {name}: the name is taken by a file entry in {path}; names are unique "
            "across schedule files and runtime entries: choose another name"
        )
        self.name, self.path = name, path


class FileEntryReadOnly(BackendError):
    """A file entry's definition is changed in its file, not at runtime."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(
            f"entry {name} is defined in {path} and cannot be changed or removed at runtime: "
            f"edit {path} and reload (pause, resume, trigger and backfill work on it)"
        )
        self.name, self.path = name, path


class VersionMismatch(BackendError):
    """A conditional write found another version (0: no such entry) than the one expected."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        if expected == 0:
            message = f"entry {name} exists already (version {actual}); nothing was written"
        elif actual == 0:
            message = (
                f"entry {name} does not exist (expected version {expected}); nothing was written"
            )
        else:
            message = (
                f"entry {name} is at version {actual}, not the expected {expected}: it changed "
                "since it was read; nothing was written: read it again and retry"
            )
        super().__init__(message)
        self.name, self.expected, self.actual = name, expected, actual


class PartlyWritten(BackendError):
    """A batch written in steps (Redis, SQLite: `put_entries` of more than one step's worth) was
    refused at a later step, after every entry had been checked: a name was taken, or an entry
    changed, between the check and its step. The earlier steps' entries stay written."""

    def __init__(self, cause: BackendError, written: Sequence[str], total: int) -> None:
        rest = total - len(written)
        where = f" ({written[0]} to {written[-1]})" if written else ""
        super().__init__(
            f"{cause}; {len(written)} of the batch's {total} entries were written before it"
            f"{where}, the other {rest} were not: add those again"
        )
        self.cause, self.written, self.total = cause, list(written), total


class UnknownEntry(BackendError):
    """No runtime entry has the name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no runtime entry {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class ResolvedEntry:
    """A definition `resolve_entry` validated and resolved: what `RuntimeEntries.put_entry`
    stores (JSON values only)."""

    name: str
    definition: Mapping[str, Any]
    # the definition's JSON text (`definition_text`), made once for the backend's write and
    # the answer's (over HTTP, 100,000 definitions encoded twice were a twentieth of an
    # import's CPU); None: not made yet
    text: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """A stored runtime entry; times are the backend's clock, aware UTC."""

    name: str
    definition: Mapping[str, Any]  # every field resolved, JSON values
    # when created, the seq of its change record (so a name removed and added again never
    # repeats a version: a write expecting the old one cannot match the new entry); one more
    # at every change
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    request_id: str | None = None  # the last write's, so a retry of it is answered, not repeated
    source: str = API_SOURCE
    # the definition's JSON text when the put that made it had it (ResolvedEntry.text)
    text: str | None = field(default=None, compare=False, repr=False)

    def entry(self) -> Entry:
        """The entry it schedules (built by the same code as a file's)."""
        return replace(_built(self.name, self.definition), source=API_SOURCE)

    def audit_json(self) -> dict[str, Any]:
        """An audit record's `before` or `after`."""
        return {"version": self.version, "definition": dict(self.definition)}


class EntryChange(NamedTuple):
    """One change-feed record: entry `name` was written at `version`, or removed (None)."""

    seq: int  # increases by one with every put and remove of the backend
    name: str
    version: int | None

    @property
    def removed(self) -> bool:
        return self.version is None


class ChangePage(NamedTuple):
    """What `RuntimeEntries.entry_changes` returns. `reload`: the cursor was older than the
    feed keeps (or newer than its head: the storage was replaced): load every entry again with
    `list_entries`, then follow the feed from `cursor`."""

    changes: tuple[EntryChange, ...]
    cursor: int  # the seq of the last change returned (the head, with `reload`)
    reload: bool = False


def resolve_entry(
    name: str,
    raw: Mapping[str, Any],
    *,
    now: datetime,
    queues: Mapping[str, QueueSettings] | None = None,
    default_timezone: str = "UTC",
) -> ResolvedEntry:
    """Validate a runtime entry's fields as a file's entry is validated (the same messages),
    refuse an `at:` at or before `now` (it would never run), and resolve every field: a field not
    given takes its default now (timezone `default_timezone`, protocol the queue's in `queues`,
    else beatd's). InvalidEntry lists every problem."""
    entry = _check(name, raw, default_timezone)
    if isinstance(entry.schedule, OnceSchedule) and entry.schedule.next_after(now) is None:
        at = entry.schedule.at.isoformat()
        raise InvalidEntry(
            [FieldProblem(name, "at", f"{at} is not after now: the entry would never run")]
        )
    protocol = entry.protocol if "protocol" in raw else _queue_protocol(entry.queue, queues)
    definition = {key: _json(value) for key, value in raw.items()}
    if "amqp" not in raw:  # a Celery entry goes where its queue says, as in a file
        target = _queue_amqp(entry.queue, protocol, queues)
        if target is not None:
            definition["amqp"] = target
    _fill_defaults(definition, entry, protocol)
    # that it builds back the entry checked is a test's (tests/test_runtime_entries.py, each
    # field of the table): building it again here would double the cost of a bulk import
    return ResolvedEntry(name, definition, definition_text(definition))


# json.dumps(..., ensure_ascii=False) without making an encoder per entry
_DEFINITION_JSON = json.JSONEncoder(ensure_ascii=False)


def definition_text(definition: Mapping[str, Any]) -> str:
    """A definition's JSON text, as every backend stores it and the API answers it."""
    return _DEFINITION_JSON.encode(definition if type(definition) is dict else dict(definition))


def entry_audit(
    audit_id: str,
    at: datetime,
    by: str,
    before: RuntimeEntry | None,
    after: RuntimeEntry | None,
    request_id: str | None,
) -> AuditRecord:
    """The audit record of a put (`entry.add` or `entry.set`) or a remove (`entry.remove`)."""
    action = "entry.remove" if after is None else "entry.add" if before is None else "entry.set"
    changed = after if after is not None else before
    assert changed is not None
    return AuditRecord(
        audit_id,
        at,
        action,
        changed.name,
        by,
        {"request_id": request_id, "source": API_SOURCE},
        None if before is None else before.audit_json(),
        None if after is None else after.audit_json(),
    )


def check_put(
    name: str, current: RuntimeEntry | None, file_path: str | None, expected: int | None
) -> None:
    """The refusals of a put (`RuntimeEntries.put_entry`): a file entry's name, a version
    other than `expected` (0: create only)."""
    if file_path is not None:
        if expected is None or expected == 0:
            raise NameTaken(name, file_path)
        raise FileEntryReadOnly(name, file_path)
    actual = 0 if current is None else current.version
    if expected is not None and expected != actual:
        raise VersionMismatch(name, expected, actual)


def check_remove(
    name: str, current: RuntimeEntry | None, file_path: str | None, expected: int | None
) -> RuntimeEntry:
    """The refusals of a remove; the entry removed."""
    if file_path is not None:
        raise FileEntryReadOnly(name, file_path)
    if current is None:
        raise UnknownEntry(name)
    if expected is not None and expected != current.version:
        raise VersionMismatch(name, expected, current.version)
    return current


def next_entry(
    resolved: ResolvedEntry,
    current: RuntimeEntry | None,
    at: datetime,
    by: str,
    request_id: str | None,
    seq: int,
) -> RuntimeEntry:
    """The entry a put stores over `current`, with change record `seq`."""
    if current is None:
        return RuntimeEntry(
            resolved.name, resolved.definition, seq, at, by, at, by, request_id, text=resolved.text
        )
    return replace(
        current,
        definition=resolved.definition,
        version=current.version + 1,
        updated_at=at,
        updated_by=by,
        request_id=request_id,
        text=resolved.text,
    )


class EntryPut(NamedTuple):
    """One entry of a put: its definition and the version it expects (None: any; 0: none)."""

    entry: ResolvedEntry
    expected: int | None = None


class PutOutcome(NamedTuple):
    """What a put does to one entry: `stored` replaces `before`, unless it is a repeat of the
    request that stored it (`written` False: nothing to write, no record)."""

    stored: RuntimeEntry
    before: RuntimeEntry | None
    written: bool


def check_unique(puts: Sequence[EntryPut]) -> None:
    """Refuse a batch that names an entry twice (which of the two would win is not said)."""
    names = [p.entry.name for p in puts]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BackendError(f"entries {', '.join(twice)} are given twice; nothing was written")


def check_puts(
    puts: Sequence[EntryPut],
    current: Sequence[RuntimeEntry | None],
    files: Sequence[str | None],
    request_id: str | None,
) -> None:
    """The first refusal `plan_puts` would raise for `puts`, without making the entries (a
    batch written in steps is checked whole before its first step)."""
    check_unique(puts)
    for put, stored, path in zip(puts, current, files, strict=True):
        if request_id is None or stored is None or stored.request_id != request_id:
            check_put(put.entry.name, stored, path, put.expected)


def plan_puts(
    puts: Sequence[EntryPut],
    current: Sequence[RuntimeEntry | None],
    files: Sequence[str | None],
    at: datetime,
    by: str,
    request_id: str | None,
    head: int,
) -> list[PutOutcome]:
    """The outcome of each put (`current` and `files`: its stored entry and its file, if any),
    or the first refusal (`check_put`), so that a batch is written whole or not at all. The
    writes' change records follow the feed's `head`, one each, in order."""
    check_unique(puts)
    outcomes: list[PutOutcome] = []
    for put, stored, path in zip(puts, current, files, strict=True):
        if request_id is not None and stored is not None and stored.request_id == request_id:
            outcomes.append(PutOutcome(stored, stored, False))
            continue
        check_put(put.entry.name, stored, path, put.expected)
        head += 1
        written = next_entry(put.entry, stored, at, by, request_id, head)
        outcomes.append(PutOutcome(written, stored, True))
    return outcomes


class EntryWrites(ABC):
    """`put_entry` and `put_entries` of the `RuntimeEntries` role (beatd.backends.base), the
    same for every backend: each is a batch of `EntryPut`s handed to the backend's `_put`."""

    def put_entry(
        self,
        entry: ResolvedEntry,
        by: str,
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> RuntimeEntry:
        return self._put([EntryPut(entry, expected_version)], by, request_id)[0]

    def put_entries(
        self,
        entries: Sequence[ResolvedEntry],
        by: str,
        *,
        create_only: bool = False,
        request_id: str | None = None,
    ) -> list[RuntimeEntry]:
        expected = 0 if create_only else None
        return self._put([EntryPut(e, expected) for e in entries], by, request_id)

    @abstractmethod
    def _put(self, puts: Sequence[EntryPut], by: str, request_id: str | None) -> list[RuntimeEntry]:
        """Write `puts` in one atomic step, as `put_entries` says (`plan_puts` decides each)."""


def page_of(
    cursor: int | None, head: int, oldest: int, after: Callable[[int], Sequence[EntryChange]]
) -> ChangePage:
    """The page `entry_changes(cursor, limit)` returns from a feed holding seq `oldest` to
    `head` (`oldest` is head + 1 when it holds none); `after(cursor)` reads the records after
    `cursor`, at most `limit`, in order."""
    if cursor is None or cursor > head or cursor < oldest - 1:
        return ChangePage((), head, reload=True)
    chosen = tuple(after(cursor))
    return ChangePage(chosen, chosen[-1].seq if chosen else cursor)


# --- resolving ----------------------------------------------------------------------------------

_EPOCH_TEXT = EPOCH.isoformat()
_PLAIN = (str, int, float, bool)
# Fields stored only when given: a window not given has no bound, and a null amqp is no
# destination (a Celery entry's queue's is set from `queues`); the schedule is always given.
_FILLED = tuple(f for f in FIELDS if f.name not in (*SCHEDULE_FIELDS, *WINDOW_FIELDS, "amqp"))


def _check(name: str, raw: Mapping[str, Any], default_timezone: str) -> Entry:
    reader = EntryReader(API_SOURCE, name, raw, _nowhere)
    entry = build_entry(reader, {}, default_timezone, [])
    if entry is None:
        raise InvalidEntry([FieldProblem(name, p.field, p.message) for p in reader.problems])
    return entry


def _nowhere(_field: str | None, _at_key: bool) -> tuple[int, int]:
    """A runtime entry's problems have no line and column (`FieldProblem` locates them)."""
    return (0, 0)


def _built(name: str, definition: Mapping[str, Any]) -> Entry:
    return _check(name, definition, "UTC")


def _queue_protocol(queue: str, queues: Mapping[str, QueueSettings] | None) -> str:
    settings = None if queues is None else queues.get(queue)
    return "beatd" if settings is None else settings.protocol


def _queue_amqp(
    queue: str, protocol: str | None, queues: Mapping[str, QueueSettings] | None
) -> dict[str, str] | None:
    settings = None if queues is None else queues.get(queue)
    if protocol != "celery" or settings is None or settings.amqp is None:
        return None
    return amqp_json(settings.amqp)


def amqp_json(target: AmqpTarget) -> dict[str, str]:
    """An AMQP destination as an entry's `amqp:` field gives it (a mapping)."""
    given = {"url": target.url, "exchange": target.exchange, "routing_key": target.routing_key}
    return {key: value for key, value in given.items() if value is not None}


def _fill_defaults(definition: dict[str, Any], entry: Entry, protocol: str | None) -> None:
    """Store in `definition` every field it does not give, in the field table's order: derived
    from the built entry, or the field table's default."""
    for name in _FILLED_NAMES:
        if name in definition:
            continue
        if name in _DERIVED:
            if name == "anchor":
                if "every" in definition:
                    definition[name] = _EPOCH_TEXT
            elif name == "timezone":
                definition[name] = entry.timezone
            elif name == "protocol":
                definition[name] = protocol
            elif name == "jitter":
                definition[name] = _seconds(entry.jitter)
            else:
                definition[name] = _seconds(entry.misfire_grace)
        elif name in _CONTAINERS:  # a fresh container each: definitions share no value
            definition[name] = _CONTAINERS[name].copy()
        else:
            definition[name] = _DEFAULTS[name]


def _seconds(value: timedelta) -> int | float:
    seconds = value.total_seconds()
    return int(seconds) if seconds == int(seconds) else seconds


def _json(value: Any) -> Any:
    """A field's value as JSON holds it (a YAML flag may give dates, tuples, a cron spec)."""
    kind = type(value)
    if value is None or kind in _PLAIN:  # most values: checked first, as it is cheap
        return value
    if kind is list:  # args, as JSON gives them: the plain values kept, without a call each
        return [v if v is None or type(v) in _PLAIN else _json(v) for v in value]
    if kind is dict:
        return {k: v if v is None or type(v) in _PLAIN else _json(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _seconds(value)
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


# The field table's defaults as JSON, converted once (a bulk import fills them by the 100,000);
# the fields derived from the built entry (`_fill_defaults`) and the required ones have none.
_DERIVED = ("anchor", "timezone", "protocol", "jitter", "misfire_grace")
_DEFAULTS = {
    f.name: _json(f.default)
    for f in _FILLED
    if f.name not in _DERIVED and f.default is not REQUIRED
}
_FILLED_NAMES = tuple(f.name for f in _FILLED)
# the defaults that are containers (args, kwargs, headers): made anew for each definition
_CONTAINERS: dict[str, list[Any] | dict[str, Any]] = {
    name: value for name, value in _DEFAULTS.items() if isinstance(value, list | dict)
}
