"""The SQLite backend's run history (beatd.history): the steps that write it inside the
commit's, the claim's and the settling's transactions, and the `RunHistory` role (reads,
deadline marks, Celery's events, trimming, `beatd migrate`'s copy).

The tables are `HISTORY_SCHEMA` (sqlite_file.py, format 2). A run's attempts hang off its
`run.seq`, so an attempt costs a few bytes of key, and deleting a run deletes them (a trigger).
A file of format 1 opened read-only, which no beatd of format 2 has opened for writing yet, has
no history tables: it holds no history, and the reads say so (nothing) instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from beatd.backends.base import Lease, Outgoing, StateWrite, from_micros, to_micros
from beatd.backends.sqlite_file import SUMMARIZE_ENDED, SQLiteFile, _listed, _priority, has_history
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.history import (
    FAILED_FINALLY,
    FINAL,
    PASS_OVER,
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
from beatd.outcomes import Outcome

PUBLISHED = (
    "INSERT INTO message (id, queue, priority, body, ready_at, entry, slot_us, due_us, kind, "
    "published_us, node, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# The records of the runs queued and never claimed (in their messages' rows: MESSAGE_PUBLISHED),
# as `_RUN_COLUMNS` with the message's seq negated: of a run id queued twice the first message's,
# of one held in `run` none (that record was there first). `of_run`: a condition on the
# messages' own columns that every message of a run id meets or none does (its `entry`, its
# `id`), tested before the two look-ups per message: one entry's queued runs cost a pass over
# the messages, not two searches per queued message (run_done has no index on id).
def queued_runs(of_run: str = "1") -> str:
    return (
        "SELECT -min(seq) AS seq, id, entry, slot_us, due_us, published_us, node, epoch, kind, "
        f"queue = '{OUTBOX_QUEUE}' AS celery, NULL AS received_us, NULL AS overdue_us FROM message "
        f"WHERE published_us IS NOT NULL AND ({of_run}) "
        "AND NOT EXISTS (SELECT 1 FROM run WHERE run.id = message.id) "
        "AND NOT EXISTS (SELECT 1 FROM run_done WHERE run_done.id = message.id) GROUP BY id"
    )


QUEUED_RUNS = queued_runs()
_LOGGED_COLUMNS = (
    "id, entry, slot_us, due_us, published_us, node, epoch, kind, consumer, host, pid, "
    "started_us, ended_us, outcome, reason, error_type, error"
)
# The runs logged in `run_done` (settled for good while their records were in their messages)
# and not in `run` (of a run id logged twice, the first row), as `_LOGGED_COLUMNS`.
LOGGED_RUNS = (
    f"SELECT {_LOGGED_COLUMNS}, min(rowid) AS logged FROM run_done "
    "WHERE NOT EXISTS (SELECT 1 FROM run WHERE run.id = run_done.id) GROUP BY id"
)
# The open attempts of the runs listed (a JSON array of ids), looked for among the claimed
# messages only: `receipt >= ''` (every receipt is text) searches the receipt index, where
# `IS NOT NULL` made SQLite scan every queued message (message has no index on id).
OPEN_ATTEMPTS = (
    "SELECT id, attempt_consumer, attempt_host, attempt_pid, attempt_us FROM message "
    "WHERE receipt >= '' AND attempt_us IS NOT NULL AND id IN (SELECT value FROM json_each(?))"
)
# Runs `log_done` stores, after which the handle folds `run_done` into `run` and `attempt`.
FOLD_EVERY = 1000
# The final ends logged in `run_done`, in the order they were logged (`_counted` reads them).
_LOGGED_ENDS = (
    "SELECT entry, outcome, started_us, ended_us FROM run_done "
    f"WHERE outcome IN ({_listed(FINAL)}) {{}} ORDER BY rowid"
)
_SUMMARY_COLUMNS = (
    "entry, last_status, last_finished_us, last_duration_us, last_success_us, last_failure_us, "
    "consecutive_failures"
)
# A row of `entry_summary` (as `_SUMMARY_COLUMNS`).
SummaryRow = tuple[str, str, int, int | None, int | None, int | None, int]
# Move the queued runs' records to `run` (a trigger does): before a step that writes a run's
# record (`_move_unless_held`), trim and import.
MOVE_QUEUED = "UPDATE message SET published_us = NULL WHERE published_us IS NOT NULL"
_COPIED = (
    "INSERT INTO run (id, entry, slot_us, due_us, published_us, node, epoch, kind, celery, "
    "received_us, overdue_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING RETURNING seq"
)
_MISSED = (
    "INSERT OR IGNORE INTO missed (entry, reason, first_us, last_us, total, recorded_us, node, "
    "epoch, overdue_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ATTEMPT = (
    "INSERT INTO attempt (run, number, consumer, host, pid, started_us, ended_us, outcome, "
    "reason, error_type, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Whether a run (a row of `run`) finished: its last attempt's outcome is final.
_FINISHED = (
    f"coalesce((SELECT outcome IN ({_listed(FINAL)}) FROM attempt WHERE run = seq "
    "ORDER BY number DESC LIMIT 1), 0)"
)
# Whether a run finished by the time given as a parameter: finished, its last attempt ended
# at or before it.
_FINISHED_BY = (
    f"coalesce((SELECT outcome IN ({_listed(FINAL)}) AND ended_us <= ? FROM attempt "
    "WHERE run = seq ORDER BY number DESC LIMIT 1), 0)"
)
_AUDITED = (RunKind.MANUAL, RunKind.BACKFILL)  # the kinds of run with an audit id (`run_audit`)
_RUN_COLUMNS = (
    "seq, id, entry, slot_us, due_us, published_us, node, epoch, kind, celery, received_us, "
    "overdue_us"
)
_ATTEMPT_COLUMNS = (
    "run, number, consumer, host, pid, started_us, ended_us, outcome, reason, error_type, error"
)


def micros(seconds: float) -> int:
    """The backend's clock (Unix seconds) as stored: whole microseconds."""
    return round(seconds * 1_000_000)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _at(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


# --- written inside the other roles' transactions ---------------------------------------------


def published_rows(
    lease: Lease,
    now: float,
    now_us: int,
    messages: Sequence[Outgoing],
    rejected: set[str],
) -> list[tuple[object, ...]]:
    """The `PUBLISHED` rows of a commit's messages (of applied writes): a message with a slot
    carries its run's published record. Made per run of a burst, so a plain loop that converts
    each distinct time once (the runs of a burst share their slots)."""
    shared = (now_us, lease.node, lease.epoch)
    micros_of: dict[datetime, int] = {}
    rows: list[tuple[object, ...]] = []
    for entry, run_id, destination, body, slot, due, kind, _audit in messages:
        if rejected and entry in rejected:
            continue
        message = (run_id, destination.queue, _priority(destination.priority), body, now)
        if slot is None:
            rows.append((*message, None, None, None, None, None, None, None))
            continue
        due = due or slot
        slot_us = micros_of.get(slot)
        if slot_us is None:
            slot_us = micros_of[slot] = to_micros(slot)
        due_us = micros_of.get(due)
        if due_us is None:
            due_us = micros_of[due] = to_micros(due)
        rows.append((*message, entry, slot_us, due_us, kind, *shared))
    return rows


def record_missed(
    db: sqlite3.Connection,
    lease: Lease,
    now: int,
    writes: Sequence[StateWrite],
    rejected: set[str],
    replaced: Sequence[MissedSlots] = (),
) -> None:
    """One record per missed range of each applied write, and per held run a hold replaced
    (`replaced`); a key already held is left."""
    ranges = [m for w in writes if w.missed and w.state.entry not in rejected for m in w.missed]
    db.executemany(
        _MISSED,
        [
            (
                m.entry,
                m.reason,
                to_micros(m.first),
                to_micros(m.last),
                m.total,
                now,
                lease.node,
                lease.epoch,
                None,
            )
            for m in [*ranges, *replaced]
        ],
    )


def start_attempt(
    db: sqlite3.Connection, run_id: str, consumer: str, host: str, pid: int | None, at: int
) -> bool:
    """Append an attempt to a held run (a trigger ends the open one as lost); False for a run
    the history does not hold."""
    return (
        db.execute(
            "INSERT INTO attempt (run, number, consumer, host, pid, started_us) "
            "SELECT seq, coalesce((SELECT max(number) FROM attempt WHERE run = seq), 0) + 1, "
            "?, ?, ?, ? FROM run WHERE id = ?",
            (consumer, host, pid, at, run_id),
        ).rowcount
        == 1
    )


def end_attempt(db: sqlite3.Connection, run_id: str, ending: Ending, at: int) -> bool:
    """End a held run's open attempt as `ending` says (for a final outcome a trigger finishes
    the run and moves its entry's summary on); False when there is no such run or no open
    attempt."""
    if ending.outcome in FINAL:
        fold_logged(db)  # the summary counts the runs logged before this one first
    return (
        db.execute(
            "UPDATE attempt SET ended_us = ?, outcome = ?, reason = ?, error_type = ?, error = ? "
            "WHERE run = (SELECT seq FROM run WHERE id = ?) AND ended_us IS NULL",
            (at, ending.outcome, ending.reason, ending.error_type, ending.error, run_id),
        ).rowcount
        == 1
    )


def record_ended(
    db: sqlite3.Connection,
    run_id: str | bytes,
    started: Sequence[Any],
    ending: Ending,
    at: int,
) -> None:
    """Store the attempt a claim opened in the run's message (`started`: its consumer, host,
    pid and start), ended at `at` as `ending` says, if the history holds the run (for a final
    outcome the log is folded, then the entry's summary moved on). `run_id` as stored
    (`_stored`): bytes for an id that is not UTF-8, which no run the history holds has."""
    db.execute(
        "INSERT INTO attempt (run, number, consumer, host, pid, started_us, ended_us, outcome, "
        "reason, error_type, error) SELECT seq, "
        "(SELECT coalesce(max(number), 0) + 1 FROM attempt WHERE run = seq), "
        "?, ?, ?, ?, ?, ?, ?, ?, ? FROM run WHERE id = ?",
        (*started, at, ending.outcome, ending.reason, ending.error_type, ending.error, run_id),
    )
    if ending.outcome in FINAL:
        fold_logged(db)  # the summary counts the runs logged before this one first
        ended = {"run": run_id, "outcome": ending.outcome, "started_us": started[3], "ended_us": at}
        db.execute(SUMMARIZE_ENDED, ended)


def _move_unless_held(db: sqlite3.Connection, run_id: str) -> None:
    """Before writing run `run_id`'s record: unless `run` holds it, move every queued run's
    record there (the queue has no index of ids: one scan moves them all, so the leader's
    deadline marks of a backed-up queue scan it once, not once a run)."""
    if db.execute("SELECT 1 FROM run WHERE id = ?", (run_id,)).fetchone() is None:
        fold(db)
        db.execute(MOVE_QUEUED)


def log_done(
    db: sqlite3.Connection, run_id: str | bytes, gone: Sequence[Any], ending: Ending | None, at: int
) -> None:
    """Log a run whose message is deleted for good while its record is still in it (`gone`:
    MESSAGE_ATTEMPT then MESSAGE_PUBLISHED), with its attempt ended at `at` as `ending` says
    (None: no attempt to store). The entry's summary counts it when the log is folded (`fold`);
    until then `summaries` adds it."""
    consumer, host, pid, started, entry, slot, due, kind, published, node, epoch = gone
    attempt: tuple[object, ...] = (None,) * 9
    if ending is not None:
        attempt = (consumer, host, pid, started, at, *_ending(ending))
    db.execute(
        f"INSERT INTO run_done ({_LOGGED_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, ''), coalesce(?, ''), "
        "coalesce(?, ''))",
        (run_id, entry, slot, due, published, node, epoch, kind, *attempt),
    )


def keep_relayed(db: sqlite3.Connection, run_id: str | bytes, gone: Sequence[Any]) -> None:
    """Store the record of a run the relay removed from the AMQP outbox (`gone` as `log_done`
    takes it) in `run`, as a Celery run: its attempts come from Celery's task events, which
    `run_done` (beatd's worker's log) cannot take."""
    entry, slot, due, kind, published, node, epoch = gone[4:]
    db.execute(
        "INSERT INTO run (id, entry, slot_us, due_us, published_us, node, epoch, kind, celery) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO NOTHING",
        (run_id, entry, slot, due, published, node, epoch, kind),
    )


def _ending(ending: Ending) -> tuple[str, str, str, str]:
    return ending.outcome, ending.reason, ending.error_type, ending.error


def _counted(held: dict[str, SummaryRow], ends: Iterable[Sequence[Any]]) -> dict[str, SummaryRow]:
    """The summaries of the entries that `ends` (of `_LOGGED_ENDS`, in their order) moves, from
    the summaries `held` (`_SUMMARIZE`'s rules, sqlite_file.py, one end at a time)."""
    moved: dict[str, SummaryRow] = {}
    for entry, outcome, started, ended in ends:
        before = moved.get(entry) or held.get(entry)
        success, failure, failures = (None, None, 0) if before is None else before[4:]
        if outcome == Outcome.SUCCEEDED:
            success, failures = ended, 0
        elif outcome in FAILED_FINALLY:
            failure, failures = ended, failures + 1
        duration = None if started is None else ended - started
        moved[entry] = (entry, outcome, ended, duration, success, failure, failures)
    return moved


def _held_summaries(db: sqlite3.Connection, entries: Iterable[str]) -> dict[str, SummaryRow]:
    """The stored summaries of `entries`."""
    rows = db.execute(
        f"SELECT {_SUMMARY_COLUMNS} FROM entry_summary "
        "WHERE entry IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(set(entries))),),
    )
    return {row[0]: row for row in rows}


def fold_logged(db: sqlite3.Connection) -> None:
    """`fold`, if anything is logged (before a summary is moved outside the log)."""
    if db.execute("SELECT 1 FROM run_done LIMIT 1").fetchone() is not None:
        fold(db)


def fold(db: sqlite3.Connection) -> None:
    """Move the runs logged in `run_done` to `run` and `attempt` (a run id held there keeps its
    record; its attempt is appended), and count their final ends in the summaries, in the order
    they were logged (an attempt ended later moves them itself)."""
    ends = db.execute(_LOGGED_ENDS.format("")).fetchall()
    if ends:
        held = _held_summaries(db, (end[0] for end in ends))
        db.executemany(
            f"INSERT OR REPLACE INTO entry_summary ({_SUMMARY_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            list(_counted(held, ends).values()),
        )
    db.execute(
        "INSERT OR IGNORE INTO run (id, entry, slot_us, due_us, published_us, node, epoch, "
        "kind) SELECT id, entry, slot_us, due_us, published_us, node, epoch, kind "
        "FROM run_done ORDER BY rowid"
    )
    db.execute(
        "INSERT OR IGNORE INTO attempt (run, number, consumer, host, pid, started_us, "
        "ended_us, outcome, reason, error_type, error) SELECT run.seq, "
        "(SELECT coalesce(max(number), 0) + 1 FROM attempt WHERE attempt.run = run.seq), "
        "d.consumer, d.host, d.pid, d.started_us, d.ended_us, d.outcome, d.reason, "
        "d.error_type, d.error FROM run_done AS d JOIN run ON run.id = d.id "
        "WHERE d.consumer IS NOT NULL ORDER BY d.rowid"
    )
    db.execute("DELETE FROM run_done")


def _logged_record(row: Sequence[Any]) -> RunRecord:
    """The record of a `LOGGED_RUNS` row."""
    run_id, entry, slot, due, published, node, epoch, kind, *attempt, _ = row
    consumer, host, pid, started, ended, outcome, reason, error_type, error = attempt
    attempts: tuple[Attempt, ...] = ()
    if consumer is not None:
        attempts = (
            Attempt(
                1, consumer, host, pid, from_micros(started), _at(ended), outcome, reason,
                error_type, error,
            ),
        )  # fmt: skip
    return RunRecord(
        run_id, entry, from_micros(slot), from_micros(due), from_micros(published), node, epoch,
        RunKind(kind), False, attempts,
    )  # fmt: skip


def _event_ended(db: sqlite3.Connection, run_id: str, ending: Ending, when: int) -> bool:
    """End the run's attempt (one started from no message if none is open); False when
    the history does not hold the run, it finished, or this end is a repeat."""
    _move_unless_held(db, run_id)
    if end_attempt(db, run_id, ending, when):
        return True
    row = db.execute(
        f"SELECT {_FINISHED}, (SELECT ended_us = ? AND outcome = ? FROM attempt "
        "WHERE run = seq ORDER BY number DESC LIMIT 1) FROM run WHERE id = ?",
        (when, ending.outcome, run_id),
    ).fetchone()
    if row is None or row[0] or row[1]:  # not held, finished, or this end repeated
        return False
    start_attempt(db, run_id, "", "", None, when)  # an event without its task-started
    return end_attempt(db, run_id, ending, when)


# --- the RunHistory role ----------------------------------------------------------------------


def _newest_first(record: RunRecord) -> tuple[datetime, str]:
    """The order of `runs`: by publishing time, then id."""
    return record.published_at, record.id


def _run_record(row: Sequence[Any], attempts: tuple[Attempt, ...]) -> RunRecord:
    _, run_id, entry, slot, due, published, node, epoch, kind, celery, received, overdue = row
    return RunRecord(
        run_id,
        entry,
        from_micros(slot),
        from_micros(due),
        from_micros(published),
        node,
        epoch,
        RunKind(kind),
        bool(celery),
        attempts,
        _at(received),
        _at(overdue),
    )


def _audited(db: sqlite3.Connection, records: list[RunRecord]) -> list[RunRecord]:
    """`records` with the audit id of each manual or backfill run (kept in `run_audit`)."""
    chosen = [r.id for r in records if r.kind in _AUDITED]
    if not chosen:
        return records
    audit = dict(
        db.execute(
            "SELECT id, audit FROM run_audit WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(chosen),),
        )
    )
    return [replace(r, audit=audit[r.id]) if r.id in audit else r for r in records]


def _attempt(row: Sequence[Any]) -> Attempt:
    _, number, consumer, host, pid, started, ended, outcome, reason, error_type, error = row
    started_at, ended_at = from_micros(started), _at(ended)
    return Attempt(
        number, consumer, host, pid, started_at, ended_at, outcome, reason, error_type, error
    )


def _summary(row: Sequence[Any]) -> EntrySummary:
    entry, status, finished, duration, success, failure, failures = row
    return EntrySummary(
        entry,
        status,
        from_micros(finished),
        None if duration is None else timedelta(microseconds=duration),
        _at(success),
        _at(failure),
        failures,
    )


def _missed_record(row: Sequence[Any]) -> MissedRecord:
    entry, reason, first, last, total, recorded, node, epoch, overdue = row
    slots = MissedSlots(entry, reason, from_micros(first), from_micros(last), total)
    return MissedRecord(slots, from_micros(recorded), node, epoch, _at(overdue))


_MISSED_COLUMNS = "entry, reason, first_us, last_us, total, recorded_us, node, epoch, overdue_us"


def _delete_runs(db: sqlite3.Connection, chosen: str, params: tuple[object, ...]) -> int:
    """Delete the runs whose seq `chosen` selects (their attempts go with them: a trigger)."""
    return int(db.execute(f"DELETE FROM run WHERE seq IN ({chosen})", params).rowcount)


# The finished runs (of those `{}` selects) among the first LIMIT past the newest OFFSET ones
# (the call's limit plus PASS_OVER: bounded work per call), the oldest first.
_PAST_CAP = (
    "SELECT seq FROM (SELECT seq, published_us, id FROM run {} "
    f"ORDER BY published_us DESC, id DESC LIMIT ? OFFSET ?) WHERE {_FINISHED} "
    "ORDER BY published_us, id LIMIT ?"
)


def _trim_runs(db: sqlite3.Connection, retention: Retention, cutoff: int, limit: int) -> int:
    """Runs older than `cutoff`, then each entry's oldest finished runs past its newest
    `per_entry`, then the oldest finished past the newest `max_records` (the caps pass over an
    unfinished run: only its age deletes it): at most `limit` of them; how many went."""
    left = limit - _delete_runs(
        db,
        "SELECT seq FROM run WHERE published_us < ? ORDER BY published_us, id LIMIT ?",
        (
            cutoff,
            limit,
        ),
    )
    crowded = db.execute(
        "SELECT entry, COUNT(*) FROM run GROUP BY entry HAVING COUNT(*) > ?",
        (retention.per_entry,),
    ).fetchall()
    for entry, count in crowded:
        if left <= 0:
            break
        left -= _delete_runs(
            db,
            _PAST_CAP.format("WHERE entry = ?"),
            (entry, left + PASS_OVER, retention.per_entry, min(count - retention.per_entry, left)),
        )
    excess = db.execute("SELECT COUNT(*) FROM run").fetchone()[0] - retention.max_records
    if left > 0 and excess > 0:
        left -= _delete_runs(
            db, _PAST_CAP.format(""), (left + PASS_OVER, retention.max_records, left)
        )
    return limit - left


def _trim_missed(db: sqlite3.Connection, retention: Retention, cutoff: int, limit: int) -> int:
    """Missed records older than `cutoff`, then the oldest past `max_records`."""
    oldest = (
        "DELETE FROM missed WHERE (entry, reason, first_us) IN (SELECT entry, reason, first_us "
        "FROM missed {} ORDER BY recorded_us, entry, reason, first_us LIMIT ?)"
    )
    gone = int(db.execute(oldest.format("WHERE recorded_us < ?"), (cutoff, limit)).rowcount)
    excess = db.execute("SELECT COUNT(*) FROM missed").fetchone()[0] - retention.max_records
    if gone < limit and excess > 0:
        gone += int(db.execute(oldest.format(""), (min(excess, limit - gone),)).rowcount)
    return gone


class SQLiteRunHistory(SQLiteFile):
    """The run, attempt, missed and entry_summary tables, read and kept (see the module doc)."""

    def _holds_history(self) -> bool:
        """Whether the file has the history's layout (only a read-only open may lack it)."""
        if not self.read_only or self._history_tables:
            return True
        self._history_tables = self._run(has_history, write=False)
        return self._history_tables

    def _records(self, db: sqlite3.Connection, rows: list[Any]) -> list[RunRecord]:
        """The records of `rows` (of `_RUN_COLUMNS`) with their attempts, in their order: the
        ended ones, then the one open in the run's message, if any (`OPEN_ATTEMPTS`)."""
        attempts: dict[int, list[Attempt]] = {row[0]: [] for row in rows}
        for row in db.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempt "
            "WHERE run IN (SELECT value FROM json_each(?)) ORDER BY run, number",
            (json.dumps(list(attempts)),),
        ):
            attempts[row[0]].append(_attempt(row))
        seqs = {row[1]: row[0] for row in rows}
        for run_id, consumer, host, pid, started in db.execute(
            OPEN_ATTEMPTS, (json.dumps(list(seqs)),)
        ):
            held = attempts[seqs[run_id]]
            number = held[-1].number + 1 if held else 1
            held.append(Attempt(number, consumer, host, pid, from_micros(started)))
        return [_run_record(row, tuple(attempts[row[0]])) for row in rows]

    def runs(self, query: HistoryQuery) -> list[RunRecord]:
        if not self._holds_history():
            return []
        where, params = ["1"], list[object]()
        if query.entry is not None:
            where.append("entry = ?")
            params.append(query.entry)
        if query.since is not None:
            where.append("published_us >= ?")
            params.append(to_micros(query.since))
        chosen = " AND ".join(where)
        finished = f" AND overdue_us IS NULL AND NOT {_FINISHED}" if query.unfinished else ""
        newest = "ORDER BY published_us DESC, id DESC LIMIT ?"
        held = f"SELECT {_RUN_COLUMNS} FROM run WHERE {chosen}{finished} {newest}"
        of_run = "entry = ?" if query.entry is not None else "1"
        queued = f"SELECT * FROM ({queued_runs(of_run)}) WHERE {chosen} {newest}"  # never finished
        logged = f"SELECT * FROM ({LOGGED_RUNS}) WHERE {chosen} {newest}"

        def read(db: sqlite3.Connection) -> list[RunRecord]:
            rows = db.execute(held, (*params, query.limit)).fetchall()
            inner = (query.entry,) if query.entry is not None else ()
            rows += db.execute(queued, (*inner, *params, query.limit)).fetchall()
            records = self._records(db, rows)
            for row in db.execute(logged, (*params, query.limit)):
                done = _logged_record(row)
                if not (query.unfinished and done.finished):
                    records.append(done)
            records = _audited(db, records)
            records.sort(key=_newest_first, reverse=True)
            return records[: query.limit]

        return self._run(read, write=False)

    def run(self, run_id: str) -> RunRecord | None:
        if not self._holds_history():
            return None

        def read(db: sqlite3.Connection) -> list[RunRecord]:
            rows = db.execute(f"SELECT {_RUN_COLUMNS} FROM run WHERE id = ?", (run_id,))
            found = rows.fetchall()
            if not found:
                logged = f"SELECT * FROM ({LOGGED_RUNS}) WHERE id = ?"
                done = db.execute(logged, (run_id,)).fetchall()
                if done:
                    return _audited(db, [_logged_record(done[0])])
                queued = f"SELECT * FROM ({queued_runs('id = ?')})"
                found = db.execute(queued, (run_id,)).fetchall()
            return _audited(db, self._records(db, found))

        found = self._run(read, write=False)
        return found[0] if found else None

    def missed(
        self, entry: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[MissedRecord]:
        if not self._holds_history():
            return []
        where, params = ["1"], list[object]()
        if entry is not None:
            where.append("entry = ?")
            params.append(entry)
        if since is not None:
            where.append("recorded_us >= ?")
            params.append(to_micros(since))
        sql = (
            f"SELECT {_MISSED_COLUMNS} FROM missed WHERE {' AND '.join(where)} "
            "ORDER BY recorded_us DESC, entry DESC, reason DESC, first_us DESC LIMIT ?"
        )
        rows = self._run(lambda db: db.execute(sql, (*params, limit)).fetchall(), write=False)
        return [_missed_record(row) for row in rows]

    def summaries(self, entries: Sequence[str] | None = None) -> dict[str, EntrySummary]:
        if not self._holds_history():
            return {}
        chosen, params = "", tuple[object, ...]()
        if entries is not None:
            chosen = "WHERE entry IN (SELECT value FROM json_each(?))"
            params = (json.dumps(list(entries)),)

        def read(db: sqlite3.Connection) -> dict[str, SummaryRow]:
            """The stored summaries, with the runs logged since the last fold counted."""
            sql = f"SELECT {_SUMMARY_COLUMNS} FROM entry_summary {chosen}"
            held = {row[0]: row for row in db.execute(sql, params)}
            ends = db.execute(_LOGGED_ENDS.format(chosen.replace("WHERE", "AND")), params)
            return held | _counted(held, ends)

        return {entry: _summary(row) for entry, row in self._run(read, write=False).items()}

    def trimmed_up_to(self, entry: str) -> datetime | None:
        if not self._holds_history():
            return None
        row = self._run(
            lambda db: db.execute(
                "SELECT slot_us FROM run_trimmed WHERE entry = ?", (entry,)
            ).fetchone(),
            write=False,
        )
        return None if row is None else from_micros(row[0])

    def history_size(self) -> tuple[int, int]:
        if not self._holds_history():
            return 0, 0
        row = self._run(
            lambda db: db.execute(
                f"SELECT (SELECT COUNT(*) FROM run) + (SELECT COUNT(*) FROM ({QUEUED_RUNS})) "
                f"+ (SELECT COUNT(*) FROM ({LOGGED_RUNS})), "
                "(SELECT COUNT(*) FROM missed)"
            ).fetchone(),
            write=False,
        )
        return int(row[0]), int(row[1])

    def _changed(self, sql: str, params: tuple[object, ...]) -> bool:
        if not self.history:  # opened with history=False: it writes none
            return False
        return int(self._run(lambda db: db.execute(sql, params).rowcount)) == 1

    def _run_changed(self, run_id: str, sql: str, params: tuple[object, ...]) -> bool:
        """`_changed` for a run's record, moved to `run` first if it is queued."""

        def work(db: sqlite3.Connection) -> bool:
            _move_unless_held(db, run_id)
            return int(db.execute(sql, params).rowcount) == 1

        return self.history and self._run(work)

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        return self._run_changed(
            run_id,
            "UPDATE run SET overdue_us = ? "
            f"WHERE id = ? AND overdue_us IS NULL AND NOT {_FINISHED_BY}",
            (to_micros(at), run_id, to_micros(at)),
        )

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        return self._changed(
            "UPDATE missed SET overdue_us = ? "
            "WHERE entry = ? AND reason = ? AND first_us = ? AND overdue_us IS NULL",
            (to_micros(at), entry, reason, to_micros(first)),
        )

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        return self._run_changed(
            run_id,
            "UPDATE run SET received_us = ? WHERE id = ? AND received_us IS NULL",
            (to_micros(at), run_id),
        )

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        when = to_micros(at)

        def work(db: sqlite3.Connection) -> bool:
            _move_unless_held(db, run_id)
            repeat = db.execute(
                "SELECT 1 FROM attempt WHERE run = (SELECT seq FROM run WHERE id = ?) "
                "AND ended_us IS NULL AND consumer = ? AND started_us = ?",
                (run_id, consumer, when),
            ).fetchone()
            return repeat is None and start_attempt(db, run_id, consumer, host, pid, when)

        return self.history and self._run(work)

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        when = to_micros(at)

        def work(db: sqlite3.Connection) -> bool:
            ended = _event_ended(db, run_id, ending, when)
            if ended and ending.outcome in FINAL:
                self._run_final(db, run_id)
            return ended

        return self.history and self._run(work)

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        def work(db: sqlite3.Connection) -> int:
            cutoff = micros(self._now() - retention.max_age.total_seconds())
            fold(db)
            db.execute(MOVE_QUEUED)  # the logged and queued runs' records too
            gone = _trim_runs(db, retention, cutoff, limit)
            return gone + _trim_missed(db, retention, cutoff, limit - gone)

        return self._run(work) if self._holds_history() else 0

    def export_runs(self, batch: int = 1000) -> Iterator[list[RunRecord]]:
        """The runs in `run` by seq, then the queued ones by message (each read `batch` at a
        time), in batches of `batch`."""
        if not self._holds_history():
            return
        held = f"SELECT {_RUN_COLUMNS} FROM run WHERE seq > ? ORDER BY seq LIMIT ?"
        queued = f"SELECT * FROM ({QUEUED_RUNS}) WHERE seq < ? ORDER BY seq DESC LIMIT ?"
        pending: list[RunRecord] = list(self._run(self._logged_runs, write=False))
        for sql, start in ((held, -1), (queued, 1)):
            for records in self._batches(sql, start, batch):
                pending += records
                while len(pending) >= batch:
                    yield pending[:batch]
                    pending = pending[batch:]
        if pending:
            yield pending

    def _logged_runs(self, db: sqlite3.Connection) -> list[RunRecord]:
        """The runs logged in `run_done` (at most a fold's worth)."""
        return _audited(
            db, [_logged_record(row) for row in db.execute(f"{LOGGED_RUNS} ORDER BY logged")]
        )

    def _batches(self, sql: str, after: int, batch: int) -> Iterator[list[RunRecord]]:
        """The records `sql` reads past seq `after`, `batch` at a time."""
        while True:
            after, records = self._run(
                partial(self._after, sql=sql, after=after, batch=batch), write=False
            )
            if not records:
                return
            yield records

    def _after(
        self, db: sqlite3.Connection, sql: str, after: int, batch: int
    ) -> tuple[int, list[RunRecord]]:
        """The batch of runs `sql` reads past seq `after`, and the last seq in it."""
        rows = db.execute(sql, (after, batch)).fetchall()
        return (rows[-1][0] if rows else after), _audited(db, self._records(db, rows))

    def export_missed(self) -> list[MissedRecord]:
        if not self._holds_history():
            return []
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_MISSED_COLUMNS} FROM missed ORDER BY recorded_us"
            ).fetchall(),
            write=False,
        )
        return [_missed_record(row) for row in rows]

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        def work(db: sqlite3.Connection) -> int:
            fold(db)
            db.execute(MOVE_QUEUED)  # a logged or queued run's record is held
            added = sum(_import_run(db, run) for run in runs)
            added += db.executemany(
                _MISSED,
                [
                    (
                        m.slots.entry,
                        m.slots.reason,
                        to_micros(m.slots.first),
                        to_micros(m.slots.last),
                        m.slots.total,
                        to_micros(m.recorded_at),
                        m.node,
                        m.epoch,
                        _us(m.overdue_at),
                    )
                    for m in missed
                ],
            ).rowcount
            for s in summaries:
                _import_summary(db, s)
            return added

        return self._run(work)


