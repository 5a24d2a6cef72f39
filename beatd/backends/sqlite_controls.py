"""The SQLite backend's operator controls (`Controls` in beatd.backends.base): each entry's
pause, busy mark and held run in `entry_control`, the audit log in `audit`, the remembered
idempotency keys and request ids in `trigger_key`, and a manual or backfill run's audit id in
`run_audit` (the tables are `CONTROLS_SCHEMA`, sqlite_file.py, format 2).

The steps that go with another role's transaction are functions here: `failing` and `applied`
(inside `StateStore.commit`'s) and `run_final` (inside a final settling step's, through
`SQLiteFile._run_final`). A commit without a guarded write costs one read of an index that holds
the paused entries only; an ack or a dead letter one look-up in the index of busy marks, made by
its DELETE (`HOLDS_BUSY`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

from beatd.backends.base import (
    BeatdQueue,
    HistoryTrimmed,
    Outgoing,
    StateWrite,
    backfill_needs_history,
    first_trimmed,
    from_micros,
    to_micros,
)
from beatd.backends.sqlite_file import SQLiteFile, _priority
from beatd.backends.sqlite_history import MOVE_QUEUED, PUBLISHED, fold, micros
from beatd.controls import (
    ENTRY_CHANGE_PREFIX,
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
    lift,
    lifted_from_json,
    lifted_json,
    new_audit_id,
    pause_json,
    published_trigger,
    replaced_held,
    trigger_detail,
)
from beatd.errors import BackendError
from beatd.history import MissedSlots, RunKind

_GUARDED = attrgetter("guard")  # a Guard is a non-empty tuple: true
_ENTRY = attrgetter("entry")
PAUSED = "paused"  # the missed reason of a held run a pause dropped
KEEPS_KEY = frozenset({TriggerStatus.PUBLISHED, TriggerStatus.HELD})  # results that use a key
_TTL_US = IDEMPOTENCY_KEY_TTL // timedelta(microseconds=1)
_CONTROL = (
    "entry, pause_at_us, pause_until_us, pause_reason, pause_by, busy_run, busy_since_us, held, "
    "lifted"
)
_PUT = f"INSERT OR REPLACE INTO entry_control ({_CONTROL}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_HORIZON = "SELECT last_slot_us FROM entry_state WHERE entry = ?"
_PAUSED = f"SELECT {_CONTROL} FROM entry_control WHERE pause_at_us IS NOT NULL"
_AUDIT = "id, at_us, action, entry, actor, detail, before, after"
_KEY = "key, entry, status, run_id, detail, audit_id, at_us"
_MISSED_HELD = (
    "INSERT OR IGNORE INTO missed (entry, reason, first_us, last_us, total, recorded_us, node, "
    "epoch) VALUES (?, ?, ?, ?, 1, ?, '', 0)"
)


def _at(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


# --- rows and values --------------------------------------------------------------------------


def _control(row: Sequence[Any]) -> tuple[str, EntryControl]:
    entry, at, until, reason, by, busy_run, busy_since, held, lifted = row
    pause = None if at is None else Pause(from_micros(at), _at(until), reason, by)
    busy = None if busy_run is None else Busy(busy_run, from_micros(busy_since))
    kept = None if held is None else _held(held)
    return entry, EntryControl(pause, busy, kept, lifted_from_json(lifted))


def _held(text: str) -> HeldRun:
    run_id, slot, due, kind, queue, body, audit, *how = json.loads(text)
    celery, priority = how or (False, None)
    return HeldRun(
        run_id, from_micros(slot), from_micros(due), kind, queue, body, audit, celery, priority
    )


def _control_row(entry: str, control: EntryControl) -> tuple[object, ...]:
    pause, busy, held, lifted = control
    paused = (None,) * 4 if pause is None else (_us(pause.at), _us(pause.until), *pause[2:])
    marked = (None, None) if busy is None else (busy.run_id, to_micros(busy.since))
    kept = None
    if held is not None:
        times = (to_micros(held.slot), to_micros(held.due))
        kept = json.dumps([held.run_id, *times, held.kind, *held[4:]])
    return (entry, *paused, *marked, kept, lifted_json(lifted) if lifted else None)


def horizon(db: sqlite3.Connection, entry: str) -> datetime | None:
    """The entry's persisted last slot, if it has one."""
    row = db.execute(_HORIZON, (entry,)).fetchone()
    return None if row is None else from_micros(row[0])


