"""The in-memory backend's operator controls (`Controls` in beatd.backends.base): pauses, busy
marks and held runs beside the entries' states, the audit log and the remembered trigger keys,
all in the process's store and changed under the same lock as the queue step they go with.

`Book` is the data and the rules that change it (no lock, no clock: the caller passes `at`);
`MemoryControls` is the `Controls` role over a store's `Book`, and the hooks `commit` and the
final settling steps call, mixed into `MemoryBackend`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from beatd.backends.base import (
    BeatdQueue,
    CeleryQueue,
    HistoryTrimmed,
    Outgoing,
    StateWrite,
    backfill_needs_history,
    first_trimmed,
)
from beatd.backends.memory_history import History
from beatd.controls import (
    IDEMPOTENCY_KEY_TTL,
    NO_CONTROL,
    AuditRecord,
    Busy,
    EntryControl,
    Guard,
    HeldRun,
    Overlap,
    Pause,
    Trigger,
    TriggerKey,
    TriggerResult,
    TriggerStatus,
    backfill_detail,
    dropped_by_pause,
    held_trigger,
    is_entry_change,
    lift,
    new_audit_id,
    pause_json,
    published_trigger,
    replaced_held,
    trigger_detail,
)
from beatd.errors import BackendError
from beatd.history import MissedSlots, RunKind

PAUSED = "paused"  # the missed reason of a held run a pause dropped
# The trigger results that use up an idempotency key (a refused trigger leaves it free).
KEEPS_KEY = frozenset({TriggerStatus.PUBLISHED, TriggerStatus.HELD})


def _newest_first(record: AuditRecord) -> tuple[datetime, str]:
    return record.at, record.id


def due_of(message: Outgoing) -> datetime | None:
    return message.due if message.due is not None else message.slot


def is_busy(control: EntryControl, guard: Guard, at: datetime) -> bool:
    """Whether the entry counts as busy under `guard`: a mark younger than its timeout."""
    busy = control.busy
    return busy is not None and at - busy.since < timedelta(seconds=guard.timeout)


@dataclass
class Book:
    """One store's entry controls, audit records and trigger keys (by (key, entry))."""

    controls: dict[str, EntryControl] = field(default_factory=dict)
    audit: dict[str, AuditRecord] = field(default_factory=dict)
    keys: dict[tuple[str, str], TriggerKey] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)  # the entry each busy run id marks

    def get(self, entry: str) -> EntryControl:
        return self.controls.get(entry, NO_CONTROL)

    def put(self, entry: str, control: EntryControl) -> None:
        before = self.controls.pop(entry, NO_CONTROL)
        if before.busy is not None:
            self.busy.pop(before.busy.run_id, None)
        if control != NO_CONTROL:
            self.controls[entry] = control
        if control.busy is not None:
            self.busy[control.busy.run_id] = entry

    # --- what commit checks and writes ------------------------------------------------------------

    def passes(
        self, entry: str, write: StateWrite | None, messages: Sequence[Outgoing], at: datetime
    ) -> bool:
        """Whether the entry's write (None: messages without one) passes its pause and guard."""
        control = self.get(entry)
        pause = control.pause
        if pause is not None:
            dues = (due_of(m) for m in messages)
            if any(due is not None and pause.covers(due) for due in dues):
                return False
        if write is None or write.guard is None:
            return True
        return is_busy(control, write.guard, at) == write.busy

    def applied(
        self, write: StateWrite, messages: Sequence[Outgoing], at: datetime
    ) -> MissedSlots | None:
        """An applied guarded write: its last run marks the entry busy; its hold is kept. The
        held run it replaces, missed (overlap), if there was one."""
        if write.guard is None:
            return None
        entry = write.state.entry
        control = self.get(entry)
        replaced = None
        if messages:
            control = control._replace(busy=Busy(messages[-1].id, at))
        if write.hold is not None:
            held, replaced = replaced_held(entry, control.held, write.hold)
            control = control._replace(held=held)
        self.put(entry, control)
        return replaced

    def busy_with(self, run_id: str) -> str | None:
        """The entry whose busy mark run `run_id` holds, if one does."""
        return self.busy.get(run_id)

    # --- keys and the audit log -------------------------------------------------------------------

    def remembered(self, key: str, entry: str, at: datetime) -> TriggerResult | None:
        held = self.keys.get((key, entry))
        if held is None or at - held.at >= IDEMPOTENCY_KEY_TTL:
            return None
        return held.result

    def remember(self, request: Trigger, result: TriggerResult, at: datetime) -> None:
        entry = request.entry
        self.keys[(f"request:{request.request_id}", entry)] = TriggerKey(
            f"request:{request.request_id}", entry, result, at
        )
        if request.idempotency_key is not None and result.status in KEEPS_KEY:
            key = f"key:{request.idempotency_key}"
            self.keys[(key, entry)] = TriggerKey(key, entry, result, at)

    def select_audit(
        self, entry: str | None, since: datetime | None, limit: int, controls_only: bool = False
    ) -> list[AuditRecord]:
        chosen = [
            a
            for a in self.audit.values()
            if entry in (None, a.entry)
            and (since is None or a.at >= since)
            and not (controls_only and is_entry_change(a.action))
        ]
        return sorted(chosen, key=_newest_first, reverse=True)[: max(limit, 0)]

    def trim(self, max_age: timedelta, now: datetime, limit: int) -> int:
        old = sorted((a for a in self.audit.values() if a.at < now - max_age), key=_newest_first)
        stale = [k for k, v in self.keys.items() if now - v.at >= IDEMPOTENCY_KEY_TTL]
        count = 0
        for record in old[:limit]:
            del self.audit[record.id]
            count += 1
        for key in stale[: limit - count]:
            del self.keys[key]
            count += 1
        return count

    def add(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord],
        keys: Sequence[TriggerKey],
    ) -> int:
        added = 0
        for entry, control in controls.items():
            if entry not in self.controls and control != NO_CONTROL:
                self.put(entry, control)
                added += 1
        for record in audit:
            if record.id not in self.audit:
                self.audit[record.id] = record
                added += 1
        for key in keys:
            if (key.key, key.entry) not in self.keys:
                self.keys[(key.key, key.entry)] = key
                added += 1
        return added


