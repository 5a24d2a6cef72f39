"""PostgreSQL's `RunHistory` role: reads of the run history, the leader's marks (deadlines,
Celery's task events), retention and `beatd migrate`'s copy. The records the commit, the claim
and the settling steps write are theirs (postgres_records.py has the statements).

Indexes (format 2, postgres_link.py): `run_entry_newest` (entry, published_us DESC, id DESC)
serves an entry's newest runs and the per-entry trim, `run_newest` the newest of all and the
age and total trims, `run_unfinished` (partial) the runs a deadline may still mark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg

from beatd.backends.base import to_micros
from beatd.backends.postgres_link import NOW_US, PostgresLink
from beatd.backends.postgres_records import (
    ATTEMPT_COLUMNS,
    MISSED_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    attempt_row,
    attempt_value,
    end_history,
    missed_record,
    missed_row,
    run_record,
    summary_row,
    summary_value,
)
from beatd.history import (
    Attempt,
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    Retention,
    RunRecord,
)

Db = psycopg.Connection[Any]
RUN_OLDEST = "published_us, id"  # the order trims delete in
MISSED_OLDEST = "recorded_us, entry, reason, first_us"


class PostgresRunHistory(PostgresLink):
    """The tables run, attempt, missed and entry_summary."""

    def runs(self, query: HistoryQuery) -> list[RunRecord]:
        where: list[str] = ["true"]
        params: list[Any] = []
        if query.entry is not None:
            where.append("entry = %s")
            params.append(query.entry)
        if query.since is not None:
            where.append("published_us >= %s")
            params.append(to_micros(query.since))
        if query.unfinished:
            where.append("NOT finished AND overdue_us IS NULL")
        sql = (
            f"SELECT {RUN_COLUMNS} FROM {self.schema}.run WHERE {' AND '.join(where)} "
            "ORDER BY published_us DESC, id DESC LIMIT %s"
        )
        return self._run(lambda db: self._records(db, sql, (*params, query.limit)), write=False)

    def run(self, run_id: str) -> RunRecord | None:
        sql = f"SELECT {RUN_COLUMNS} FROM {self.schema}.run WHERE id = %s"
        found = self._run(lambda db: self._records(db, sql, (run_id,)), write=False)
        return found[0] if found else None

    def _records(self, db: Db, sql: str, params: Sequence[Any]) -> list[RunRecord]:
        rows = db.execute(sql, params).fetchall()
        attempts: dict[str, list[Attempt]] = {row[0]: [] for row in rows}
        if rows:
            for row in db.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM {self.schema}.attempt WHERE run_id = ANY(%s) "
                "ORDER BY run_id, number",
                (list(attempts),),
            ):
                attempts[row[0]].append(attempt_value(row))
        return [run_record(row, attempts[row[0]]) for row in rows]

    def missed(
        self, entry: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[MissedRecord]:
        sql = (
            f"SELECT {MISSED_COLUMNS} FROM {self.schema}.missed "
            "WHERE (%s::text IS NULL OR entry = %s) AND (%s::bigint IS NULL OR recorded_us >= %s) "
            "ORDER BY recorded_us DESC, first_us DESC LIMIT %s"
        )
        at = None if since is None else to_micros(since)
        rows = self._run(
            lambda db: db.execute(sql, (entry, entry, at, at, limit)).fetchall(), write=False
        )
        return [missed_record(row) for row in rows]

    def summaries(self, entries: Sequence[str] | None = None) -> dict[str, EntrySummary]:
        sql = (
            f"SELECT {SUMMARY_COLUMNS} FROM {self.schema}.entry_summary "
            "WHERE %s::text[] IS NULL OR entry = ANY(%s)"
        )
        names = None if entries is None else list(entries)
        rows = self._run(lambda db: db.execute(sql, (names, names)).fetchall(), write=False)
        return {row[0]: summary_value(row) for row in rows}

    def history_size(self) -> tuple[int, int]:
        row = self._run(
            lambda db: db.execute(
                f"SELECT (SELECT count(*) FROM {self.schema}.run), "
                f"(SELECT count(*) FROM {self.schema}.missed)"
            ).fetchone(),
            write=False,
        )
        assert row is not None
        return int(row[0]), int(row[1])

    # --- the leader's marks and Celery's task events ----------------------------------------

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        if not self.history:
            return False
        return bool(self._run(lambda db: db.execute(sql, params).rowcount) == 1)

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        return self._changed(
            f"UPDATE {self.schema}.run SET overdue_us = %s "
            "WHERE id = %s AND NOT finished AND overdue_us IS NULL",
            (to_micros(at), run_id),
        )

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        return self._changed(
            f"UPDATE {self.schema}.missed SET overdue_us = %s "
            "WHERE entry = %s AND reason = %s AND first_us = %s AND overdue_us IS NULL",
            (to_micros(at), entry, reason, to_micros(first)),
        )

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        return self._changed(
            f"UPDATE {self.schema}.run SET received_us = %s WHERE id = %s AND received_us IS NULL",
            (to_micros(at), run_id),
        )

    def _last_attempt(self, db: Db, run_id: str) -> tuple[Any, ...] | None:
        """Lock the run (None when not held) and read its last attempt's number, consumer,
        start, end and outcome ((0, ...) when it has none)."""
        if (
            db.execute(
                f"SELECT 1 FROM {self.schema}.run WHERE id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            is None
        ):
            return None
        last = db.execute(
            "SELECT number, consumer, started_us, ended_us, outcome "
            f"FROM {self.schema}.attempt WHERE run_id = %s ORDER BY number DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return tuple(last) if last is not None else (0, None, None, None, None)

    def _start(self, db: Db, run_id: str, number: int, who: tuple[Any, ...], at: int) -> None:
        db.execute(
            f"UPDATE {self.schema}.attempt SET ended_us = %s, outcome = 'lost' "
            "WHERE run_id = %s AND ended_us IS NULL",
            (at, run_id),
        )
        db.execute(
            f"UPDATE {self.schema}.run SET finished = false WHERE id = %s AND finished", (run_id,)
        )
        db.execute(
            f"INSERT INTO {self.schema}.attempt (run_id, number, consumer, host, pid, "
            "started_us) VALUES (%s, %s, %s, %s, %s, %s)",
            (run_id, number, *who, at),
        )

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        if not self.history:
            return False
        moment = to_micros(at)

        def work(db: Db) -> bool:
            last = self._last_attempt(db, run_id)
            if last is None:
                return False
            number, last_consumer, started, ended, _ = last
            if ended is None and (last_consumer, started) == (consumer, moment):
                return False  # the same event again
            self._start(db, run_id, number + 1, (consumer, host, pid), moment)
            return True

        return self._run(work)

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        if not self.history:
            return False
        moment = to_micros(at)

        def work(db: Db) -> bool:
            last = self._last_attempt(db, run_id)
            if last is None:
                return False
            number, _, _, ended, outcome = last
            if ended is not None or number == 0:
                if (ended, outcome) == (moment, ending.outcome.value):
                    return False  # the same event again
                self._start(db, run_id, number + 1, ("", "", None), moment)
            history, params = end_history(self.schema, ending, "src", "%(at)s")
            db.execute(
                f"WITH src AS (SELECT %(run_id)s::text AS id){history} SELECT 1",
                {**params, "run_id": run_id, "at": moment},
            )
            return True

        return self._run(work)

    # --- retention ---------------------------------------------------------------------------

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        max_age_us = int(retention.max_age.total_seconds() * 1_000_000)

        def work(db: Db) -> int:
            row = db.execute(f"SELECT {NOW_US} - %s", (max_age_us,)).fetchone()
            assert row is not None
            cutoff, left = int(row[0]), limit
            steps: tuple[Callable[[int], int], ...] = (
                lambda n: self._trim_old(db, "run", RUN_OLDEST, cutoff, n),
                lambda n: self._trim_per_entry(db, retention.per_entry, n),
                lambda n: self._trim_total(db, "run", RUN_OLDEST, retention.max_records, n),
                lambda n: self._trim_old(db, "missed", MISSED_OLDEST, cutoff, n),
                lambda n: self._trim_total(db, "missed", MISSED_OLDEST, retention.max_records, n),
            )
            for step in steps:
                if left > 0:
                    left -= step(left)
            return limit - left

        return self._run(work)

    def _trim_old(self, db: Db, table: str, oldest: str, cutoff: int, n: int) -> int:
        """The oldest `n` rows of `table` (ordered by `oldest`, its time first) before
        `cutoff`."""
        column = oldest.split(",")[0]
        return db.execute(
            f"DELETE FROM {self.schema}.{table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
            f"{self.schema}.{table} WHERE {column} < %s ORDER BY {oldest} LIMIT %s))",
            (cutoff, n),
        ).rowcount

    def _trim_total(self, db: Db, table: str, oldest: str, keep: int, n: int) -> int:
        row = db.execute(f"SELECT count(*) FROM {self.schema}.{table}").fetchone()
        excess = 0 if row is None else int(row[0]) - keep
        if excess <= 0:
            return 0
        return db.execute(
            f"DELETE FROM {self.schema}.{table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
            f"{self.schema}.{table} ORDER BY {oldest} LIMIT %s))",
            (min(excess, n),),
        ).rowcount

    def _trim_per_entry(self, db: Db, keep: int, n: int) -> int:
        """Each entry's runs past its newest `keep`: the entries by a loose scan of
        run_entry_newest, then each one's tail from the same index."""
        run = f"{self.schema}.run"
        return db.execute(
            "WITH RECURSIVE e(entry) AS ("
            f"(SELECT entry FROM {run} ORDER BY entry LIMIT 1) UNION ALL "
            f"SELECT (SELECT r.entry FROM {run} r WHERE r.entry > e.entry ORDER BY r.entry "
            "LIMIT 1) FROM e WHERE e.entry IS NOT NULL) "
            f"DELETE FROM {run} WHERE id IN (SELECT x.id FROM e CROSS JOIN LATERAL "
            f"(SELECT id FROM {run} r WHERE r.entry = e.entry "
            "ORDER BY published_us DESC, id DESC OFFSET %s LIMIT %s) x LIMIT %s)",
            (keep, n, n),
        ).rowcount

    # --- beatd migrate -----------------------------------------------------------------------

    def export_runs(self, batch: int = 1000) -> Iterator[list[RunRecord]]:
        after = ""
        while True:
            records = self._run_batch(after, batch)
            if records:
                yield records
            if len(records) < batch:
                return
            after = records[-1].id

    def _run_batch(self, after: str, batch: int) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM {self.schema}.run WHERE id > %s ORDER BY id LIMIT %s"
        return self._run(lambda db: self._records(db, sql, (after, batch)), write=False)

    def export_missed(self) -> list[MissedRecord]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {MISSED_COLUMNS} FROM {self.schema}.missed ORDER BY recorded_us"
            ).fetchall(),
            write=False,
        )
        return [missed_record(row) for row in rows]

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        def work(db: Db) -> int:
            return self._import_runs(db, runs) + self._import_rest(db, missed, summaries)

        return self._run(work)

    def _import_runs(self, db: Db, runs: Sequence[RunRecord]) -> int:
        held = {
            rid
            for (rid,) in db.execute(
                f"SELECT id FROM {self.schema}.run WHERE id = ANY(%s)", ([r.id for r in runs],)
            )
        }
        new = list({r.id: r for r in runs if r.id not in held}.values())
        with db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.schema}.run ({RUN_COLUMNS}, finished) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                [
                    (
                        r.id,
                        r.entry,
                        to_micros(r.slot),
                        to_micros(r.due),
                        to_micros(r.published_at),
                        r.node,
                        r.epoch,
                        r.kind.value,
                        r.celery,
                        None if r.received_at is None else to_micros(r.received_at),
                        None if r.overdue_at is None else to_micros(r.overdue_at),
                        r.finished,
                    )
                    for r in new
                ],
            )
            cursor.executemany(
                f"INSERT INTO {self.schema}.attempt ({ATTEMPT_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [attempt_row(r.id, a) for r in new for a in r.attempts],
            )
        return len(new)

    def _import_rest(
        self, db: Db, missed: Sequence[MissedRecord], summaries: Sequence[EntrySummary]
    ) -> int:
        added = 0
        for record in missed:
            added += db.execute(
                f"INSERT INTO {self.schema}.missed ({MISSED_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                missed_row(record),
            ).rowcount
        with db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.schema}.entry_summary AS m ({SUMMARY_COLUMNS}) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (entry) DO UPDATE SET "
                "last_status = EXCLUDED.last_status, "
                "last_finished_us = EXCLUDED.last_finished_us, "
                "last_duration_us = EXCLUDED.last_duration_us, "
                "last_success_us = EXCLUDED.last_success_us, "
                "last_failure_us = EXCLUDED.last_failure_us, "
                "consecutive_failures = EXCLUDED.consecutive_failures "
                "WHERE m.last_finished_us < EXCLUDED.last_finished_us",
                [summary_row(s) for s in summaries],
            )
        return added