def _unhold(db: sqlite3.Connection, entry: str, published: Sequence[str]) -> None:
    """A held run published elsewhere (a backfill of its slot) is no longer held: the busy
    run's end must not publish it again."""
    control = controls_of(db, [entry]).get(entry, NO_CONTROL)
    if control.held is not None and control.held.run_id in published:
        put(db, entry, control._replace(held=None))


def put(db: sqlite3.Connection, entry: str, control: EntryControl) -> None:
    """Store the entry's control (none left: its row goes)."""
    if control == NO_CONTROL:
        db.execute("DELETE FROM entry_control WHERE entry = ?", (entry,))
    else:
        db.execute(_PUT, _control_row(entry, control))


def controls_of(db: sqlite3.Connection, entries: Sequence[str]) -> dict[str, EntryControl]:
    rows = db.execute(
        f"SELECT {_CONTROL} FROM entry_control WHERE entry IN (SELECT value FROM json_each(?))",
        (json.dumps(list(entries)),),
    )
    return dict(map(_control, rows))


def _audit_row(record: AuditRecord) -> tuple[object, ...]:
    extra = [None if part is None else json.dumps(part) for part in (record.before, record.after)]
    return (
        record.id,
        to_micros(record.at),
        record.action,
        record.entry,
        record.by,
        json.dumps(dict(record.detail)),
        *extra,
    )


def _audit_record(row: Sequence[Any]) -> AuditRecord:
    audit_id, at, action, entry, by, detail, before, after = row
    loaded = [None if part is None else json.loads(part) for part in (before, after)]
    return AuditRecord(audit_id, from_micros(at), action, entry, by, json.loads(detail), *loaded)


def _key(row: Sequence[Any]) -> TriggerKey:
    key, entry, status, run_id, detail, audit_id, at = row
    return TriggerKey(
        key, entry, TriggerResult(TriggerStatus(status), run_id, detail, audit_id), from_micros(at)
    )


def is_busy(control: EntryControl | None, guard: Guard, now_us: int) -> bool:
    """Whether the entry counts as busy under `guard`: a mark younger than its timeout."""
    busy = control.busy if control is not None else None
    return busy is not None and now_us - to_micros(busy.since) < guard.timeout * 1_000_000


# --- inside StateStore.commit's transaction ---------------------------------------------------

# Whether the message being deleted (ack, dead letter) holds its entry's busy mark: a column of
# the DELETE's RETURNING, so that a settling step without a control pays no statement for it.
HOLDS_BUSY = "EXISTS (SELECT 1 FROM entry_control WHERE busy_run = message.id)"
_MARKED_SINCE = (
    "SELECT entry, busy_since_us FROM entry_control WHERE busy_run IS NOT NULL "
    "AND entry IN (SELECT value FROM json_each(?))"
)
_MARK = (
    "INSERT INTO entry_control (entry, busy_run, busy_since_us) VALUES (?, ?, ?) "
    "ON CONFLICT (entry) DO UPDATE SET busy_run = excluded.busy_run, "
    "busy_since_us = excluded.busy_since_us"
)


def failing(
    db: sqlite3.Connection, writes: Sequence[StateWrite], messages: Sequence[Outgoing], now_us: int
) -> set[str]:
    """The entries whose write (or messages without one) fail their pause or guard."""
    guarded = list(filter(_GUARDED, writes))  # in C: a commit without guards pays next to nothing
    paused = dict(map(_control, db.execute(_PAUSED)))  # an index of the paused entries only
    if not guarded and not paused:
        return set()
    failed: set[str] = set()
    hit = paused.keys() & set(map(_ENTRY, messages)) if paused else ()  # in C
    for m in messages if hit else ():
        pause = paused[m.entry].pause if m.entry in paused else None
        due = m.due if m.due is not None else m.slot
        if pause is not None and due is not None and pause.covers(due):
            failed.add(m.entry)
    if guarded:
        entries = json.dumps([w.state.entry for w in guarded])
        since = dict(db.execute(_MARKED_SINCE, (entries,)).fetchall())
        for write in guarded:
            assert write.guard is not None
            marked = since.get(write.state.entry)
            busy = marked is not None and now_us - marked < write.guard.timeout * 1_000_000
            if busy != write.busy:
                failed.add(write.state.entry)
    return failed


