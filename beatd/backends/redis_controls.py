"""Redis's operator controls: the `Controls` role (beatd.backends.base) over the keys
redis_controls_lua describes, and the arguments the commit script checks pauses and guards with.

  beatd:ctl:pause, ctl:busy, ctl:busy-run, ctl:held, ctl:lifted   hashes by entry (busy-run:
    by run id; lifted: the pauses resumed or replaced the entry's horizon has not passed)
  beatd:ctl:audit (hash), ctl:audit-at and ctl:audit:ENTRY (zsets by time)   the audit log
  beatd:ctl:keys (hash), ctl:keys-at (zset)   remembered idempotency keys and request ids

Every write is one script (one atomic step, Redis's clock). A commit whose writes have no guard
pays one HLEN of the pause hash; an ack or dead letter one HGET of the busy-run hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from beatd import celery_protocol
from beatd.backends.base import (
    CeleryQueue,
    HistoryTrimmed,
    Outgoing,
    StateWrite,
    backfill_needs_history,
    from_micros,
    is_celery_run,
    to_micros,
)
from beatd.backends.redis_history import published_p
from beatd.backends.redis_link import BANDS, RedisLink, band
from beatd.controls import (
    AuditRecord,
    Busy,
    EntryControl,
    HeldRun,
    Pause,
    Trigger,
    TriggerKey,
    TriggerResult,
    TriggerStatus,
    is_entry_change,
    new_audit_id,
    pause_json,
)

SEPARATOR = "\x1f"  # between a trigger key and its entry in the keys hash's fields


def _us(moment: datetime) -> str:
    return str(to_micros(moment))


def _pause(text: str) -> Pause:
    at, until, reason, by = json.loads(text)
    return Pause(from_micros(int(at)), from_micros(int(until)) if until else None, reason, by)


def _lifted(text: str | None) -> tuple[Pause, ...]:
    return tuple(_pause(json.dumps(p)) for p in json.loads(text)) if text else ()


def _pause_text(pause: Pause) -> str:
    until = "" if pause.until is None else _us(pause.until)
    return json.dumps([_us(pause.at), until, pause.reason, pause.by])


def _held(text: str) -> HeldRun:
    fields = json.loads(text)
    run_id, slot, due, kind, queue, body, audit = fields[:7]
    slot_at, due_at = from_micros(int(slot)), from_micros(int(due))
    held = HeldRun(run_id, slot_at, due_at, kind, queue, body, audit or None)
    if len(fields) < 10:  # held before a held run kept its celery flag and priority: beatd's
        return held
    celery, priority = fields[7] == "1", fields[8]
    return held._replace(celery=celery, priority=int(priority) if priority else None)


def held_target(prefix: str, held: HeldRun) -> str:
    """The key a final outcome publishes the held run to, as the commit would publish it: a
    Celery list in kombu's layout, or beatd's stream of the run's priority band."""
    if held.celery:
        return celery_protocol.list_name(held.destination_queue, held.priority)
    return f"{prefix}queue:{held.destination_queue}:{BANDS[band(held.priority)]}"


def held_text(prefix: str, held: HeldRun) -> str:
    """A held run as the held hash stores it (`prefix`: the keys', "beatd:")."""
    times = [_us(held.slot), _us(held.due)]
    rest = [str(held.kind), held.destination_queue, held.body, held.audit or ""]
    how = ["1" if held.celery else "0", "" if held.priority is None else str(held.priority)]
    return json.dumps([held.run_id, *times, *rest, *how, held_target(prefix, held)])


def _busy_text(busy: Busy) -> str:
    return json.dumps([busy.run_id, _us(busy.since)])


def _audit(audit_id: str, text: str) -> AuditRecord:
    at, action, entry, by, detail, before, after, form = json.loads(text)
    if form == "pause":
        before = pause_json(None if before is None else _pause(before))
        after = pause_json(None if after is None else _pause(after))
    return AuditRecord(audit_id, from_micros(int(at)), action, entry, by, detail, before, after)


