"""Redis's run history: the `RunHistory` role (beatd.backends.base) over the keys the commit,
claim and settling scripts log to in their own atomic steps, folded into the records a batch at
a time (redis_history_lua has the record's layout and the fold; every read here folds first).
Redis keeps it all in memory, so a record is one small hash and the indexes are sorted sets of
run ids (docs/history.md gives the measured bytes per record):

  beatd:h:published       list    what the commit scripts append: P (published runs)
  beatd:h:attempts        list    what the claim and settling scripts append: S (an attempt's
                                  start), E (its end)
  beatd:h:run:ID          hash    the run's record: p, e, N (published), n and 1..n
                                  (attempts), r, o
  beatd:h:runs            zset    every run id, scored by its published time (us), which is
                                  the record's published time (read with ZMSCORE): max_records
                                  and max_age trimming, `beatd history` without an entry
  beatd:h:entry:ENTRY     zset    the entry's run ids, scored likewise: per_entry trimming
  beatd:h:summary         hash    entry -> JSON [status, finished, duration, success, failure,
                                  consecutive failures] (us)
  beatd:h:missed          hash    entry US reason US first_us -> JSON [entry, reason, first,
                                  last, total, recorded, node, epoch, overdue] (US: \\x1f)
  beatd:h:missed-at       zset    the missed fields, scored by their recorded time (us)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from beatd.backends.base import Outgoing, from_micros, to_micros
from beatd.backends.redis_link import RedisLink
from beatd.history import (
    FINAL,
    Attempt,
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    MissedSlots,
    Retention,
    RunKind,
    RunRecord,
)

TRIM_ENTRIES = 1000  # entries whose per_entry excess one trim script call looks at
# pages of TRIM_ENTRIES one trim call looks at, going on from where the last call stopped: a
# pass over 1,000,000 entries in one call took 5-15 s of the leader's loop at load
TRIM_PAGES = 10
IMPORT_BATCH = 500  # records per import script call


def published_p(message: Outgoing, celery: bool, epoch: int) -> str:
    """The p field of a message's record (redis_history_lua), which the commit script logs as
    it is; '' for a message with no slot (a requeue: no record). Its two halves are remembered:
    a burst's runs share their slots and due times, and a commit its kinds and epoch."""
    if message.slot is None:
        return ""
    return _p_times(message.slot, message.due) + _p_rest(message.kind, celery, epoch)


@lru_cache(maxsize=4096)
def _p_times(slot: datetime, due: datetime | None) -> str:
    slot_us = to_micros(slot)
    due_us = slot_us if due is None else to_micros(due)
    return f'["{slot_us}","{due_us - slot_us}","'


@lru_cache(maxsize=64)
def _p_rest(kind: RunKind, celery: bool, epoch: int) -> str:
    return f'{kind.value}","{"1" if celery else "0"}","{epoch}"]'


def _us(value: str) -> datetime | None:
    return from_micros(int(value)) if value else None


def _attempt(number: int, slot: int, fields: dict[str, str]) -> Attempt:
    start, end, outcome, reason = json.loads(fields[str(number)])
    error_type, error = json.loads(fields.get(f"x{number}", '["", ""]'))
    consumer = fields.get(f"c{number}", "")
    host, pid = json.loads(fields.get(f"h{number}", '["", ""]'))
    return Attempt(
        number,
        consumer,
        host,
        int(pid) if pid else None,
        from_micros(slot + int(start)),
        from_micros(slot + int(end)) if end else None,
        outcome or None,
        reason,
        error_type,
        error,
    )


def _record(run_id: str, fields: dict[str, str], published: float | None) -> RunRecord | None:
    """A run's record from its hash and its score in the global index (its published time);
    None when it is not there (trimmed meanwhile)."""
    p = fields.get("p")
    if p is None or published is None:
        return None
    slot_text, due, kind, celery, epoch = json.loads(p)
    slot = int(slot_text)
    n = int(fields.get("n", "0"))
    return RunRecord(
        run_id,
        fields.get("e", ""),
        from_micros(slot),
        from_micros(slot + int(due)),
        from_micros(int(published)),
        fields.get("N", ""),
        int(epoch),
        RunKind(kind),
        celery == "1",
        tuple(_attempt(i, slot, fields) for i in range(1, n + 1) if str(i) in fields),
        _us(fields.get("r", "")),
        _us(fields.get("o", "")),
        fields.get("a") or None,
    )


