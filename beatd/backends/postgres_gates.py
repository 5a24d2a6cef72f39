"""PostgreSQL's operator controls inside the scheduler's and the workers' transactions: the
pause and guard checks of `commit`, the busy marks and held runs it writes, and what a final
outcome does to the busy mark its run holds (`StateStore.commit` and `WorkQueue` in
beatd/backends/base.py). The table `control` (format 2, postgres_link.py) holds one row per
entry that has a control; `PostgresControls` (postgres_controls.py) is the role itself.

Cost when nothing is controlled: the commit reads `EXISTS (SELECT 1 FROM control)` in its lease
check's statement and, finding none and no guarded write, does nothing more; a settling step
probes the partial index `control_busy` in its own statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite, from_micros, to_micros
from beatd.backends.postgres_link import NOW_US
from beatd.backends.postgres_queue import insert_messages
from beatd.backends.postgres_records import published_records
from beatd.controls import (
    Busy,
    EntryControl,
    HeldRun,
    Pause,
    dropped_by_pause,
    lifted_from_json,
    lifted_json,
    replaced_held,
)
from beatd.history import MissedSlots, RunKind

Db = psycopg.Connection[Any]
NO_LEASE = Lease("", "", 0)  # what a run published without a lease is recorded with
PAUSED = "paused"  # the missed reason of a held run a pause dropped
CONTROL_COLUMNS = (
    "entry, pause_at_us, pause_until_us, pause_reason, pause_by, busy_run, busy_since_us, "
    "held_run, held_slot_us, held_due_us, held_kind, held_queue, held_body, held_audit, "
    "held_celery, held_priority, lifted"
)
CONTROL_MARKS = ", ".join(["%s"] * len(CONTROL_COLUMNS.split(", ")))


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _moment(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def control_value(row: Sequence[Any]) -> tuple[str, EntryControl]:
    """A row of CONTROL_COLUMNS as its entry and control."""
    entry, p_at, p_until, reason, by, busy_run, busy_since = row[:7]
    h_run, h_slot, h_due, h_kind, h_queue, h_body, h_audit, h_celery, h_priority = row[7:16]
    pause = None if p_at is None else Pause(from_micros(p_at), _moment(p_until), reason, by)
    busy = None if busy_run is None else Busy(busy_run, from_micros(busy_since))
    held = None
    if h_run is not None:
        slot, due = from_micros(h_slot), from_micros(h_due)
        kind = RunKind(h_kind)
        held = HeldRun(h_run, slot, due, kind, h_queue, h_body, h_audit, h_celery, h_priority)
    return entry, EntryControl(pause, busy, held, lifted_from_json(row[16]))


def control_row(entry: str, control: EntryControl) -> tuple[Any, ...]:
    pause, busy, held, lifted = control
    return (
        entry,
        *(
            (None,) * 4
            if pause is None
            else (to_micros(pause.at), _micros(pause.until), pause.reason, pause.by)
        ),
        *((None, None) if busy is None else (busy.run_id, to_micros(busy.since))),
        *(
            (None,) * 9
            if held is None
            else (
                held.run_id,
                to_micros(held.slot),
                to_micros(held.due),
                str(held.kind),
                held.destination_queue,
                held.body,
                held.audit,
                held.celery,
                held.priority,
            )
        ),
        lifted_json(lifted) if lifted else None,
    )


def horizon(db: Db, schema: str, entry: str) -> datetime | None:
    """The entry's persisted last slot, if it has one."""
    row = db.execute(
        f"SELECT last_slot_us FROM {schema}.entry_state WHERE entry = %s", (entry,)
    ).fetchone()
    return None if row is None else from_micros(row[0])


def lock_entries(db: Db, schema: str, entries: Sequence[str]) -> None:
    """Lock `entries` (sorted) for this transaction by an advisory lock each, so the writes
    that may create an entry's control row (a guarded commit, a trigger, a pause) take turns."""
    db.execute(
        "SELECT pg_advisory_xact_lock(hashtext(%s || e)) FROM unnest(%s::text[]) AS e",
        (f"beatd-control:{schema}:", list(entries)),
    )


def read_controls(db: Db, schema: str, entries: Sequence[str], lock: bool) -> dict[str, Any]:
    """The controls of `entries` that have one, their rows locked `FOR UPDATE` if `lock`."""
    rows = db.execute(
        f"SELECT {CONTROL_COLUMNS} FROM {schema}.control WHERE entry = ANY(%s)"
        + (" FOR UPDATE" if lock else ""),
        (list(entries),),
    ).fetchall()
    return dict(control_value(row) for row in rows)


def store_control(db: Db, schema: str, entry: str, control: EntryControl) -> None:
    """Write the entry's control in place (no control: its row goes)."""
    if control == EntryControl():
        db.execute(f"DELETE FROM {schema}.control WHERE entry = %s", (entry,))
        return
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in CONTROL_COLUMNS.split(", ")[1:])
    db.execute(
        f"INSERT INTO {schema}.control ({CONTROL_COLUMNS}) VALUES ({CONTROL_MARKS}) "
        f"ON CONFLICT (entry) DO UPDATE SET {updates}",
        control_row(entry, control),
    )


