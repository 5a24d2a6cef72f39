"""PostgreSQL's run history records (beatd.history): the tables `run`, `attempt`, `missed` and
`entry_summary` of format 2 (postgres_link.py), their rows as values and back, and the
statements that write them inside the other parts' transactions (the reads and the leader's
marks are `PostgresRunHistory`, postgres_history.py).

The published records are inserted by the commit's transaction (`insert_published`,
`insert_missed`); an attempt starts in the claim's statement (`CLAIM_HISTORY`) and ends in the
settling statement (`settle_sql`), so an end is written if and only if its queue write was: one
statement, one transaction. Times are the database's clock in microseconds (`NOW_US`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from beatd.backends.base import Lease, Outgoing, StateWrite, from_micros, is_celery_run, to_micros
from beatd.backends.postgres_link import NOW_US
from beatd.history import (
    FAILED_FINALLY,
    FINAL,
    Attempt,
    Ending,
    EntrySummary,
    MissedRecord,
    MissedSlots,
    RunKind,
    RunRecord,
)

RUN_COLUMNS = (
    "id, entry, slot_us, due_us, published_us, node, epoch, kind, celery, received_us, overdue_us, "
    "audit"
)
ATTEMPT_COLUMNS = (
    "run_id, number, consumer, host, pid, started_us, ended_us, outcome, reason, error_type, error"
)
MISSED_COLUMNS = "entry, reason, first_us, last_us, total, recorded_us, node, epoch, overdue_us"
SUMMARY_COLUMNS = (
    "entry, last_status, last_finished_us, last_duration_us, last_success_us, last_failure_us, "
    "consecutive_failures"
)
_FAILED = ", ".join(f"'{o.value}'" for o in sorted(FAILED_FINALLY))
FINAL_SQL = ", ".join(f"'{o.value}'" for o in sorted(FINAL))


def last_attempt(schema: str, run: str, what: str) -> str:
    """A scalar subquery: `what` (over the attempt `a`) of the last attempt of the run aliased
    `run`; NULL when it has none (a lookup of attempt's primary key)."""
    return (
        f"(SELECT {what} FROM {schema}.attempt a WHERE a.run_id = {run}.id "
        "ORDER BY a.number DESC LIMIT 1)"
    )


def finished(schema: str, run: str) -> str:
    """A condition: the run aliased `run` finished (its last attempt's outcome is final)."""
    return f"coalesce({last_attempt(schema, run, f'a.outcome IN ({FINAL_SQL})')}, false)"


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _moment(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def published_records(
    schema: str, lease: Lease, messages: Sequence[Outgoing], now_us: int
) -> tuple[str, tuple[Any, ...]]:
    """A CTE (for `insert_messages`) that inserts the published record of each message that has
    a slot (a run id already held is kept), published at `now_us` (the commit's one reading of
    the database's clock), and its parameters; ("", ()) when none has a slot."""
    runs = [m for m in messages if m.slot is not None]
    if not runs:
        return "", ()
    # the audit ids only when a run has one (a manual or backfill run): psycopg dumps an array
    # of nothing but NULLs in text format, element by element, for nothing
    audits = [m.audit for m in runs]
    audited = any(a is not None for a in audits)
    sql = (
        f"WITH published AS (INSERT INTO {schema}.run "
        "(id, entry, slot_us, due_us, published_us, node, epoch, kind, celery, audit) "
        f"SELECT id, entry, slot, due, %s, %s, %s, kind, celery, {'audit' if audited else 'NULL'} "
        "FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::text[], "
        f"%b::boolean[]{', %b::text[]' if audited else ''}) "
        f"AS r(id, entry, slot, due, kind, celery{', audit' if audited else ''}) "
        "ON CONFLICT (id) DO NOTHING RETURNING id, published_us), "
        f"opened AS (INSERT INTO {schema}.run_open SELECT id, published_us FROM published) "
    )
    return sql, (
        now_us,
        lease.node,
        lease.epoch,
        [m.id for m in runs],
        [m.entry for m in runs],
        [_micros(m.slot) for m in runs],
        [_micros(m.due or m.slot) for m in runs],
        [m.kind.value for m in runs],
        [is_celery_run(m.destination) for m in runs],
        *((audits,) if audited else ()),
    )


def insert_missed(
    db: psycopg.Connection[Any],
    schema: str,
    lease: Lease,
    writes: Sequence[StateWrite],
    applied: set[str],
    now_us: int,
    replaced: Sequence[MissedSlots] = (),
) -> None:
    """One missed-slot record per item of each applied write and per held run a hold replaced
    (`replaced`; a key already held is kept), recorded at `now_us`."""
    missed = [m for w in writes if w.state.entry in applied for m in w.missed]
    missed += replaced
    if not missed:
        return
    db.execute(
        f"INSERT INTO {schema}.missed (entry, reason, first_us, last_us, total, recorded_us, "
        "node, epoch) SELECT entry, reason, first, last, total, %s, %s, %s "
        "FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::int[]) "
        "AS m(entry, reason, first, last, total) ON CONFLICT DO NOTHING",
        (
            now_us,
            lease.node,
            lease.epoch,
            [m.entry for m in missed],
            [m.reason for m in missed],
            [to_micros(m.first) for m in missed],
            [to_micros(m.last) for m in missed],
            [m.total for m in missed],
        ),
    )


def claim_history(schema: str) -> str:
    """CTEs that follow a `claimed(id, ...)` CTE: end the run's open attempt `lost`, reopen a
    finished run not marked overdue (a dead letter requeued), start the next attempt; only for
    a run held."""
    return (
        f", lost AS (UPDATE {schema}.attempt a SET ended_us = {NOW_US}, outcome = 'lost' "
        "FROM claimed c WHERE a.run_id = c.id AND a.ended_us IS NULL), "
        f"reopened AS (INSERT INTO {schema}.run_open SELECT r.id, r.published_us "
        f"FROM claimed c JOIN {schema}.run r ON r.id = c.id WHERE r.overdue_us IS NULL "
        "ON CONFLICT DO NOTHING), "
        f"started AS (INSERT INTO {schema}.attempt (run_id, number, consumer, host, pid, "
        f"started_us) SELECT r.id, coalesce((SELECT max(number) FROM {schema}.attempt "
        f"WHERE run_id = r.id), 0) + 1, %(consumer)s, %(host)s, %(pid)s, {NOW_US} "
        f"FROM claimed c JOIN {schema}.run r ON r.id = c.id)"
    )


def end_history(schema: str, ending: Ending, source: str, at: str) -> tuple[str, dict[str, Any]]:
    """CTEs that end the open attempt of each run in `source(id)` with `ending` at the SQL time
    `at`, and for a final outcome close the run (`run_open`) and update its entry's summary; with
    their parameters."""
    params = {
        "outcome": ending.outcome.value,
        "reason": ending.reason,
        "error_type": ending.error_type,
        "error": ending.error,
    }
    sql = (
        f", ended AS (UPDATE {schema}.attempt a SET ended_us = {at}, outcome = %(outcome)s, "
        "reason = %(reason)s, error_type = %(error_type)s, error = %(error)s "
        f"FROM {source} s WHERE a.run_id = s.id AND a.ended_us IS NULL "
        "RETURNING a.run_id, a.started_us, a.ended_us)"
    )
    if ending.outcome not in FINAL:
        return sql, params
    return sql + (
        f", closed AS (DELETE FROM {schema}.run_open o USING ended e WHERE o.run_id = e.run_id), "
        f"fin AS (SELECT r.entry, e.started_us, e.ended_us FROM ended e "
        f"JOIN {schema}.run r ON r.id = e.run_id), "
        f"summary AS (INSERT INTO {schema}.entry_summary AS m ({SUMMARY_COLUMNS}) "
        "SELECT entry, %(outcome)s, ended_us, ended_us - started_us, "
        "CASE WHEN %(outcome)s = 'succeeded' THEN ended_us END, "
        f"CASE WHEN %(outcome)s IN ({_FAILED}) THEN ended_us END, "
        f"CASE WHEN %(outcome)s IN ({_FAILED}) THEN 1 ELSE 0 END FROM fin "
        "ON CONFLICT (entry) DO UPDATE SET last_status = EXCLUDED.last_status, "
        "last_finished_us = EXCLUDED.last_finished_us, "
        "last_duration_us = EXCLUDED.last_duration_us, "
        "last_success_us = coalesce(EXCLUDED.last_success_us, m.last_success_us), "
        "last_failure_us = coalesce(EXCLUDED.last_failure_us, m.last_failure_us), "
        "consecutive_failures = CASE WHEN EXCLUDED.last_status = 'succeeded' THEN 0 "
        "ELSE m.consecutive_failures + EXCLUDED.consecutive_failures END)"
    ), params


def run_record(row: Sequence[Any], attempts: Sequence[Attempt]) -> RunRecord:
    rid, entry, slot, due, published, node, epoch, kind, celery, received, overdue, audit = row
    return RunRecord(
        rid,
        entry,
        from_micros(slot),
        from_micros(due),
        from_micros(published),
        node,
        int(epoch),
        RunKind(kind),
        bool(celery),
        tuple(attempts),
        _moment(received),
        _moment(overdue),
        audit,
    )


def attempt_value(row: Sequence[Any]) -> Attempt:
    _, number, consumer, host, pid, started, ended, outcome, reason, error_type, error = row
    return Attempt(
        number,
        consumer,
        host,
        pid,
        from_micros(started),
        _moment(ended),
        outcome,
        reason,
        error_type,
        error,
    )


def attempt_row(run_id: str, a: Attempt) -> tuple[Any, ...]:
    return (
        run_id,
        a.number,
        a.consumer,
        a.host,
        a.pid,
        to_micros(a.started_at),
        _micros(a.ended_at),
        a.outcome,
        a.reason,
        a.error_type,
        a.error,
    )


def missed_record(row: Sequence[Any]) -> MissedRecord:
    entry, reason, first, last, total, recorded, node, epoch, overdue = row
    slots = MissedSlots(entry, reason, from_micros(first), from_micros(last), int(total))
    return MissedRecord(slots, from_micros(recorded), node, int(epoch), _moment(overdue))


def missed_row(m: MissedRecord) -> tuple[Any, ...]:
    s = m.slots
    return (
        s.entry,
        s.reason,
        to_micros(s.first),
        to_micros(s.last),
        s.total,
        to_micros(m.recorded_at),
        m.node,
        m.epoch,
        _micros(m.overdue_at),
    )


def summary_value(row: Sequence[Any]) -> EntrySummary:
    entry, status, finished, duration, success, failure, failures = row
    return EntrySummary(
        entry,
        status,
        from_micros(finished),
        None if duration is None else timedelta(microseconds=duration),
        _moment(success),
        _moment(failure),
        int(failures),
    )


def summary_row(s: EntrySummary) -> tuple[Any, ...]:
    duration = None if s.last_duration is None else s.last_duration // timedelta(microseconds=1)
    return (
        s.entry,
        s.last_status,
        to_micros(s.last_finished_at),
        duration,
        _micros(s.last_success_at),
        _micros(s.last_failure_at),
        s.consecutive_failures,
    )
