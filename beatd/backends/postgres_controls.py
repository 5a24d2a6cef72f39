"""PostgreSQL's `Controls` role (beatd.backends.base): pauses, manual triggers, backfills, the
audit log and the remembered trigger keys, each write one transaction on the database's clock.
The tables (`control`, `audit`, `trigger_key`) are format 2's (postgres_link.py); what the
commit and the settling steps do with the controls is postgres_gates.py.

A trigger, a pause or a resume takes an advisory lock per entry (as a guarded commit does) and
its control row, so two writes of one entry's control take turns even before it has a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from beatd.backends.base import (
    BeatdQueue,
    HistoryTrimmed,
    Outgoing,
    backfill_needs_history,
    first_trimmed,
    from_micros,
    to_micros,
)
from beatd.backends.postgres_gates import (
    CONTROL_COLUMNS,
    CONTROL_MARKS,
    control_row,
    control_value,
    horizon,
    lock_entries,
    missed_unleased,
    publish_unleased,
    read_controls,
    run_ended,
    store_control,
)
from beatd.backends.postgres_link import NOW_US, PostgresLink
from beatd.controls import (
    ENTRY_CHANGE_PREFIX,
    IDEMPOTENCY_KEY_TTL,
    AuditRecord,
    Busy,
    EntryControl,
    HeldRun,
    Overlap,
    Pause,
    Trigger,
    TriggerKey,
    TriggerResult,
    TriggerStatus,
    backfill_detail,
    held_trigger,
    lift,
    new_audit_id,
    pause_json,
    published_trigger,
    replaced_held,
    trigger_detail,
)
from beatd.errors import BackendError
from beatd.history import RunKind

Db = psycopg.Connection[Any]
AUDIT_COLUMNS = "id, at_us, action, entry, by_, detail, before, after"
KEY_COLUMNS = "key, entry, status, run_id, detail, audit_id, at_us"
TTL_US = int(IDEMPOTENCY_KEY_TTL.total_seconds() * 1_000_000)
# The trigger results that use up an idempotency key (a refused trigger leaves it free).
KEEPS_KEY = frozenset({TriggerStatus.PUBLISHED, TriggerStatus.HELD})


def _now(db: Db) -> int:
    row = db.execute(f"SELECT {NOW_US}").fetchone()
    assert row is not None
    return int(row[0])


def _json(value: Mapping[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(dict(value))


def audit_row(a: AuditRecord) -> tuple[Any, ...]:
    return (
        a.id,
        to_micros(a.at),
        a.action,
        a.entry,
        a.by,
        Jsonb(dict(a.detail)),
        _json(a.before),
        _json(a.after),
    )


def audit_value(row: Sequence[Any]) -> AuditRecord:
    rid, at, action, entry, by, detail, before, after = row
    return AuditRecord(rid, from_micros(at), action, entry, by, detail, before, after)


def key_row(k: TriggerKey) -> tuple[Any, ...]:
    r = k.result
    return (k.key, k.entry, r.status.value, r.run_id, r.detail, r.audit_id, to_micros(k.at))


def key_value(row: Sequence[Any]) -> TriggerKey:
    key, entry, status, run_id, detail, audit_id, at = row
    return TriggerKey(
        key, entry, TriggerResult(TriggerStatus(status), run_id, detail, audit_id), from_micros(at)
    )


def refuse_trimmed(db: Db, schema: str, entry: str, runs: Sequence[Outgoing]) -> None:
    """HistoryTrimmed (the step rolled back) when a run's slot is at or before the entry's
    trimmed bound (`RunHistory.trimmed_up_to`)."""
    sql = f"SELECT slot_us FROM {schema}.run_trimmed WHERE entry = %s"
    row = db.execute(sql, (entry,)).fetchone()
    if row is not None and first_trimmed(runs, from_micros(int(row[0]))):
        raise HistoryTrimmed(entry, from_micros(int(row[0])))


class PostgresControls(PostgresLink):
    """The tables control, audit and trigger_key."""

    def _run_ended(self, db: Db, run_id: str) -> None:
        run_ended(db, self.schema, self.channel, run_id, self.history)

    def _audit(self, db: Db, record: AuditRecord) -> AuditRecord:
        db.execute(
            f"INSERT INTO {self.schema}.audit ({AUDIT_COLUMNS}) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            audit_row(record),
        )
        return record

    def load_controls(self, entries: Sequence[str] | None = None) -> dict[str, EntryControl]:
        where, params = ("", ()) if entries is None else ("WHERE entry = ANY(%s)", (list(entries),))
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {CONTROL_COLUMNS} FROM {self.schema}.control {where}", params
            ).fetchall(),
            write=False,
        )
        return dict(control_value(row) for row in rows)

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        def work(db: Db) -> list[AuditRecord]:
            at = from_micros(_now(db))
            end = at + until if isinstance(until, timedelta) else until
            pause = Pause(at, end, reason, by)
            held = self._locked(db, entries)
            records = []
            for entry in entries:
                control = held.get(entry, EntryControl())
                lifted = lift(control, at, horizon(db, self.schema, entry))
                held[entry] = control._replace(pause=pause, lifted=lifted)
                store_control(db, self.schema, entry, held[entry])
                before, after = pause_json(control.pause), pause_json(pause)
                record = AuditRecord(new_audit_id(), at, "pause", entry, by, {}, before, after)
                records.append(self._audit(db, record))
            return records

        return self._run(work)

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        def work(db: Db) -> list[AuditRecord]:
            at = from_micros(_now(db))
            held = self._locked(db, entries)
            records = []
            for entry in entries:
                control = held.get(entry, EntryControl())
                if control.pause is None:
                    continue
                lifted = lift(control, at, horizon(db, self.schema, entry))
                held[entry] = control._replace(pause=None, lifted=lifted)
                store_control(db, self.schema, entry, held[entry])
                before, after = pause_json(control.pause), pause_json(None)
                record = AuditRecord(new_audit_id(), at, "resume", entry, by, {}, before, after)
                records.append(self._audit(db, record))
            return records

        return self._run(work)

    def _locked(self, db: Db, entries: Sequence[str]) -> dict[str, EntryControl]:
        """The controls of `entries`, each entry locked for this transaction (its row, and an
        advisory lock for an entry without one yet), in a stable order."""
        lock_entries(db, self.schema, sorted(set(entries)))
        return read_controls(db, self.schema, sorted(set(entries)), lock=True)

    # --- trigger ------------------------------------------------------------------------------

    def trigger(self, request: Trigger) -> TriggerResult:
        if request.celery:
            raise BackendError(
                f"entry {request.entry} publishes to a CeleryQueue, which needs a Redis broker "
                "(Redis transport only); PostgreSQL stores beatd's own messages only"
            )

        def work(db: Db) -> TriggerResult:
            now_us = _now(db)
            control = self._locked(db, [request.entry]).get(request.entry, EntryControl())
            request_key = f"request:{request.request_id}"
            result = self._remembered(db, request_key, request.entry, now_us)
            if result is not None:
                return result
            result = self._decide(db, request, control, now_us)
            if result.status in KEEPS_KEY:
                result = self._carry_out(db, request, result, control, now_us)
            self._remember(db, request_key, request.entry, result, now_us)
            if request.idempotency_key is not None and result.status in KEEPS_KEY:
                key = f"key:{request.idempotency_key}"
                self._remember(db, key, request.entry, result, now_us)
            return result

        return self._run(work)

    def _remembered(self, db: Db, key: str, entry: str, now_us: int) -> TriggerResult | None:
        row = db.execute(
            f"SELECT {KEY_COLUMNS} FROM {self.schema}.trigger_key "
            "WHERE key = %s AND entry = %s AND at_us > %s",
            (key, entry, now_us - TTL_US),
        ).fetchone()
        return None if row is None else key_value(row).result

    def _remember(self, db: Db, key: str, entry: str, result: TriggerResult, now_us: int) -> None:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in KEY_COLUMNS.split(", ")[2:])
        db.execute(
            f"INSERT INTO {self.schema}.trigger_key ({KEY_COLUMNS}) VALUES "
            f"(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key, entry) DO UPDATE SET {updates}",
            key_row(TriggerKey(key, entry, result, from_micros(now_us))),
        )

    def _decide(
        self, db: Db, request: Trigger, control: EntryControl, now_us: int
    ) -> TriggerResult:
        """What becomes of `request` (an audit id is given to a published or held run later)."""
        key, rid, now = request.idempotency_key, request.run_id, from_micros(now_us)
        used = None if key is None else self._remembered(db, f"key:{key}", request.entry, now_us)
        if used is not None:
            return TriggerResult(TriggerStatus.DUPLICATE, used.run_id, "", used.audit_id)
        if not request.force and control.pause is not None and control.pause.covers(now):
            return TriggerResult(TriggerStatus.REFUSED_PAUSED, rid, control.pause.describe())
        guard, busy = request.guard, control.busy
        if (
            request.force
            or guard is None
            or busy is None
            or now - busy.since >= timedelta(seconds=guard.timeout)
        ):
            return published_trigger(request, control)
        if guard.overlap is Overlap.BUFFER_ONE:
            return held_trigger(control, rid)
        return TriggerResult(TriggerStatus.REFUSED_BUSY, rid, busy.run_id)

    def _carry_out(
        self,
        db: Db,
        request: Trigger,
        result: TriggerResult,
        control: EntryControl,
        now_us: int,
    ) -> TriggerResult:
        """Publish or hold the triggered run, with its audit record."""
        audit_id, entry, at = new_audit_id(), request.entry, from_micros(now_us)
        detail = trigger_detail(request, result)
        self._audit(db, AuditRecord(audit_id, at, "trigger", entry, request.by, detail))
        if result.status is TriggerStatus.HELD:
            kind = RunKind.MANUAL
            hold = HeldRun(
                request.run_id,
                at,
                at,
                kind,
                request.queue,
                request.body,
                audit_id,
                request.celery,
                request.priority,
            )
            hold, replaced = replaced_held(entry, control.held, hold)
            store_control(db, self.schema, entry, control._replace(held=hold))
            if replaced is not None and self.history:
                missed_unleased(db, self.schema, replaced, now_us)
        else:
            queue = BeatdQueue(request.queue, request.priority)
            outgoing = Outgoing(
                entry, request.run_id, queue, request.body, at, at, RunKind.MANUAL, audit_id
            )
            publish_unleased(db, self.schema, self.channel, [outgoing], now_us, self.history)
            if request.guard is not None:
                busy = Busy(request.run_id, at)
                store_control(db, self.schema, entry, control._replace(busy=busy))
        return result._replace(audit_id=audit_id)

    # --- backfill, the audit log, copies --------------------------------------------------------

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        if not self.history:
            raise backfill_needs_history(entry, self.url)
        for message in runs:
            if type(message.destination) is not BeatdQueue:
                raise BackendError(
                    f"entry {entry} publishes to a {type(message.destination).__name__}; "
                    "PostgreSQL stores beatd's own messages only"
                )

        def work(db: Db) -> tuple[list[str], AuditRecord]:
            # one backfill of an entry at a time
            control = self._locked(db, [entry]).get(entry, EntryControl())
            refuse_trimmed(db, self.schema, entry, runs)
            now_us, audit_id = _now(db), new_audit_id()
            ids = list(dict.fromkeys(m.id for m in runs))
            held = {
                rid
                for (rid,) in db.execute(
                    f"SELECT id FROM {self.schema}.run WHERE id = ANY(%s)", (ids,)
                )
            }
            fresh = {m.id: m._replace(audit=audit_id) for m in runs if m.id not in held}
            publish_unleased(db, self.schema, self.channel, list(fresh.values()), now_us, True)
            if control.held is not None and control.held.run_id in fresh:  # not to publish twice
                store_control(db, self.schema, entry, control._replace(held=None))
            done = backfill_detail(detail, len(runs), len(fresh))
            audit = AuditRecord(audit_id, from_micros(now_us), "backfill", entry, by, done)
            self._audit(db, audit)
            return list(fresh), audit

        return self._run(work)

    def record_audit(self, record: AuditRecord) -> None:
        self._run(lambda db: self._audit(db, record))

    def audit(
        self,
        entry: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        controls_only: bool = False,
    ) -> list[AuditRecord]:
        where, params = _audit_where(entry, since, controls_only)
        sql = (
            f"SELECT {AUDIT_COLUMNS} FROM {self.schema}.audit WHERE {where} "
            "ORDER BY at_us DESC, id DESC LIMIT %s"
        )
        rows = self._run(
            lambda db: db.execute(sql, (*params, max(limit, 0))).fetchall(), write=False
        )
        return [audit_value(row) for row in rows]

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        max_age_us = int(max_age.total_seconds() * 1_000_000)

        def work(db: Db) -> int:
            now_us = _now(db)
            gone = db.execute(
                f"DELETE FROM {self.schema}.audit WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {self.schema}.audit WHERE at_us < %s "
                "ORDER BY at_us, id LIMIT %s))",
                (now_us - max_age_us, limit),
            ).rowcount
            keys = db.execute(
                f"DELETE FROM {self.schema}.trigger_key WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {self.schema}.trigger_key WHERE at_us <= %s "
                "ORDER BY at_us LIMIT %s))",
                (now_us - TTL_US, limit - gone),
            ).rowcount
            return gone + keys

        return self._run(work)

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        def work(db: Db) -> int:
            added = 0
            for entry, control in controls.items():
                if control == EntryControl():
                    continue
                added += db.execute(
                    f"INSERT INTO {self.schema}.control ({CONTROL_COLUMNS}) "
                    f"VALUES ({CONTROL_MARKS}) ON CONFLICT (entry) DO NOTHING",
                    control_row(entry, control),
                ).rowcount
            for record in audit:
                added += db.execute(
                    f"INSERT INTO {self.schema}.audit ({AUDIT_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    audit_row(record),
                ).rowcount
            for key in keys:
                added += db.execute(
                    f"INSERT INTO {self.schema}.trigger_key ({KEY_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key, entry) DO NOTHING",
                    key_row(key),
                ).rowcount
            return added

        return self._run(work)

    def trigger_keys(self) -> list[TriggerKey]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {KEY_COLUMNS} FROM {self.schema}.trigger_key ORDER BY at_us, key, entry"
            ).fetchall(),
            write=False,
        )
        return [key_value(row) for row in rows]


def _audit_where(
    entry: str | None, since: datetime | None, controls_only: bool
) -> tuple[str, list[Any]]:
    """An audit read's condition and its parameters."""
    where, params = ["true"], list[Any]()
    if controls_only:  # the runtime entries' changes left out
        where.append(f"action NOT LIKE '{ENTRY_CHANGE_PREFIX}%%'")
    if entry is not None:
        where.append("entry = %s")
        params.append(entry)
    if since is not None:
        where.append("at_us >= %s")
        params.append(to_micros(since))
    return " AND ".join(where), params