def _due(message: Outgoing) -> datetime | None:
    return message.due if message.due is not None else message.slot


def _passes(
    control: EntryControl, write: StateWrite | None, messages: Sequence[Outgoing], now: datetime
) -> bool:
    """Whether an entry's write (None: messages without one) passes its pause and guard."""
    pause = control.pause
    dues = map(_due, messages)
    if pause is not None and any(d is not None and pause.covers(d) for d in dues):
        return False
    if write is None or write.guard is None:
        return True
    busy = control.busy
    fresh = busy is not None and now - busy.since < timedelta(seconds=write.guard.timeout)
    return fresh == write.busy


def gate(
    db: Db,
    schema: str,
    writes: Sequence[StateWrite],
    messages: Sequence[Outgoing],
    now_us: int,
) -> tuple[set[str], dict[str, EntryControl]]:
    """The commit's checks: the entries whose write (or messages) a pause or guard fails, and
    the controls read (locked) of the entries written, for `mark`."""
    by_entry: dict[str, list[Outgoing]] = {}
    for message in messages:
        by_entry.setdefault(message.entry, []).append(message)
    entries = {w.state.entry for w in writes} | set(by_entry)
    guarded = sorted({w.state.entry for w in writes if w.guard is not None})
    if guarded:  # an entry without a control row yet: as a trigger locks it
        lock_entries(db, schema, guarded)
    held = read_controls(db, schema, sorted(entries), lock=True)
    now = from_micros(now_us)
    writes_of = {w.state.entry: w for w in writes}
    failed = {
        entry
        for entry in entries
        if not _passes(
            held.get(entry, EntryControl()), writes_of.get(entry), by_entry.get(entry, ()), now
        )
    }
    return failed, held


def mark(
    db: Db,
    schema: str,
    writes: Sequence[StateWrite],
    applied: set[str],
    messages: Sequence[Outgoing],
    held: dict[str, EntryControl],
    now_us: int,
) -> list[MissedSlots]:
    """The applied guarded writes: the busy mark of their last run, and their held run. The
    held runs a hold replaced, to record missed."""
    last = {m.entry: m.id for m in messages}
    replaced = []
    for write in writes:
        entry = write.state.entry
        if write.guard is None or entry not in applied:
            continue
        control = held.get(entry, EntryControl())
        if entry in last:
            control = control._replace(busy=Busy(last[entry], from_micros(now_us)))
        if write.hold is not None:
            kept, gone = replaced_held(entry, control.held, write.hold)
            if gone is not None:
                replaced.append(gone)
            control = control._replace(held=kept)
        store_control(db, schema, entry, control)
    return replaced


def publish_unleased(
    db: Db, schema: str, channel: str, messages: Sequence[Outgoing], now_us: int, history: bool
) -> None:
    """Enqueue runs published without a lease, with their records (node "", epoch 0)."""
    if history:
        records = published_records(schema, NO_LEASE, messages, now_us)
        insert_messages(db, schema, channel, messages, with_=records)
    else:
        insert_messages(db, schema, channel, messages)


def run_ended(db: Db, schema: str, channel: str, run_id: str, history: bool) -> None:
    """Run `run_id` reached a final outcome: clear the busy mark it holds and publish the
    entry's held run (or drop it as missed, reason paused, when a pause covers now)."""
    row = db.execute(
        f"SELECT {CONTROL_COLUMNS}, {NOW_US} FROM {schema}.control WHERE busy_run = %s FOR UPDATE",
        (run_id,),
    ).fetchone()
    if row is None:
        return
    entry, control = control_value(row[:-1])
    now_us = int(row[-1])
    now = from_micros(now_us)
    hold, pause = control.held, control.pause
    control = control._replace(busy=None, held=None)
    if hold is not None and dropped_by_pause(hold, pause, now):
        if history:
            missed_unleased(db, schema, MissedSlots(entry, PAUSED, hold.slot, hold.slot, 1), now_us)
    elif hold is not None:
        queue = BeatdQueue(hold.destination_queue, hold.priority)  # PostgreSQL: never Celery
        outgoing = Outgoing(
            entry,
            hold.run_id,
            queue,
            hold.body,
            hold.slot,
            hold.due,
            RunKind(hold.kind),
            hold.audit,
        )
        publish_unleased(db, schema, channel, [outgoing], now_us, history)
        control = control._replace(busy=Busy(hold.run_id, now))
    store_control(db, schema, entry, control)


def missed_unleased(db: Db, schema: str, slots: MissedSlots, now_us: int) -> None:
    """Record a held run's slot missed outside a commit (no node, epoch 0)."""
    db.execute(
        f"INSERT INTO {schema}.missed (entry, reason, first_us, last_us, total, "
        "recorded_us, node, epoch) VALUES (%s, %s, %s, %s, %s, %s, '', 0) "
        "ON CONFLICT DO NOTHING",
        (
            slots.entry,
            slots.reason,
            to_micros(slots.first),
            to_micros(slots.last),
            slots.total,
            now_us,
        ),
    )