class MemoryControls:
    """The `Controls` role over `_book` under `_lock`, and the hooks `commit` and the final
    settling steps call under it; `_add` enqueues a message in the store. Times come from `_now`
    (Unix seconds); `_history` is written unless `_writes_history` is False."""

    url: str
    _lock: threading.Lock
    _book: Book
    _history: History
    _writes_history: bool
    _now: Callable[[], float]
    _add: Callable[[BeatdQueue, str, str, float], None]
    _horizon: Callable[[str], datetime | None]  # an entry's persisted last slot, if any

    def _instant(self) -> datetime:
        return datetime.fromtimestamp(self._now(), UTC)

    def _audit(self, record: AuditRecord) -> AuditRecord:
        self._book.audit[record.id] = record
        return record

    def load_controls(self, entries: Sequence[str] | None = None) -> dict[str, EntryControl]:
        with self._lock:
            held = self._book.controls
            wanted = held if entries is None else [e for e in entries if e in held]
            return {e: held[e] for e in wanted}

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        with self._lock:
            at = self._instant()
            end = at + until if isinstance(until, timedelta) else until
            pause = Pause(at, end, reason, by)
            records = []
            for entry in entries:
                control = self._book.get(entry)
                lifted = lift(control, at, self._horizon(entry))
                self._book.put(entry, control._replace(pause=pause, lifted=lifted))
                before, after = pause_json(control.pause), pause_json(pause)
                record = AuditRecord(new_audit_id(), at, "pause", entry, by, {}, before, after)
                records.append(self._audit(record))
            return records

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        with self._lock:
            at = self._instant()
            records = []
            for entry in entries:
                control = self._book.get(entry)
                if control.pause is None:
                    continue
                lifted = lift(control, at, self._horizon(entry))
                self._book.put(entry, control._replace(pause=None, lifted=lifted))
                before, after = pause_json(control.pause), pause_json(None)
                record = AuditRecord(new_audit_id(), at, "resume", entry, by, {}, before, after)
                records.append(self._audit(record))
            return records

    def trigger(self, request: Trigger) -> TriggerResult:
        if request.celery:
            raise BackendError(
                f"entry {request.entry} publishes to a CeleryQueue, which needs a Redis broker "
                "(Redis transport only); the memory backend stores beatd's own messages only"
            )
        with self._lock:
            at = self._instant()
            result = self._book.remembered(f"request:{request.request_id}", request.entry, at)
            if result is not None:
                return result
            result = self._decide(request, at)
            if result.status in KEEPS_KEY:
                result = self._carry_out(request, result, at)
            self._book.remember(request, result, at)
            return result

    def _decide(self, request: Trigger, at: datetime) -> TriggerResult:
        """What becomes of `request` (an audit id is given to a published or held run later)."""
        key = request.idempotency_key
        used = None if key is None else self._book.remembered(f"key:{key}", request.entry, at)
        if used is not None:
            return TriggerResult(TriggerStatus.DUPLICATE, used.run_id, "", used.audit_id)
        control, rid = self._book.get(request.entry), request.run_id
        if not request.force and control.pause is not None and control.pause.covers(at):
            return TriggerResult(TriggerStatus.REFUSED_PAUSED, rid, control.pause.describe())
        guard = request.guard
        if request.force or guard is None or not is_busy(control, guard, at):
            return published_trigger(request, control)
        if guard.overlap is Overlap.BUFFER_ONE:
            return held_trigger(control, rid)
        assert control.busy is not None
        return TriggerResult(TriggerStatus.REFUSED_BUSY, rid, control.busy.run_id)

    def _carry_out(self, request: Trigger, result: TriggerResult, at: datetime) -> TriggerResult:
        """Publish or hold the triggered run, with its audit record."""
        audit_id, entry = new_audit_id(), request.entry
        detail = trigger_detail(request, result)
        self._audit(AuditRecord(audit_id, at, "trigger", entry, request.by, detail))
        control = self._book.get(entry)
        if result.status is TriggerStatus.HELD:
            held = HeldRun(
                request.run_id,
                at,
                at,
                RunKind.MANUAL.value,
                request.queue,
                request.body,
                audit_id,
                request.celery,
                request.priority,
            )
            held, replaced = replaced_held(entry, control.held, held)
            self._book.put(entry, control._replace(held=held))
            if replaced is not None and self._writes_history:
                self._history.missed_one(replaced, None, at)
        else:
            queue = BeatdQueue(request.queue, request.priority)
            outgoing = Outgoing(
                entry, request.run_id, queue, request.body, at, at, RunKind.MANUAL, audit_id
            )
            self._publish(outgoing, at)
            if request.guard is not None:
                self._book.put(entry, control._replace(busy=Busy(request.run_id, at)))
        return result._replace(audit_id=audit_id)

    def _publish(self, message: Outgoing, at: datetime) -> None:
        """Enqueue a run published without a lease, with its record (no node, epoch 0)."""
        assert isinstance(message.destination, BeatdQueue)
        self._add(message.destination, message.id, message.body, at.timestamp())
        if self._writes_history:
            self._history.published(message, None, at)

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        if not self._writes_history:
            raise backfill_needs_history(entry, self.url)
        for message in runs:
            if not isinstance(message.destination, BeatdQueue):
                raise BackendError(
                    f"entry {entry} publishes to a {type(message.destination).__name__}; the "
                    "memory backend stores beatd's own messages only"
                )
        with self._lock:
            bound = self._history.trimmed.get(entry)
            if first_trimmed(runs, bound):
                assert bound is not None
                raise HistoryTrimmed(entry, bound)
            at, audit_id = self._instant(), new_audit_id()
            published: list[str] = []
            for message in runs:
                if message.id in self._history.runs or message.id in published:
                    continue
                self._publish(message._replace(audit=audit_id), at)
                published.append(message.id)
            control = self._book.get(entry)
            if control.held is not None and control.held.run_id in published:
                # published here: the busy run's end must not publish it again
                self._book.put(entry, control._replace(held=None))
            done = backfill_detail(detail, len(runs), len(published))
            audit = self._audit(AuditRecord(audit_id, at, "backfill", entry, by, done))
            return published, audit

    def record_audit(self, record: AuditRecord) -> None:
        with self._lock:
            self._audit(record)

    def audit(
        self,
        entry: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        controls_only: bool = False,
    ) -> list[AuditRecord]:
        with self._lock:
            return self._book.select_audit(entry, since, limit, controls_only)

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        with self._lock:
            return self._book.trim(max_age, self._instant(), limit)

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        with self._lock:
            return self._book.add(controls, audit, keys)

    def trigger_keys(self) -> list[TriggerKey]:
        with self._lock:
            return list(self._book.keys.values())

    # --- hooks, called under the lock -------------------------------------------------------------

    def _run_ended(self, run_id: str) -> None:
        """Run `run_id` reached a final outcome: clear the busy mark it holds and publish the
        entry's held run (or drop it as missed, reason paused, when a pause covers now)."""
        entry = self._book.busy_with(run_id)
        if entry is None:
            return
        at = self._instant()
        control = self._book.get(entry)
        held, pause = control.held, control.pause
        control = control._replace(busy=None, held=None)
        if held is not None and dropped_by_pause(held, pause, at):
            if self._writes_history:
                slots = MissedSlots(entry, PAUSED, held.slot, held.slot, 1)
                self._history.missed_one(slots, None, at)
        elif held is not None:
            destination = CeleryQueue if held.celery else BeatdQueue
            queue = destination(held.destination_queue, held.priority)
            kind = RunKind(held.kind)
            outgoing = Outgoing(
                entry, held.run_id, queue, held.body, held.slot, held.due, kind, held.audit
            )
            self._publish(outgoing, at)
            control = control._replace(busy=Busy(held.run_id, at))
        self._book.put(entry, control)