def _fields(record: RunRecord) -> dict[str, str]:
    """A record as its hash's fields (for `import_history`)."""
    slot = to_micros(record.slot)

    def offset(moment: datetime | None) -> str:
        return "" if moment is None else str(to_micros(moment) - slot)

    p = [str(slot), offset(record.due), record.kind.value, "1" if record.celery else "0"]
    p.append(str(record.epoch))
    fields = {"p": json.dumps(p), "e": record.entry, "N": record.node}
    if record.audit is not None:
        fields["a"] = record.audit
    for a in record.attempts:
        pid = "" if a.pid is None else str(a.pid)
        times = [offset(a.started_at), offset(a.ended_at)]
        fields[str(a.number)] = json.dumps([*times, a.outcome or "", a.reason])
        if a.error_type or a.error:
            fields[f"x{a.number}"] = json.dumps([a.error_type, a.error])
        fields[f"c{a.number}"] = a.consumer
        fields[f"h{a.number}"] = json.dumps([a.host, pid])
    if record.attempts:
        fields["n"] = str(max(a.number for a in record.attempts))
    if record.received_at is not None:
        fields["r"] = str(to_micros(record.received_at))
    if record.overdue_at is not None:
        fields["o"] = str(to_micros(record.overdue_at))
    return fields


def _missed_field(entry: str, reason: str, first: datetime) -> str:
    return f"{entry}\x1f{reason}\x1f{to_micros(first)}"


def _missed(text: str) -> MissedRecord:
    entry, reason, first, last, total, recorded, node, epoch, overdue = json.loads(text)
    slots = MissedSlots(entry, reason, from_micros(int(first)), from_micros(int(last)), int(total))
    return MissedRecord(slots, from_micros(int(recorded)), node, int(epoch), _us(overdue))


def _missed_value(m: MissedRecord) -> str:
    s = m.slots
    overdue = "" if m.overdue_at is None else str(to_micros(m.overdue_at))
    first, last, recorded = (str(to_micros(t)) for t in (s.first, s.last, m.recorded_at))
    return json.dumps(
        [s.entry, s.reason, first, last, str(s.total), recorded, m.node, str(m.epoch), overdue]
    )


def _summary(entry: str, text: str) -> EntrySummary:
    status, finished, duration, success, failure, failures = json.loads(text)
    return EntrySummary(
        entry,
        status,
        from_micros(int(finished)),
        timedelta(microseconds=int(duration)) if duration else None,
        _us(success),
        _us(failure),
        int(failures),
    )


