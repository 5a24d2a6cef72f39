"""PostgreSQL's runtime entries (`RuntimeEntries` in beatd.backends.base): the tables
`runtime_entry`, `entry_change` (the feed), `entry_head` and `file_entry` (format 2's,
postgres_link.py). Every write, and the registration of file names, first locks the one row of
`entry_head`: they take turns, so a name registered concurrently is seen, and the feed's
records commit in the order of their seqs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from beatd.backends.base import Lease, from_micros
from beatd.backends.entry_rows import ENTRY_COLUMNS, entry_of_row, entry_row
from beatd.backends.postgres_controls import PostgresControls
from beatd.backends.postgres_link import NOW_US
from beatd.controls import new_audit_id
from beatd.runtime_entries import (
    FEED_RETENTION,
    ChangePage,
    EntryChange,
    EntryPut,
    EntryWrites,
    RuntimeEntry,
    check_remove,
    entry_audit,
    page_of,
    plan_puts,
)

Db = psycopg.Connection[Any]


class PostgresEntries(PostgresControls, EntryWrites):
    """The `RuntimeEntries` role."""

    feed_retention: int = FEED_RETENTION

    def _take_turn(self, db: Db) -> tuple[int, int]:
        """Lock the feed's head for this transaction: (the head, the database's clock in µs)."""
        row = db.execute(
            f"SELECT head, {NOW_US} FROM {self.schema}.entry_head FOR UPDATE"
        ).fetchone()
        assert row is not None  # written with the table
        return int(row[0]), int(row[1])

    def _current(self, db: Db, name: str) -> RuntimeEntry | None:
        row = db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM {self.schema}.runtime_entry WHERE name = %s", (name,)
        ).fetchone()
        return None if row is None else entry_of_row(row)

    def _file_of(self, db: Db, name: str) -> str | None:
        row = db.execute(
            f"SELECT path FROM {self.schema}.file_entry WHERE name = %s", (name,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _store(self, db: Db, entry: RuntimeEntry) -> None:
        db.execute(
            f"INSERT INTO {self.schema}.runtime_entry ({ENTRY_COLUMNS}) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "version = excluded.version, definition = excluded.definition, "
            "updated_us = excluded.updated_us, updated_by = excluded.updated_by, "
            "request_id = excluded.request_id",
            entry_row(entry),
        )

    def _entry_changed(self, db: Db, head: int, name: str, version: int | None) -> None:
        """Append the change record after `head` and trim the feed to its retention."""
        seq, schema = head + 1, self.schema
        db.execute(f"UPDATE {schema}.entry_head SET head = %s", (seq,))
        db.execute(
            f"INSERT INTO {schema}.entry_change (seq, name, version) VALUES (%s, %s, %s)",
            (seq, name, version),
        )
        db.execute(
            f"DELETE FROM {schema}.entry_change WHERE seq <= %s",
            (seq - max(self.feed_retention, 1),),
        )

    def _put(self, puts: Sequence[EntryPut], by: str, request_id: str | None) -> list[RuntimeEntry]:
        def work(db: Db) -> list[RuntimeEntry]:
            head, now_us = self._take_turn(db)
            names = [p.entry.name for p in puts]
            current = [self._current(db, n) for n in names]
            files = [self._file_of(db, n) for n in names]
            at = from_micros(now_us)
            outcomes = plan_puts(puts, current, files, at, by, request_id, head)
            for stored, before, written in outcomes:
                if written:
                    self._store(db, stored)
                    self._entry_changed(db, head, stored.name, stored.version)
                    head += 1
                    self._audit(db, entry_audit(new_audit_id(), at, by, before, stored, request_id))
            return [o.stored for o in outcomes]

        return self._run(work)

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        def work(db: Db) -> RuntimeEntry:
            head, now_us = self._take_turn(db)
            current = self._current(db, name)
            removed = check_remove(name, current, self._file_of(db, name), expected_version)
            db.execute(f"DELETE FROM {self.schema}.runtime_entry WHERE name = %s", (name,))
            self._entry_changed(db, head, name, None)
            at = from_micros(now_us)
            self._audit(db, entry_audit(new_audit_id(), at, by, removed, None, None))
            return removed

        return self._run(work)

    def get_entry(self, name: str) -> RuntimeEntry | None:
        return self._run(lambda db: self._current(db, name), write=False)

    def get_entries(self, names: Sequence[str]) -> dict[str, RuntimeEntry]:
        if not names:
            return {}

        def read(db: Db) -> dict[str, RuntimeEntry]:
            rows = db.execute(
                f"SELECT {ENTRY_COLUMNS} FROM {self.schema}.runtime_entry WHERE name = ANY(%s)",
                (list(names),),
            )
            return {row[0]: entry_of_row(row) for row in rows}

        return self._run(read, write=False)

    def list_entries(self, after: str = "", limit: int = 1000) -> list[RuntimeEntry]:
        def read(db: Db) -> list[RuntimeEntry]:
            rows = db.execute(
                f"SELECT {ENTRY_COLUMNS} FROM {self.schema}.runtime_entry WHERE name > %s "
                "ORDER BY name LIMIT %s",
                (after, max(limit, 0)),
            )
            return [entry_of_row(row) for row in rows]

        return self._run(read, write=False)

    def entry_changes(self, cursor: int | None, limit: int = 1000) -> ChangePage:
        schema = self.schema

        def read(db: Db) -> ChangePage:
            row = db.execute(
                f"SELECT head, (SELECT min(seq) FROM {schema}.entry_change) "
                f"FROM {schema}.entry_head"
            ).fetchone()
            assert row is not None
            head, oldest = int(row[0]), row[1]

            def after(seen: int) -> list[EntryChange]:
                rows = db.execute(
                    f"SELECT seq, name, version FROM {schema}.entry_change WHERE seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (seen, max(limit, 0)),
                )
                return [EntryChange(*r) for r in rows]

            return page_of(cursor, head, head + 1 if oldest is None else int(oldest), after)

        return self._run(read)  # one transaction: the head and the records agree

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        schema = self.schema

        def work(db: Db) -> list[str]:
            self._check_lease(db, lease)
            self._take_turn(db)
            names = sorted(files)
            rows = db.execute(
                f"SELECT name FROM {schema}.runtime_entry WHERE name = ANY(%s)", (names,)
            )
            colliding = sorted(str(n) for (n,) in rows)
            if not colliding:
                db.execute(f"DELETE FROM {schema}.file_entry")
                with (
                    db.cursor() as cursor,
                    cursor.copy(f"COPY {schema}.file_entry (name, path) FROM STDIN") as copy,
                ):
                    for item in files.items():
                        copy.write_row(item)
            return colliding

        return self._run(work)

    def file_entries(self) -> dict[str, str]:
        return self._run(
            lambda db: dict(db.execute(f"SELECT name, path FROM {self.schema}.file_entry")),
            write=False,
        )

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        def work(db: Db) -> int:
            head, _ = self._take_turn(db)
            added = 0
            for entry in entries:
                if self._current(db, entry.name) is None:
                    self._store(db, entry)
                    head = max(head, entry.version)  # no later entry takes its version
                    self._entry_changed(db, head, entry.name, entry.version)
                    head += 1
                    added += 1
            return added

        return self._run(work)
