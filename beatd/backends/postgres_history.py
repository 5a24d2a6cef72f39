"""PostgreSQL's `RunHistory` role: reads of the run history and the leader's marks (deadlines,
Celery's task events); retention and `beatd migrate`'s copy are postgres_upkeep.py. The records
the commit, the claim and the settling steps write are theirs (postgres_records.py has the
statements).

Indexes (format 2, postgres_link.py): `run_entry_newest` (entry, published_us DESC, id DESC)
serves an entry's newest runs and the per-entry trim, `run_newest` the newest of all and the
age and total trims; the table `run_open` is the index of the runs a deadline may still mark
(neither finished nor overdue), as small as the runs in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from beatd.backends.base import from_micros, to_micros
from beatd.backends.postgres_link import PostgresLink
from beatd.backends.postgres_records import (
    ATTEMPT_COLUMNS,
    FINAL_SQL,
    MISSED_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    attempt_value,
    end_history,
    last_attempt,
    missed_record,
    run_record,
    summary_value,
)
from beatd.history import (
    FINAL,
    Attempt,
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    RunRecord,
)

Db = psycopg.Connection[Any]


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
            where.append(f"id IN (SELECT run_id FROM {self.schema}.run_open)")
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

    def trimmed_up_to(self, entry: str) -> datetime | None:
        sql = f"SELECT slot_us FROM {self.schema}.run_trimmed WHERE entry = %s"
        row = self._run(lambda db: db.execute(sql, (entry,)).fetchone(), write=False)
        return None if row is None else from_micros(int(row[0]))

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
        # unfinished (in run_open), or finished after `at` (it finished while no leader
        # watched its deadline): either way not finished by `at`
        by_then = last_attempt(self.schema, "r", f"a.outcome IN ({FINAL_SQL}) AND a.ended_us <= %s")
        moment = to_micros(at)
        return self._changed(
            f"WITH closed AS (DELETE FROM {self.schema}.run_open WHERE run_id = %s) "
            f"UPDATE {self.schema}.run r SET overdue_us = %s WHERE r.id = %s "
            f"AND r.overdue_us IS NULL AND NOT coalesce({by_then}, false)",
            (run_id, moment, run_id, moment),
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
            f"INSERT INTO {self.schema}.run_open SELECT id, published_us FROM {self.schema}.run "
            "WHERE id = %s AND overdue_us IS NULL ON CONFLICT DO NOTHING",
            (run_id,),
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
            if ending.outcome in FINAL:
                self._run_ended(db, run_id)
            return True

        return self._run(work)
