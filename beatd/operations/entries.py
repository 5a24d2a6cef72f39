"""Runtime entries as every way in writes them (issue 18): the CLI (`beatd entries`), the
HTTP API (`/v1/entries`) and `beatd.Client` all stand on these functions (and show entries
with beatd.operations.entry_objects), so an entry is validated with the same messages (`beatd
check`'s, through `resolve_entry`) and refused with the same errors whichever way it came.

Writes go to the backend's `RuntimeEntries` role, which checks names against the leader's file
set and versions in its own atomic step; the leader applies them through its change feed.
"""

from __future__ import annotations

import gc
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from beatd.backends import Backend
from beatd.config.fields import ENTRY_FIELDS, SCHEDULE_FIELDS, WINDOW_FIELDS
from beatd.config.model import Config, QueueSettings
from beatd.errors import BeatdError, NotApplied, OutcomeUnknown
from beatd.runtime_entries import (
    FieldProblem,
    FileEntryReadOnly,
    InvalidEntry,
    NameTaken,
    PartlyWritten,
    RuntimeEntry,
    UnknownEntry,
    VersionMismatch,
    resolve_entry,
)

T = TypeVar("T")
MAX_ARGUMENT_BYTES = 64 * 1024  # args and kwargs together, as JSON
MAX_BATCH = 10_000  # entries of one POST /v1/entries/batch (Client.add_many sends more as several)
WRITE_ATTEMPTS = 4  # a put the backend could not confirm is repeated (with its request id)
# Fields derived from the schedule when not given: a `set` that changes the schedule derives
# them again unless it gives them too.
_FOLLOW_SCHEDULE = ("anchor", "jitter", "misfire_grace")


class ArgumentsTooLarge(InvalidEntry):
    """args and kwargs together take more than MAX_ARGUMENT_BYTES as JSON (HTTP 413)."""


class Writing(NamedTuple):
    """What a write needs besides the entry: who asks (the audit's `by`), the queues'
    protocols and the file entries (name -> file) of the caller's schedule files, and the
    timezone of an entry that gives none.

    The backend refuses the names the leader registered, atomically with the write; `files`
    refuses the caller's own file entries' names as well, before it (a daemon's API, say, while
    no leader has registered them yet)."""

    by: str
    queues: Mapping[str, QueueSettings] | None = None
    default_timezone: str = "UTC"
    files: Mapping[str, str] = {}

    @classmethod
    def of(cls, by: str, config: Config | None) -> Writing:
        """Who writes, with the queues and the file entries of `config` (if any)."""
        if config is None:
            return cls(by)
        files = {name: entry.source.rsplit(":", 1)[0] for name, entry in config.entries.items()}
        return cls(by, config.queues, files=files)


def backend_now(store: Backend) -> datetime:
    """The backend's clock: an `at:` is checked against the time every node agrees on."""
    return datetime.fromtimestamp(store.server_time(), UTC)


def resolve(
    store: Backend,
    name: str,
    raw: Mapping[str, Any],
    writing: Writing,
    now: datetime | None = None,
) -> Any:
    """`resolve_entry` of one definition at `now` (the backend's clock when not given), args
    and kwargs first checked for size; NameTaken for a name of the caller's file entries."""
    if name in writing.files:
        raise NameTaken(name, writing.files[name])
    check_argument_size(name, raw)
    return resolve_entry(
        name,
        raw,
        now=backend_now(store) if now is None else now,
        queues=writing.queues,
        default_timezone=writing.default_timezone,
    )


# json.dumps(..., default=str), without making an encoder per entry of a batch
_ARGUMENT_JSON = json.JSONEncoder(default=str)


