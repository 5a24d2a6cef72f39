"""Operator controls' values: pauses, busy marks and held runs persisted beside each entry's
horizon, manual triggers, backfills and the audit log (docs/controls.md). Written and read by the
backends (`Controls` in beatd.backends.base), decided on by the planner (beatd.core) and the
commands (`beatd pause|resume|trigger|backfill|audit`).

Times are aware UTC from the backend's clock, except where a field says otherwise.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from beatd.history import MissedSlots, RunKind

IDEMPOTENCY_KEY_TTL = timedelta(days=7)  # how long a trigger's key (and request id) is remembered
DEFAULT_OVERLAP_TIMEOUT = timedelta(hours=24)  # `overlap_timeout` of an entry without `expires`
DEFAULT_AUDIT_RETENTION = timedelta(days=365)


class Overlap(StrEnum):
    """What a slot due while the entry's previous run is still busy does (`overlap:`)."""

    ALLOW = "allow"  # publish it anyway (the default, and beatd's behaviour before)
    SKIP = "skip"  # missed, reason `overlap`
    BUFFER_ONE = "buffer_one"  # held (the newest only) and published when the busy run ends


class Pause(NamedTuple):
    """An entry is paused for slots due in [at, until) (until None: till resumed)."""

    at: datetime
    until: datetime | None
    reason: str
    by: str  # self-declared (user@host by default): access to the backend is full access

    def covers(self, due: datetime) -> bool:
        return due >= self.at and (self.until is None or due < self.until)

    def describe(self) -> str:
        """The pause in words, as a refused trigger's `detail` gives it."""
        until = "resumed" if self.until is None else f"{self.until:%Y-%m-%dT%H:%M:%SZ}"
        return (
            f"paused by {self.by} since {self.at:%Y-%m-%dT%H:%M:%SZ} until {until}: {self.reason}"
        )


def pause_json(pause: Pause | None) -> dict[str, Any]:
    """An audit record's `before`/`after` of a pause or resume: `{"pause": ...}` (None: none)."""
    if pause is None:
        return {"pause": None}
    until = None if pause.until is None else pause.until.isoformat()
    fields = {"at": pause.at.isoformat(), "until": until, "reason": pause.reason, "by": pause.by}
    return {"pause": fields}


def pause_of(state: Mapping[str, Any] | None) -> Pause | None:
    """The pause in an audit record's `before`/`after` (`pause_json`), if there is one."""
    fields = state.get("pause") if state else None
    if not isinstance(fields, Mapping):
        return None
    until = fields.get("until")
    return Pause(
        datetime.fromisoformat(fields["at"]),
        None if until is None else datetime.fromisoformat(until),
        str(fields.get("reason", "")),
        str(fields.get("by", "")),
    )


class Busy(NamedTuple):
    """The entry's run `run_id`, published at `since`, has not reached a final outcome."""

    run_id: str
    since: datetime


class HeldRun(NamedTuple):
    """A run `buffer_one` keeps back while the entry is busy, published when it is not: its
    message, encoded when it was decided (a scheduled slot's id, or a held manual run's)."""

    run_id: str
    slot: datetime
    due: datetime
    kind: str  # beatd.history.RunKind value
    destination_queue: str
    body: str
    audit: str | None = None  # a held manual run's audit record, written on its published record
    # how to enqueue it (as `Trigger.celery`/`priority`): a CeleryQueue's envelope, or beatd's
    celery: bool = False
    priority: int | None = None


class EntryControl(NamedTuple):
    """What is persisted per entry beside its horizon (`StateStore.load_controls`).

    `lifted`: the pauses resumed or replaced that may still cover slots past the entry's
    horizon, each ending when it was lifted: kept so that a leader that was not running then
    still ends their slots missed (paused); dropped once the horizon passes them (`lift`)."""

    pause: Pause | None = None
    busy: Busy | None = None
    held: HeldRun | None = None
    lifted: tuple[Pause, ...] = ()