def applied(
    db: sqlite3.Connection,
    writes: Sequence[StateWrite],
    messages: Sequence[Outgoing],
    rejected: set[str],
    now_us: int,
) -> list[MissedSlots]:
    """The applied guarded writes: the last run of each marks its entry busy (an older mark
    replaced); a hold replaces the held run. The held runs replaced, to record missed."""
    chosen = list(filter(_GUARDED, writes))
    if not chosen:
        return []
    chosen = [w for w in chosen if w.state.entry not in rejected]
    last = {m.entry: m.id for m in messages}
    marks = [(w.state.entry, last[w.state.entry], now_us) for w in chosen if w.state.entry in last]
    db.executemany(_MARK, marks)
    replaced = []
    for write in chosen:
        if write.hold is not None:
            entry = write.state.entry
            control = controls_of(db, [entry]).get(entry, NO_CONTROL)
            kept, gone = replaced_held(entry, control.held, write.hold)
            if gone is not None:
                replaced.append(gone)
            put(db, entry, control._replace(held=kept))
    return replaced


# --- runs published without a lease, and a final settling step --------------------------------


def publish(db: sqlite3.Connection, message: Outgoing, now: float, history: bool) -> None:
    """Enqueue a run published without a lease, with its record (node "", epoch 0) and the
    audit id of a manual or backfill run."""
    queue = message.destination
    row = (message.id, queue.queue, _priority(queue.priority), message.body, now)
    if not history:
        db.execute(
            "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)", row
        )
        return
    slot = message.slot or from_micros(micros(now))
    due = message.due or slot
    record = (message.entry, to_micros(slot), to_micros(due), message.kind, micros(now), "", 0)
    db.execute(PUBLISHED, (*row, *record))
    if message.audit is not None:
        db.execute(
            "INSERT OR IGNORE INTO run_audit (id, audit) VALUES (?, ?)", (message.id, message.audit)
        )


def run_final(db: sqlite3.Connection, run_id: str | bytes, now: float, history: bool) -> None:
    """Run `run_id` reached a final outcome: clear the busy mark it holds and publish the
    entry's held run (or drop it as missed, reason paused, when a pause covers now)."""
    row = db.execute(f"SELECT {_CONTROL} FROM entry_control WHERE busy_run = ?", (run_id,))
    found = row.fetchone()
    if found is None:
        return
    entry, control = _control(found)
    at, held, pause = from_micros(micros(now)), control.held, control.pause
    control = control._replace(busy=None, held=None)
    if held is not None and dropped_by_pause(held, pause, at):
        if history:
            slot = to_micros(held.slot)
            db.execute(_MISSED_HELD, (entry, PAUSED, slot, slot, micros(now)))
    elif held is not None:
        queue = BeatdQueue(held.destination_queue, held.priority)
        kind = RunKind(held.kind)
        outgoing = Outgoing(
            entry, held.run_id, queue, held.body, held.slot, held.due, kind, held.audit
        )
        publish(db, outgoing, now, history)
        control = control._replace(busy=Busy(held.run_id, at))
    put(db, entry, control)


# --- the Controls role ------------------------------------------------------------------------