def _audit_rest(record: AuditRecord) -> str:
    """An audit record as stored, without its time (the script puts it first)."""
    detail = dict(record.detail)
    fields = [record.action, record.entry, record.by, detail, record.before, record.after, ""]
    return json.dumps(fields)


def _result(fields: Sequence[str]) -> TriggerResult:
    status, run_id, detail, audit = fields[:4]
    if status == TriggerStatus.REFUSED_PAUSED and detail.startswith("["):
        detail = _pause(detail).describe()
    return TriggerResult(TriggerStatus(status), run_id, detail, audit or None)


def _records(reply: Sequence[str]) -> list[AuditRecord]:
    """A script's (audit id, stored record)... as records."""
    return [_audit(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]


def commit_controls(
    prefix: str, history: bool, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
) -> tuple[str, str, str]:
    """The commit script's controls arguments (redis_scripts.COMMIT): the key prefix, the guarded
    writes, and each message's due time when the history (whose p give them) is off."""
    guards = [
        [w.state.entry, str(int(w.guard.timeout * 1e6)), "1" if w.busy else "0", _hold(prefix, w)]
        for w in writes
        if w.guard is not None
    ]
    dues = "" if history else json.dumps([_due(m) for m in messages])
    return prefix, json.dumps(guards) if guards else "", dues


class RedisControls(RedisLink):
    """The `Controls` role."""

    def load_controls(self, entries: Sequence[str] | None = None) -> dict[str, EntryControl]:
        self._check_format("controls")
        names = ("pause", "busy", "held", "lifted")

        def call() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                for name in names:
                    if entries is None:
                        pipe.hgetall(self._key("ctl", name))
                    else:
                        pipe.hmget(self._key("ctl", name), list(entries) or [""])
                return pipe.execute()

        replies = self._do("load_controls", call)
        if entries is not None:
            replies = [{e: v for e, v in zip(entries, r, strict=False) if v} for r in replies]
        pauses, busy, held, lifted = replies
        out: dict[str, EntryControl] = {}
        for entry in sorted({*pauses, *busy, *held, *lifted}):
            b = busy.get(entry)
            out[entry] = EntryControl(
                _pause(pauses[entry]) if entry in pauses else None,
                Busy(json.loads(b)[0], from_micros(int(json.loads(b)[1]))) if b else None,
                _held(held[entry]) if entry in held else None,
                _lifted(lifted.get(entry)),
            )
        return out

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        if until is None:
            end = ""
        elif isinstance(until, timedelta):
            end = f"+{until // timedelta(microseconds=1)}"
        else:
            end = _us(until)
        pairs = [x for entry in entries for x in (entry, new_audit_id())]
        return _records(self._eval("pause", (), (self._key(""), reason, end, by, *pairs)))

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        pairs = [x for entry in entries for x in (entry, new_audit_id())]
        return _records(self._eval("resume", (), (self._key(""), by, *pairs)))

    def trigger(self, request: Trigger) -> TriggerResult:
        if request.celery:
            target = celery_protocol.list_name(request.queue, request.priority)
        else:
            target = self._stream(request.queue, band(request.priority))
        guard = request.guard
        overlap = "" if guard is None else guard.overlap.value
        timeout = "0" if guard is None else str(int(guard.timeout * 1e6))
        args = (
            self._key(""),
            self._history,
            request.entry,
            request.run_id,
            request.queue,
            request.body,
            request.request_id,
            request.by,
            overlap,
            timeout,
            request.idempotency_key or "",
            "1" if request.force else "0",
            new_audit_id(),
            "1" if request.celery else "0",
            "" if request.priority is None else str(request.priority),
        )
        reply = self._eval("trigger", (target, self._key("queues")), args)
        return _result(json.loads(reply))

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        if not self._history:
            raise backfill_needs_history(entry, self.url)
        keys = [self._key("queues")]
        flat: list[str | int] = []
        for m in runs:
            celery = isinstance(m.destination, CeleryQueue)
            if celery:
                target = celery_protocol.list_name(m.destination.queue, m.destination.priority)
            else:
                target = self._stream(m.destination.queue, band(m.destination.priority))
            keys.append(target)
            p = published_p(m, is_celery_run(m.destination), 0)
            flat += (len(keys), m.id, p, m.body, "1" if celery else "0", m.destination.queue)
        audit_id = new_audit_id()
        rest = _audit_rest(AuditRecord(audit_id, from_micros(0), "backfill", entry, by, detail))
        args = (self._key(""), self._history, entry, audit_id, rest, *flat)
        self._fold_log()  # a run already published keeps its record: the records say which
        ids, stored = self._eval("backfill", keys, args)
        if ids == "trimmed":
            raise HistoryTrimmed(entry, from_micros(int(stored)))
        return list(ids), _audit(audit_id, stored)

    def record_audit(self, record: AuditRecord) -> None:
        args = (self._key(""), record.id, _us(record.at), record.entry or "", _audit_rest(record))
        self._eval("record_audit", (), args)

    def audit(
        self,
        entry: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        controls_only: bool = False,
    ) -> list[AuditRecord]:
        self._check_format("audit")
        index = (
            self._key("ctl", "audit", entry)
            if entry is not None
            else self._key("ctl", "audit-ctl" if controls_only else "audit-at")
        )
        low = "-inf" if since is None else _us(since)
        args = ("+inf", low, "BYSCORE", "REV", "LIMIT", 0, max(limit, 0))
        ids: list[str] = self._cmd("ZRANGE", index, *args)  # ZRANGE: the ACL line allows it
        if not ids:
            return []
        texts = self._cmd("HMGET", self._key("ctl", "audit"), *ids)
        found = [_audit(i, t) for i, t in zip(ids, texts, strict=True) if t is not None]
        if controls_only and entry is not None:  # an entry's own changes: a few
            return [r for r in found if not is_entry_change(r.action)]
        return found

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        age = str(max_age // timedelta(microseconds=1))
        return int(self._eval("trim_audit", (), (self._key(""), age, str(limit))))

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        entries = [
            [
                entry,
                "" if c.pause is None else _pause_text(c.pause),
                "" if c.busy is None else _busy_text(c.busy),
                "" if c.held is None else held_text(self._key(""), c.held),
                json.dumps([json.loads(_pause_text(p)) for p in c.lifted]) if c.lifted else "",
            ]
            for entry, c in controls.items()
            if c != EntryControl()
        ]
        records = [[a.id, _us(a.at), a.entry or "", _audit_rest(a)] for a in audit]
        remembered = [
            [f"{k.key}{SEPARATOR}{k.entry}", _key_text(k.result, k.at), _us(k.at)] for k in keys
        ]
        args = (self._key(""), json.dumps(entries), json.dumps(records), json.dumps(remembered))
        return int(self._eval("import_controls", (), args))

    def trigger_keys(self) -> list[TriggerKey]:
        self._check_format("controls")
        held: dict[str, str] = self._cmd("HGETALL", self._key("ctl", "keys"))
        out = []
        for field, text in sorted(held.items()):
            key, entry = field.rsplit(SEPARATOR, 1)
            fields = json.loads(text)
            out.append(TriggerKey(key, entry, _result(fields), from_micros(int(fields[4]))))
        return out


def _hold(prefix: str, write: StateWrite) -> str:
    return "" if write.hold is None else held_text(prefix, write.hold)


def _due(message: Outgoing) -> str:
    due = message.due if message.due is not None else message.slot
    return "" if due is None else _us(due)


def _key_text(result: TriggerResult, at: datetime) -> str:
    fields = [result.status.value, result.run_id, result.detail, result.audit_id or ""]
    return json.dumps([*fields, _us(at)])