def _import_run(db: sqlite3.Connection, run: RunRecord) -> int:
    """Store a copied run and its attempts unless its id is held: 1 if stored, else 0."""
    stored = db.execute(
        _COPIED,
        (
            run.id,
            run.entry,
            to_micros(run.slot),
            to_micros(run.due),
            to_micros(run.published_at),
            run.node,
            run.epoch,
            run.kind,
            int(run.celery),
            _us(run.received_at),
            _us(run.overdue_at),
        ),
    ).fetchall()
    if not stored:
        return 0
    if run.audit is not None:
        db.execute("INSERT OR IGNORE INTO run_audit (id, audit) VALUES (?, ?)", (run.id, run.audit))
    db.executemany(
        _ATTEMPT,
        [
            (
                stored[0][0],
                a.number,
                a.consumer,
                a.host,
                a.pid,
                to_micros(a.started_at),
                _us(a.ended_at),
                a.outcome,
                a.reason,
                a.error_type,
                a.error,
            )
            for a in run.attempts
        ],
    )
    return 1


def _import_summary(db: sqlite3.Connection, summary: EntrySummary) -> None:
    """Store a copied summary unless the one held finished later (a tie: the copy wins, over
    one the copied runs just computed)."""
    duration = summary.last_duration
    db.execute(
        "INSERT INTO entry_summary (entry, last_status, last_finished_us, last_duration_us, "
        "last_success_us, last_failure_us, consecutive_failures) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (entry) DO UPDATE SET last_status = excluded.last_status, "
        "last_finished_us = excluded.last_finished_us, "
        "last_duration_us = excluded.last_duration_us, "
        "last_success_us = excluded.last_success_us, "
        "last_failure_us = excluded.last_failure_us, "
        "consecutive_failures = excluded.consecutive_failures "
        "WHERE excluded.last_finished_us >= entry_summary.last_finished_us",
        (
            summary.entry,
            summary.last_status,
            to_micros(summary.last_finished_at),
            None if duration is None else duration // timedelta(microseconds=1),
            _us(summary.last_success_at),
            _us(summary.last_failure_at),
            summary.consecutive_failures,
        ),
    )