def lift(control: EntryControl, at: datetime, horizon: datetime | None) -> tuple[Pause, ...]:
    """The lifted pauses to persist when the entry's pause is resumed or replaced at `at`: the
    ones kept, less those that end at or before the entry's `horizon` (its slots up to there
    are accounted for; None: no horizon known), and the pause lifted now, ended at `at`."""
    kept = [p for p in control.lifted if horizon is None or p.until is None or p.until > horizon]
    pause = control.pause
    if pause is not None:
        end = at if pause.until is None else min(pause.until, at)
        if end > pause.at and (horizon is None or end > horizon):
            kept.append(pause._replace(until=end))
    return tuple(kept)


def lifted_json(lifted: tuple[Pause, ...]) -> str:
    """The lifted pauses as stored (SQLite, PostgreSQL, Redis): a JSON list of
    [at_us, until_us, reason, by]."""
    return json.dumps([[_micros(p.at), _micros(p.until), p.reason, p.by] for p in lifted])


def lifted_from_json(text: str | None) -> tuple[Pause, ...]:
    if not text:
        return ()
    return tuple(
        Pause(_moment(at), _moment(until), reason, by) for at, until, reason, by in json.loads(text)
    )


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int | None) -> datetime:
    assert micros is not None
    return _EPOCH + timedelta(microseconds=micros)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


NO_CONTROL = EntryControl()
HELD_REPLACED = "overlap"  # the missed reason of a held run a newer hold replaced


class HeldAfter(NamedTuple):
    """What a commit's `hold` leaves: the run that stays held, and the slot recorded missed."""

    held: HeldRun
    missed: MissedSlots | None


def replaced_held(entry: str, held: HeldRun | None, hold: HeldRun) -> HeldAfter:
    """The rule every backend's commit applies to a write's `hold` (`StateStore.commit`): the
    hold replaces `held` (the held run before it), which is recorded missed (overlap, its slot),
    unless there was none or it is the same run; but a held manual run is never replaced: it
    stays, and the slot the hold wanted is recorded missed (overlap) instead."""
    if held is None or held.run_id == hold.run_id:
        return HeldAfter(hold, None)
    if held.kind == RunKind.MANUAL:
        return HeldAfter(held, MissedSlots(entry, HELD_REPLACED, hold.slot, hold.slot, 1))
    return HeldAfter(hold, MissedSlots(entry, HELD_REPLACED, held.slot, held.slot, 1))


def dropped_by_pause(held: HeldRun, pause: Pause | None, at: datetime) -> bool:
    """Whether the held run, its busy run ended at `at`, is dropped (missed, reason paused)
    rather than published: a held slot a pause covers is; a held manual run never is, since the
    trigger was accepted before the pause (a pause covers slots, and a trigger's own check of
    the pause was made when it was asked) and an operator's run must never vanish."""
    return held.kind != RunKind.MANUAL and pause is not None and pause.covers(at)


def published_trigger(request: Trigger, control: EntryControl) -> TriggerResult:
    """A trigger that publishes: its `detail` the busy run whose mark it drops as stale (a
    guarded, unforced trigger publishes over a mark only when it is older than the entry's
    `overlap_timeout`), "" when none."""
    busy = control.busy
    guarded = request.guard is not None and not request.force
    dropped = busy.run_id if busy is not None and guarded else ""
    return TriggerResult(TriggerStatus.PUBLISHED, request.run_id, dropped)


def trigger_detail(request: Trigger, result: TriggerResult) -> dict[str, Any]:
    """A trigger's audit record detail; `dropped_busy`: the stale busy mark it published over
    (counted by the leader as `beatd_busy_marks_dropped_total`)."""
    detail = {
        "run_id": request.run_id,
        "status": result.status.value,
        "force": request.force,
        "idempotency_key": request.idempotency_key,
        "request_id": request.request_id,
    }
    if result.status is TriggerStatus.PUBLISHED and result.detail:
        detail["dropped_busy"] = result.detail
    return detail


def held_trigger(control: EntryControl, run_id: str) -> TriggerResult:
    """A trigger of a busy `buffer_one` entry: held, unless a manual run is held already; then
    refused naming that run, since buffer_one keeps one run and an operator's run must never
    vanish. A held scheduled slot gives way (`replaced_held`: it is recorded missed, overlap)."""
    held = control.held
    if held is not None and held.kind == RunKind.MANUAL:
        return TriggerResult(TriggerStatus.REFUSED_HELD, run_id, held.run_id)
    return TriggerResult(TriggerStatus.HELD, run_id)