def check_argument_size(name: str, raw: Mapping[str, Any]) -> None:
    encode = _ARGUMENT_JSON.encode
    sizes = {f: len(encode(raw[f])) for f in ("args", "kwargs") if f in raw}
    total = sum(sizes.values())
    if total > MAX_ARGUMENT_BYTES:
        field = max(sizes, key=lambda f: sizes[f])
        message = (
            f"args and kwargs take {total} bytes as JSON, more than {MAX_ARGUMENT_BYTES // 1024} "
            "KiB: pass a reference (an id, a key, a path) and let the task load the data"
        )
        raise ArgumentsTooLarge([FieldProblem(name, field, message)])


def repeated(write: Callable[[str], T], attempts: int = WRITE_ATTEMPTS) -> T:
    """`write(request_id)`, repeated with the same request id when the backend could not say
    whether it was applied (OutcomeUnknown) or did not apply it (NotApplied): a put applied
    already is answered as stored, written once (RuntimeEntries' timeouts contract)."""
    request_id = secrets.token_hex(16)
    for attempt in range(1, attempts + 1):
        try:
            return write(request_id)
        except (OutcomeUnknown, NotApplied):
            if attempt == attempts:
                raise
            time.sleep(min(0.05 * 2**attempt, 1.0))
    raise AssertionError("unreachable")


def add(store: Backend, name: str, raw: Mapping[str, Any], writing: Writing) -> RuntimeEntry:
    """Create the runtime entry `name` (VersionMismatch when it exists, NameTaken when a file
    entry has the name)."""
    resolved = resolve(store, name, raw, writing)
    return repeated(
        lambda rid: store.put_entry(resolved, writing.by, expected_version=0, request_id=rid)
    )


def add_many(
    store: Backend, definitions: Sequence[tuple[str, Mapping[str, Any]]], writing: Writing
) -> list[RuntimeEntry]:
    """Create every entry or none: InvalidEntry lists every problem of every definition."""
    resolved, problems = [], twice([name for name, _ in definitions])
    now = backend_now(store)  # once per batch: a round trip to the backend each
    with collector_paused():
        for name, raw in definitions:
            try:
                resolved.append(resolve(store, name, raw, writing, now))
            except InvalidEntry as exc:
                problems.extend(exc.fields)
        if problems:
            raise InvalidEntry(problems)
        return repeated(
            lambda rid: store.put_entries(resolved, writing.by, create_only=True, request_id=rid)
        )