class SQLiteControls(SQLiteFile):
    """The `Controls` role on the controls' tables, each write one transaction."""

    def _run_final(self, db: sqlite3.Connection, run_id: str | bytes) -> None:
        run_final(db, run_id, self._now(), self.history)

    def _holds_controls(self) -> bool:
        """Whether the file has the controls' tables (a read-only file of format 1 has not)."""
        return not self.read_only or bool(
            self._run(
                lambda db: db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'entry_control'"
                ).fetchone(),
                write=False,
            )
        )

    def load_controls(self, entries: Sequence[str] | None = None) -> dict[str, EntryControl]:
        if not self._holds_controls():
            return {}
        if entries is not None:
            return self._run(lambda db: controls_of(db, entries), write=False)
        rows = self._run(
            lambda db: db.execute(f"SELECT {_CONTROL} FROM entry_control").fetchall(),
            write=False,
        )
        return dict(map(_control, rows))

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        def work(db: sqlite3.Connection) -> list[AuditRecord]:
            at = from_micros(micros(self._now()))
            end = at + until if isinstance(until, timedelta) else until
            pause, held = Pause(at, end, reason, by), controls_of(db, entries)
            records = []
            for entry in entries:
                control = held.get(entry, NO_CONTROL)
                lifted = lift(control, at, horizon(db, entry))
                put(db, entry, control._replace(pause=pause, lifted=lifted))
                before, after = pause_json(control.pause), pause_json(pause)
                records.append(
                    AuditRecord(new_audit_id(), at, "pause", entry, by, {}, before, after)
                )
            db.executemany(
                f"INSERT INTO audit ({_AUDIT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                map(_audit_row, records),
            )
            return records

        return self._run(work)

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        def work(db: sqlite3.Connection) -> list[AuditRecord]:
            at = from_micros(micros(self._now()))
            records = []
            for entry, control in controls_of(db, entries).items():
                if control.pause is None:
                    continue
                lifted = lift(control, at, horizon(db, entry))
                put(db, entry, control._replace(pause=None, lifted=lifted))
                before, after = pause_json(control.pause), pause_json(None)
                records.append(
                    AuditRecord(new_audit_id(), at, "resume", entry, by, {}, before, after)
                )
            records.sort(key=lambda r: list(entries).index(r.entry or ""))
            db.executemany(
                f"INSERT INTO audit ({_AUDIT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                map(_audit_row, records),
            )
            return records

        return self._run(work)

    def trigger(self, request: Trigger) -> TriggerResult:
        if request.celery:
            raise BackendError(
                f"entry {request.entry} publishes to a CeleryQueue, which needs a Redis broker "
                "(Redis transport only); SQLite stores beatd's own messages only"
            )

        def work(db: sqlite3.Connection) -> TriggerResult:
            now = self._now()
            found = _remembered(db, f"request:{request.request_id}", request.entry, micros(now))
            if found is not None:
                return found
            result = _decide(db, request, micros(now))
            if result.status in KEEPS_KEY:
                result = self._carry_out(db, request, result, now)
            _remember(db, request, result, micros(now))
            return result

        return self._run(work)

    def _carry_out(
        self, db: sqlite3.Connection, request: Trigger, result: TriggerResult, now: float
    ) -> TriggerResult:
        """Publish or hold the triggered run, with its audit record."""
        at, entry = from_micros(micros(now)), request.entry
        detail = trigger_detail(request, result)
        record = AuditRecord(new_audit_id(), at, "trigger", entry, request.by, detail)
        _store_audit(db, record)
        control = controls_of(db, [entry]).get(entry, NO_CONTROL)
        if result.status is TriggerStatus.HELD:
            kind = RunKind.MANUAL.value
            held = HeldRun(request.run_id, at, at, kind, request.queue, request.body, record.id)
            held, replaced = replaced_held(entry, control.held, held)
            put(db, entry, control._replace(held=held))
            if replaced is not None and self.history:
                slot = to_micros(replaced.first)
                db.execute(_MISSED_HELD, (entry, replaced.reason, slot, slot, micros(now)))
        else:
            queue = BeatdQueue(request.queue, request.priority)
            outgoing = Outgoing(
                entry, request.run_id, queue, request.body, at, at, RunKind.MANUAL, record.id
            )
            publish(db, outgoing, now, self.history)
            if request.guard is not None:
                put(db, entry, control._replace(busy=Busy(request.run_id, at)))
        return result._replace(audit_id=record.id)

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        if not self.history:
            raise backfill_needs_history(entry, self.url)
        for message in runs:
            if not isinstance(message.destination, BeatdQueue):
                raise BackendError(
                    f"entry {entry} publishes to a {type(message.destination).__name__}; "
                    "SQLite stores beatd's own messages only"
                )

        def work(db: sqlite3.Connection) -> tuple[list[str], AuditRecord]:
            trimmed = db.execute("SELECT slot_us FROM run_trimmed WHERE entry = ?", (entry,))
            row = trimmed.fetchone()
            if row is not None and first_trimmed(runs, from_micros(row[0])):
                raise HistoryTrimmed(entry, from_micros(row[0]))  # rolled back: nothing written
            now, audit_id = self._now(), new_audit_id()
            fold(db)  # the logged and the queued runs' records into `run`, where they are looked up
            db.execute(MOVE_QUEUED)
            published: list[str] = []
            for message in runs:
                held = db.execute("SELECT 1 FROM run WHERE id = ?", (message.id,)).fetchone()
                if held is None and message.id not in published:
                    publish(db, message._replace(audit=audit_id), now, True)
                    published.append(message.id)
            _unhold(db, entry, published)
            done = backfill_detail(detail, len(runs), len(published))
            record = AuditRecord(audit_id, from_micros(micros(now)), "backfill", entry, by, done)
            _store_audit(db, record)
            return published, record

        return self._run(work)

    def record_audit(self, record: AuditRecord) -> None:
        self._run(lambda db: _store_audit(db, record))

    def audit(
        self,
        entry: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        controls_only: bool = False,
    ) -> list[AuditRecord]:
        if not self._holds_controls():
            return []
        # One entry's by its (entry, at_us, id) index, and those since a moment by its range of
        # the (at_us, id) index: SQLite's planner reads `(?1 IS NULL OR entry = ?1)` as any
        # entry and `(?2 IS NULL OR at_us >= ?2)` as any time, and walks the whole log (the
        # leader's read of new control records every 5 s: 2 s beside 1,000,000 entry changes).
        chosen = "" if entry is None else "entry = ?1 AND "
        after = "" if since is None else "at_us >= ?2 AND "
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AUDIT} FROM audit WHERE {chosen}{after}"
                f"(?4 = 0 OR substr(action, 1, {len(ENTRY_CHANGE_PREFIX)}) != ?5) "
                "ORDER BY at_us DESC, id DESC LIMIT ?3",
                (entry, _us(since), max(limit, 0), controls_only, ENTRY_CHANGE_PREFIX),
            ).fetchall(),
            write=False,
        )
        return [_audit_record(row) for row in rows]

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        def work(db: sqlite3.Connection) -> int:
            now_us = micros(self._now())
            cutoff = now_us - max_age // timedelta(microseconds=1)
            gone = db.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_us < ? "
                "ORDER BY at_us, id LIMIT ?)",
                (cutoff, limit),
            ).rowcount
            return (
                gone
                + db.execute(
                    "DELETE FROM trigger_key WHERE rowid IN (SELECT rowid FROM trigger_key "
                    "WHERE at_us <= ? LIMIT ?)",
                    (now_us - _TTL_US, limit - gone),
                ).rowcount
            )

        return self._run(work)

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        def work(db: sqlite3.Connection) -> int:
            added = 0
            for entry, control in controls.items():
                if control != NO_CONTROL:
                    row = _control_row(entry, control)
                    added += db.execute(_PUT.replace("OR REPLACE", "OR IGNORE"), row).rowcount
            for record in audit:
                added += db.execute(
                    f"INSERT OR IGNORE INTO audit ({_AUDIT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _audit_row(record),
                ).rowcount
            for key in keys:
                added += _store_key(db, key, "OR IGNORE")
            return added

        return self._run(work)

    def trigger_keys(self) -> list[TriggerKey]:
        if not self._holds_controls():
            return []
        rows = self._run(
            lambda db: db.execute(f"SELECT {_KEY} FROM trigger_key ORDER BY rowid").fetchall(),
            write=False,
        )
        return [_key(row) for row in rows]


