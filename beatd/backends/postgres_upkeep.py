"""PostgreSQL's run history kept in bounds and copied: retention's trims and `beatd migrate`'s
export and import (the rest of the `RunHistory` role is postgres_history.py). No foreign key
ties attempts or open rows to their run, so every delete of runs here takes them along. The
per-entry and total caps pass over unfinished runs (their last attempt's outcome is not final:
a lookup of attempt's primary key per run past the cap, at most PASS_OVER more than the call
may delete); only the age deletes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from beatd.backends.base import to_micros
from beatd.backends.postgres_history import PostgresRunHistory
from beatd.backends.postgres_link import NOW_US
from beatd.backends.postgres_records import (
    ATTEMPT_COLUMNS,
    MISSED_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    attempt_row,
    finished,
    missed_record,
    missed_row,
    summary_row,
)
from beatd.history import PASS_OVER, EntrySummary, MissedRecord, Retention, RunKind, RunRecord

Db = psycopg.Connection[Any]
RUN_OLDEST = "published_us, id"  # the order trims delete in
RUN_NEWEST = "published_us DESC, id DESC"
MISSED_OLDEST = "recorded_us, entry, reason, first_us"


class PostgresHistoryUpkeep(PostgresRunHistory):
    """Trims by retention, and the copy of every record for `beatd migrate`."""

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
                lambda n: self._trim_total_runs(db, retention.max_records, n),
                lambda n: self._trim_old(db, "missed", MISSED_OLDEST, cutoff, n),
                lambda n: self._trim_total(db, "missed", MISSED_OLDEST, retention.max_records, n),
            )
            for step in steps:
                if left > 0:
                    left -= step(left)
            return limit - left

        return self._run(work)

    def _delete(self, db: Db, table: str, rows: str, params: Sequence[Any], with_: str = "") -> int:
        """Delete the rows of `table` whose ctid the subquery `rows` selects (after the CTEs
        `with_`), a run with its attempts and open row; how many rows of `table` went."""
        ctes = f"{with_}, " if with_ else "WITH "
        gone = f"gone AS (DELETE FROM {self.schema}.{table} WHERE ctid = ANY(ARRAY({rows})) "
        if table != "run":
            sql = f"{ctes}{gone}RETURNING 1) SELECT count(*) FROM gone"
        else:
            trimmed = f"{self.schema}.run_trimmed"
            sql = (
                f"{ctes}{gone}RETURNING id, entry, slot_us, kind), "
                f"a AS (DELETE FROM {self.schema}.attempt WHERE run_id IN (SELECT id FROM gone)), "
                f"o AS (DELETE FROM {self.schema}.run_open WHERE run_id IN (SELECT id FROM gone)), "
                # each entry's newest slot whose record went: backfill refuses it and older
                f"t AS (INSERT INTO {trimmed} SELECT entry, max(slot_us) FROM gone "
                f"WHERE kind <> '{RunKind.MANUAL}' GROUP BY entry ON CONFLICT (entry) DO UPDATE "
                f"SET slot_us = GREATEST({trimmed}.slot_us, EXCLUDED.slot_us)) "
                "SELECT count(*) FROM gone"
            )
        row = db.execute(sql, params).fetchone()
        return 0 if row is None else int(row[0])

    def _trim_old(self, db: Db, table: str, oldest: str, cutoff: int, n: int) -> int:
        """The oldest `n` rows of `table` (ordered by `oldest`, its time first) before
        `cutoff`."""
        column = oldest.split(",")[0]
        return self._delete(
            db,
            table,
            f"SELECT ctid FROM {self.schema}.{table} WHERE {column} < %s ORDER BY {oldest} "
            "LIMIT %s",
            (cutoff, n),
        )

    def _trim_total(self, db: Db, table: str, oldest: str, keep: int, n: int) -> int:
        row = db.execute(f"SELECT count(*) FROM {self.schema}.{table}").fetchone()
        excess = 0 if row is None else int(row[0]) - keep
        if excess <= 0:
            return 0
        return self._delete(
            db,
            table,
            f"SELECT ctid FROM {self.schema}.{table} ORDER BY {oldest} LIMIT %s",
            (min(excess, n),),
        )

    def _trim_total_runs(self, db: Db, keep: int, n: int) -> int:
        """The oldest `n` finished runs among the `n + PASS_OVER` past the newest `keep` (by
        run_newest)."""
        run = f"{self.schema}.run"
        return self._delete(
            db,
            "run",
            f"SELECT t.ctid FROM (SELECT r.ctid, r.id, r.published_us FROM {run} r "
            f"ORDER BY {RUN_NEWEST} OFFSET %s LIMIT %s) t WHERE {finished(self.schema, 't')} "
            f"ORDER BY {RUN_OLDEST} LIMIT %s",
            (keep, n + PASS_OVER, n),
        )

    def _trim_per_entry(self, db: Db, keep: int, n: int) -> int:
        """Each entry's finished runs among the `n + PASS_OVER` past its newest `keep`: the
        entries by a loose scan of run_entry_newest, then each one's tail from the same index."""
        run = f"{self.schema}.run"
        entries = (
            "WITH RECURSIVE e(entry) AS ("
            f"(SELECT entry FROM {run} ORDER BY entry LIMIT 1) UNION ALL "
            f"SELECT (SELECT r.entry FROM {run} r WHERE r.entry > e.entry ORDER BY r.entry "
            "LIMIT 1) FROM e WHERE e.entry IS NOT NULL)"
        )
        tails = (
            f"SELECT x.ctid FROM e CROSS JOIN LATERAL (SELECT t.ctid FROM (SELECT ctid, id "
            f"FROM {run} r WHERE r.entry = e.entry ORDER BY {RUN_NEWEST} OFFSET %s LIMIT %s) t "
            f"WHERE {finished(self.schema, 't')} LIMIT %s) x LIMIT %s"
        )
        return self._delete(db, "run", tails, (keep, n + PASS_OVER, n, n), with_=entries)

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
                f"INSERT INTO {self.schema}.run ({RUN_COLUMNS}) VALUES "
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
                        r.audit,
                    )
                    for r in new
                ],
            )
            cursor.executemany(
                f"INSERT INTO {self.schema}.run_open VALUES (%s, %s) ON CONFLICT DO NOTHING",
                [
                    (r.id, to_micros(r.published_at))
                    for r in new
                    if not r.finished and r.overdue_at is None
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