_PAUSES = threading.Lock()
_paused = 0  # the bulk writes under way, which paused the cyclic collector
_resume = False  # whether it ran before the first of them


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a bulk write makes its many values, none of them
    in a cycle (left on, it walked them again and again: a sixth of the CPU of an import of
    100,000 entries). Counted, so that writes at once (the API's threads) leave it as the
    first found it."""
    global _paused, _resume
    with _PAUSES:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _PAUSES:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


def twice(names: Sequence[str]) -> list[FieldProblem]:
    """A problem for each name given more than once in one batch."""
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    message = "the name is given twice in one batch; nothing was written"
    return [FieldProblem(name, "name", message) for name in repeated]


def replace(
    store: Backend,
    name: str,
    raw: Mapping[str, Any],
    writing: Writing,
    expected: int | None = None,
) -> RuntimeEntry:
    """Replace the whole definition of `name` (at version `expected`, when given); an entry
    not stored yet is created unless `expected` names a version."""
    refuse_file_entry(store, name, writing.files)
    resolved = resolve(store, name, raw, writing)
    return repeated(
        lambda rid: store.put_entry(resolved, writing.by, expected_version=expected, request_id=rid)
    )


def update(
    store: Backend,
    name: str,
    changes: Mapping[str, Any],
    writing: Writing,
    expected: int | None = None,
) -> RuntimeEntry:
    """Change the given fields of the runtime entry `name`, keeping the others as stored: read,
    merge, and put with the version read (VersionMismatch if it changed in between)."""
    current = stored_entry(store, name, writing.files)
    if expected is not None and expected != current.version:
        raise VersionMismatch(name, expected, current.version)
    merged = merged_definition(current.definition, changes)
    resolved = resolve(store, name, merged, writing)
    return repeated(
        lambda rid: store.put_entry(
            resolved, writing.by, expected_version=current.version, request_id=rid
        )
    )


def merged_definition(stored: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`stored` with `changes` over it. A change of schedule (`every`, `cron`, `at`) drops the
    other schedule fields and what was derived from the old one (anchor, jitter, grace), and
    an `at` drops the window, unless the change gives them."""
    merged = dict(stored)
    if any(f in changes for f in SCHEDULE_FIELDS):
        dropped = [*SCHEDULE_FIELDS, *_FOLLOW_SCHEDULE]
        if "at" in changes:
            dropped += WINDOW_FIELDS
        for field in dropped:
            merged.pop(field, None)
    merged.update(changes)
    return in_table_order(merged)


def in_table_order(definition: Mapping[str, Any]) -> dict[str, Any]:
    """`definition` with its fields in the field table's order (unknown ones last)."""
    known = {f: definition[f] for f in ENTRY_FIELDS if f in definition}
    return known | {f: v for f, v in definition.items() if f not in known}


def remove(store: Backend, name: str, by: str, expected: int | None = None) -> RuntimeEntry:
    """Remove the runtime entry `name`; the entry as it was."""
    return store.remove_entry(name, by, expected_version=expected)


def stored_entry(store: Backend, name: str, files: Mapping[str, str] | None = None) -> RuntimeEntry:
    """The runtime entry `name`: FileEntryReadOnly for a file entry's, UnknownEntry if none."""
    current = store.get_entry(name)
    if current is None:
        refuse_file_entry(store, name, files or {})
        raise UnknownEntry(name)
    return current


def refuse_file_entry(store: Backend, name: str, files: Mapping[str, str]) -> None:
    """FileEntryReadOnly when `name` is a file entry's: the caller's (`files`) or one the
    leader registered."""
    path = files.get(name) or store.file_entries().get(name)
    if path is not None:
        raise FileEntryReadOnly(name, path)


class Refusal(NamedTuple):
    """How every way in answers a refused write or read of an entry: the HTTP status (the
    client raises the matching ClientError, the CLI exits 2 for 413 and 422, else 1) and
    each error with its entry, field, message and JSON pointer."""

    status: int
    errors: list[dict[str, Any]]


def refusal(
    error: BeatdError, *, conditional: bool = False, positions: Mapping[str, str] | None = None
) -> Refusal | None:
    """`error` as a refusal, None when it is none of an entry's refusals. A version mismatch is
    412 for a `conditional` write (one with an expected version), else 409 (a create found the
    entry). `positions`: where each entry is in a request's body (a batch), for the pointers."""
    where = positions or {}
    if isinstance(error, PartlyWritten):  # the cause's refusal, in words that say what was kept
        cause = refusal(error.cause, conditional=conditional, positions=positions)
        if cause is None:
            return None
        return Refusal(cause.status, [{**e, "message": str(error)} for e in cause.errors])
    if isinstance(error, InvalidEntry):
        status = 413 if isinstance(error, ArgumentsTooLarge) else 422
        return Refusal(status, [_field_error(p, where.get(p.entry, "")) for p in error.fields])
    if isinstance(error, NameTaken | FileEntryReadOnly):
        return Refusal(409, [_error(error.name, None, str(error), where.get(error.name))])
    if isinstance(error, VersionMismatch):
        if conditional:
            return Refusal(412, [_error(error.name, "If-Match", str(error), None)])
        return Refusal(
            409, [_error(error.name, "name", str(error), where.get(error.name, "") + "/name")]
        )
    if isinstance(error, UnknownEntry):
        return Refusal(404, [_error(error.name, "name", str(error), None)])
    return None


def _field_error(problem: FieldProblem, prefix: str) -> dict[str, Any]:
    return _error(problem.entry, problem.field, problem.message, prefix + problem.pointer)


def _error(
    entry: str | None, field: str | None, message: str, pointer: str | None
) -> dict[str, Any]:
    return {"entry": entry, "field": field, "message": message, "pointer": pointer}