def _summary_value(s: EntrySummary) -> str:
    def us(t: datetime | None) -> str:
        return "" if t is None else str(to_micros(t))

    duration = "" if s.last_duration is None else str(s.last_duration // timedelta(microseconds=1))
    return json.dumps(
        [
            s.last_status,
            us(s.last_finished_at),
            duration,
            us(s.last_success_at),
            us(s.last_failure_at),
            str(s.consecutive_failures),
        ]
    )


class RedisRunHistory(RedisLink):
    """Reads, marks, trimming and copying of the run history (the module doc has the keys)."""

    _trim_cursor = 0  # where the trim's pass over the entries goes on (HSCAN's cursor)

    def _ns(self) -> str:
        return self._key("")

    def _records(self, ids: Sequence[str]) -> list[RunRecord]:
        """The runs' records as stored (a caller folds the log first)."""

        def call() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hgetall(self._key("h", "run", run_id))
                pipe.zmscore(self._key("h", "runs"), list(ids))
                return pipe.execute()

        if not ids:
            return []
        *hashes, published = self._do("history", call)
        records = (_record(*row) for row in zip(ids, hashes, published, strict=True))
        return [r for r in records if r is not None]

    def _newest(self, index: str, low: str, offset: int, count: int) -> list[str]:
        """Members of a zset scored `low` or more, highest score first (ties: the greater
        member first): ZRANGE's BYSCORE REV, which the ACL line allows as ZRANGE."""
        return list(
            self._cmd("ZRANGE", index, "+inf", low, "BYSCORE", "REV", "LIMIT", offset, count)
        )

    def runs(self, query: HistoryQuery) -> list[RunRecord]:
        self._check_format("history")
        self._fold_log()
        index = (
            self._key("h", "runs") if query.entry is None else self._key("h", "entry", query.entry)
        )
        low = "-inf" if query.since is None else str(to_micros(query.since))
        found: list[RunRecord] = []
        page, offset = max(query.limit, 100), 0
        while len(found) < query.limit:
            ids = self._newest(index, low, offset, page)
            offset += page
            for record in self._records(ids):
                if not query.unfinished or (not record.finished and record.overdue_at is None):
                    found.append(record)
            if len(ids) < page or not query.unfinished:
                break
        return found[: query.limit]

    def run(self, run_id: str) -> RunRecord | None:
        self._check_format("history")
        self._fold_log()
        records = self._records([run_id])
        return records[0] if records else None

    def missed(
        self, entry: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[MissedRecord]:
        self._check_format("history")
        low = "-inf" if since is None else str(to_micros(since))
        fields = self._newest(self._key("h", "missed-at"), low, 0, -1)
        if entry is not None:
            fields = [f for f in fields if f.partition("\x1f")[0] == entry]
        fields = fields[:limit]
        if not fields:
            return []
        values = self._cmd("HMGET", self._key("h", "missed"), *fields)
        return [_missed(v) for v in values if v is not None]

    def summaries(self, entries: Sequence[str] | None = None) -> dict[str, EntrySummary]:
        self._check_format("history")
        self._fold_log(ends_only=True)  # a published record changes no summary
        key = self._key("h", "summary")
        if entries is None:
            raw: dict[str, str] = self._cmd("HGETALL", key)
        else:
            names = list(entries)
            values = self._cmd("HMGET", key, *names) if names else []
            raw = {e: v for e, v in zip(names, values, strict=True) if v is not None}
        return {entry: _summary(entry, value) for entry, value in raw.items()}

    def trimmed_up_to(self, entry: str) -> datetime | None:
        self._check_format("history")
        return _us(self._cmd("HGET", self._key("h", "trimmed"), entry) or "")

    def history_size(self) -> tuple[int, int]:
        self._check_format("history")
        self._fold_log()

        def call() -> list[int]:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self._key("h", "runs"))
                pipe.zcard(self._key("h", "missed-at"))
                return pipe.execute()

        runs, missed = self._do("history size", call)
        return int(runs), int(missed)

    def _mark(self, name: str, *args: str) -> bool:
        """One of the marking scripts; False, writing nothing, with `history=False`."""
        if not self._history:
            return False
        return bool(self._eval_folded(name, (), (self._history, *args)))

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        return self._mark("mark_overdue", run_id, str(to_micros(at)))

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        field = _missed_field(entry, reason, first)
        return self._mark("mark_missed_overdue", field, str(to_micros(at)))

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        return self._mark("run_received", run_id, str(to_micros(at)))

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        pid_text = "" if pid is None else str(pid)
        return self._mark("attempt_started", run_id, consumer, host, pid_text, str(to_micros(at)))

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        e = ending
        if not self._history and e.outcome in FINAL:  # the controls' part (redis_controls)
            self._eval("run_final", (), (self._key(""), "", run_id))
        args = (e.outcome.value, e.reason, e.error_type, e.error, str(to_micros(at)))
        return self._mark("attempt_ended", run_id, *args)

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        """By age and count first, then per entry of the state hash, TRIM_ENTRIES at a time
        (each call one atomic step): a user whose ACL lacks HKEYS still trims by age and count
        before its error."""
        max_age = str(retention.max_age // timedelta(microseconds=1))
        common = (self._ns(), max_age, str(retention.max_records))
        per_entry = str(retention.per_entry)
        gone = int(self._eval_folded("trim", (), (*common, str(limit), per_entry, "1")))
        if gone >= limit:
            return gone
        for pages, (after, batch) in enumerate(self._state_names(self._trim_cursor), 1):
            if batch:
                args = (*common, str(limit - gone), per_entry, "0", *sorted(batch))
                gone += int(self._eval_folded("trim", (), args))
            if after is None:  # HKEYS: the whole list, each call
                if gone >= limit:
                    break
                continue
            self._trim_cursor = after  # 0 at the end of a pass: the next starts anew
            if gone >= limit or pages >= TRIM_PAGES:
                break
        return gone

    def _state_names(self, cursor: int) -> Iterator[tuple[int | None, list[str]]]:
        """The state hash's entry names from `cursor` on, about TRIM_ENTRIES at a time by
        HSCAN, each with the cursor after it: one HKEYS of 1,000,000 held Redis past the
        per-call limit, and the leader's calls behind it. A user on the ACL line before +hscan
        reads them in one HKEYS, as before (cursor None)."""
        key = self._key("state")
        while True:
            if (scanned := self._hscan(key, cursor, TRIM_ENTRIES)) is None:
                names: list[str] = sorted(self._cmd("HKEYS", key))
                for start in range(0, len(names), TRIM_ENTRIES):
                    yield None, names[start : start + TRIM_ENTRIES]
                return
            cursor, page = scanned
            if page or not cursor:
                yield cursor, list(page)
            if not cursor:
                return

    def export_runs(self, batch: int = 1000) -> Iterator[list[RunRecord]]:
        self._check_format("history")
        self._fold_log()
        offset = 0
        while True:
            ids = self._cmd("ZRANGE", self._key("h", "runs"), offset, offset + batch - 1)
            if not ids:
                return
            offset += len(ids)
            yield self._records(ids)

    def export_missed(self) -> list[MissedRecord]:
        self._check_format("history")
        values: dict[str, str] = self._cmd("HGETALL", self._key("h", "missed"))
        return sorted((_missed(v) for v in values.values()), key=lambda m: m.recorded_at)

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        added = 0
        missed_rows: list[Any] = [
            [_missed_field(*m.slots[:2], m.slots.first), _missed_value(m), str(to_micros(at))]
            for m in missed
            for at in (m.recorded_at,)
        ]
        summary_rows = [[s.entry, _summary_value(s)] for s in summaries]
        for start in range(0, max(len(runs), 1), IMPORT_BATCH):
            batch = runs[start : start + IMPORT_BATCH]
            rows = [[r.id, _fields(r), str(to_micros(r.published_at))] for r in batch]
            args = (self._ns(), json.dumps(rows), json.dumps(missed_rows), json.dumps(summary_rows))
            added += int(self._eval_folded("import_history", (), args))
            missed_rows, summary_rows = [], []
        return added