class Guard(NamedTuple):
    """The overlap rule a commit applies to one entry's write (`StateWrite.guard`)."""

    overlap: Overlap
    timeout: float  # seconds after which a busy mark is stale: dropped, logged and counted


class TriggerStatus(StrEnum):
    PUBLISHED = "published"
    DUPLICATE = "duplicate"  # the idempotency key (or request id) was used: its run id is given
    REFUSED_BUSY = "refused_busy"  # overlap: skip and the entry is busy (running id given)
    REFUSED_PAUSED = "refused_paused"
    HELD = "held"  # overlap: buffer_one and the entry is busy: held, published when it is not
    # buffer_one, busy, and a manual run is held already (its id given): one is kept, never lost
    REFUSED_HELD = "refused_held"


def manual_run_id(entry: str, key: str | None = None) -> str:
    """A manual run's id: never equal to a scheduled run's `<entry>@<slot>`."""
    return f"{entry}@manual-{key if key is not None else secrets.token_hex(16)}"


@dataclass(frozen=True, slots=True)
class Trigger:
    """`beatd trigger`: one manual run, written in one atomic step by `Controls.trigger`."""

    entry: str
    run_id: str
    queue: str  # the BeatdQueue (or CeleryQueue) the body is for
    celery: bool
    priority: int | None
    body: str  # the encoded message, its `kind` manual
    request_id: str  # the same for every retry of one command: a retry is never a second run
    by: str
    guard: Guard | None  # None: overlap allow
    idempotency_key: str | None = None
    force: bool = False  # past a pause or a busy entry


class TriggerResult(NamedTuple):
    status: TriggerStatus
    run_id: str  # the run published, held, or found by its key
    detail: str = ""  # the pause or the running id that refused it
    audit_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action (or one beatd took for an operator, `pause_after_failures`)."""

    id: str
    at: datetime
    # pause, resume, trigger, backfill, requeue_dead, delete_dead, pause_after_failures; a runtime
    # entry's entry.add, entry.set, entry.remove (beatd.runtime_entries)
    action: str
    entry: str | None
    by: str
    detail: Mapping[str, Any] = field(default_factory=dict)  # JSON values
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None


def backfill_detail(detail: Mapping[str, Any], runs: int, published: int) -> dict[str, Any]:
    """A backfill step's audit detail: the command's (`from`, `to`, `slots` of the whole range)
    and what this step did, `published` and `already_there` (its runs with a published record)."""
    return {**detail, "published": published, "already_there": runs - published}


ENTRY_CHANGE_PREFIX = "entry."  # the audit actions of runtime entries' changes (issue 18)


def is_entry_change(action: str) -> bool:
    """Whether an audit record's action is a runtime entry's change (`entry.add`, ...)."""
    return action.startswith(ENTRY_CHANGE_PREFIX)


_ID_LOCK = threading.Lock()
_last_id_us = 0


def new_audit_id() -> str:
    """A new audit record's id: 14 hex digits of the host's clock in µs (one more than the
    last id's when the clock has not moved on), then 10 random ones. Ids made later on one host
    sort later, so a bulk write appends to the audit table's key (SQLite, PostgreSQL) instead
    of touching a random page per record (issue 18: an import slowed as the table grew)."""
    return new_audit_ids(1)[0]


def new_audit_ids(count: int) -> list[str]:
    """`count` new audit ids, as `new_audit_id` makes them one by one, in order, with one
    call for their random digits (a bulk write makes one per entry)."""
    global _last_id_us
    with _ID_LOCK:
        first = max(time.time_ns() // 1000, _last_id_us + 1)
        _last_id_us = first + count - 1
    noise = secrets.token_hex(5 * count)
    return [f"{first + i:014x}{noise[10 * i : 10 * i + 10]}" for i in range(count)]


class TriggerKey(NamedTuple):
    """A remembered idempotency key or request id (for `beatd migrate`)."""

    key: str  # `key:<idempotency key>` or `request:<request id>`, per entry
    entry: str
    result: TriggerResult
    at: datetime