# --- trigger's steps --------------------------------------------------------------------------


def _store_audit(db: sqlite3.Connection, record: AuditRecord) -> None:
    db.execute(f"INSERT INTO audit ({_AUDIT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _audit_row(record))


def _store_key(db: sqlite3.Connection, key: TriggerKey, conflict: str) -> int:
    result = key.result
    row = (
        key.key,
        key.entry,
        result.status.value,
        result.run_id,
        result.detail,
        result.audit_id,
        to_micros(key.at),
    )
    sql = f"INSERT {conflict} INTO trigger_key ({_KEY}) VALUES (?, ?, ?, ?, ?, ?, ?)"
    return int(db.execute(sql, row).rowcount)


def _remembered(db: sqlite3.Connection, key: str, entry: str, now_us: int) -> TriggerResult | None:
    row = db.execute(
        f"SELECT {_KEY} FROM trigger_key WHERE key = ? AND entry = ? AND at_us > ?",
        (key, entry, now_us - _TTL_US),
    ).fetchone()
    return None if row is None else _key(row).result


def _remember(db: sqlite3.Connection, request: Trigger, result: TriggerResult, now_us: int) -> None:
    at, entry = from_micros(now_us), request.entry
    _store_key(db, TriggerKey(f"request:{request.request_id}", entry, result, at), "OR REPLACE")
    if request.idempotency_key is not None and result.status in KEEPS_KEY:
        key = TriggerKey(f"key:{request.idempotency_key}", entry, result, at)
        _store_key(db, key, "OR REPLACE")


def _decide(db: sqlite3.Connection, request: Trigger, now_us: int) -> TriggerResult:
    """What becomes of `request` (an audit id is given to a published or held run later)."""
    key, entry, rid = request.idempotency_key, request.entry, request.run_id
    used = None if key is None else _remembered(db, f"key:{key}", entry, now_us)
    if used is not None:
        return TriggerResult(TriggerStatus.DUPLICATE, used.run_id, "", used.audit_id)
    control = controls_of(db, [entry]).get(entry, NO_CONTROL)
    at = from_micros(now_us)
    if not request.force and control.pause is not None and control.pause.covers(at):
        return TriggerResult(TriggerStatus.REFUSED_PAUSED, rid, control.pause.describe())
    guard = request.guard
    if request.force or guard is None or not is_busy(control, guard, now_us):
        return published_trigger(request, control)
    if guard.overlap is Overlap.BUFFER_ONE:
        return held_trigger(control, rid)
    assert control.busy is not None
    return TriggerResult(TriggerStatus.REFUSED_BUSY, rid, control.busy.run_id)
