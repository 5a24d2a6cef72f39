"""The SQLite backend's runtime entries (`RuntimeEntries` in beatd.backends.base): the tables
`runtime_entry`, `entry_change` (the feed) and `file_entry` (ENTRIES_SCHEMA, sqlite_file.py,
format 2). Each write is one transaction with its change record and its audit record (a big
batch: one per `put_step` entries, checked whole first)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial

from beatd.backends.base import Lease, from_micros, to_micros
from beatd.backends.entry_rows import ENTRY_COLUMNS, entry_of_row, entry_row
from beatd.backends.sqlite_controls import _AUDIT as _AUDIT_COLUMNS
from beatd.backends.sqlite_controls import _store_audit
from beatd.backends.sqlite_file import SQLiteFile
from beatd.backends.sqlite_history import micros
from beatd.backends.sqlite_turns import STEP_TIME, next_step
from beatd.controls import new_audit_id, new_audit_ids
from beatd.errors import BackendError, TransientBackendError
from beatd.runtime_entries import (
    API_SOURCE,
    FEED_RETENTION,
    ChangePage,
    EntryChange,
    EntryPut,
    EntryWrites,
    PartlyWritten,
    RuntimeEntry,
    check_puts,
    check_remove,
    check_unique,
    entry_audit,
    page_of,
    plan_puts,
)

# Entries per write transaction of a batch, at most: about 50 ms each on a quiet machine (100,000
# in one transaction held the file's one writer 5 s, so that the leader's lease renewal waited
# out its busy timeout). A batch starts with a quarter of it, and each next step holds as many
# as should take STEP_TIME of the writer, as long as the last took (sqlite_turns.next_step), at
# least PUT_STEP_LEAST: on a loaded machine, where 1,000 held the writer up to 0.9 s, fewer.
PUT_STEP = 1000
PUT_STEP_LEAST = 50
_PUT = f"INSERT OR REPLACE INTO runtime_entry ({ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_HEAD = "SELECT seq FROM sqlite_sequence WHERE name = 'entry_change'"


def _current(db: sqlite3.Connection, name: str) -> RuntimeEntry | None:
    row = db.execute(
        f"SELECT {ENTRY_COLUMNS} FROM runtime_entry WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else entry_of_row(row)


def _currents(db: sqlite3.Connection, names: Sequence[str]) -> dict[str, RuntimeEntry]:
    """The stored entries of `names` (one query)."""
    rows = db.execute(
        f"SELECT {ENTRY_COLUMNS} FROM runtime_entry WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(list(names)),),
    )
    return {row[0]: entry_of_row(row) for row in rows}


def _files_of(db: sqlite3.Connection, names: Sequence[str]) -> dict[str, str]:
    """The files of those of `names` that are file entries' (one query)."""
    rows = db.execute(
        "SELECT name, path FROM file_entry WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(list(names)),),
    )
    return {str(name): str(path) for name, path in rows}


def _trim_feed(db: sqlite3.Connection, retention: int) -> None:
    """Keep the feed's newest `retention` change records."""
    db.execute("DELETE FROM entry_change WHERE seq <= ?", (_head(db) - max(retention, 1),))


def _audit_row(
    audit_id: str,
    stored: RuntimeEntry,
    before: RuntimeEntry | None,
    definition: object,
    at: datetime,
    by: str,
    detail: str,
) -> tuple[object, ...]:
    """The audit row of a put (`entry_audit`'s record, as `_store_audit` writes it), its
    definition's JSON text as the entry's row has it, not encoded again."""
    action = "entry.add" if before is None else "entry.set"
    before_text = None if before is None else json.dumps(before.audit_json())
    after_text = f'{{"version": {stored.version}, "definition": {definition}}}'
    row = (audit_id, to_micros(at), action, stored.name, by, detail)
    return (*row, before_text, after_text)


def _file_of(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT path FROM file_entry WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def _changed(db: sqlite3.Connection, name: str, version: int | None, retention: int) -> None:
    """Append the change record and trim the feed to `retention` records."""
    seq = db.execute(
        "INSERT INTO entry_change (name, version) VALUES (?, ?) RETURNING seq", (name, version)
    ).fetchone()[0]
    db.execute("DELETE FROM entry_change WHERE seq <= ?", (seq - max(retention, 1),))


def _head(db: sqlite3.Connection) -> int:
    """The last change record's seq (0: none yet)."""
    row = db.execute(_HEAD).fetchone()
    return 0 if row is None else int(row[0])


def _raise_head(db: sqlite3.Connection, seq: int) -> None:
    """Make the next change record's seq follow `seq` at least (an imported entry's version)."""
    if _head(db) >= seq:
        return
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'entry_change'")
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('entry_change', ?)", (seq,))


def _has_tables(db: sqlite3.Connection) -> bool:
    """Whether the file has the runtime entries' tables (a read-only file of format 1 has not)."""
    row = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runtime_entry'").fetchone()
    return row is not None


class SQLiteEntries(SQLiteFile, EntryWrites):
    """The `RuntimeEntries` role."""

    feed_retention: int = FEED_RETENTION

    put_step: int = PUT_STEP  # entries a step, at most
    put_step_least: int = PUT_STEP_LEAST  # entries a step, at least (or put_step if fewer)
    put_step_time: float = STEP_TIME  # seconds a step should hold the file's one writer

    def _put(self, puts: Sequence[EntryPut], by: str, request_id: str | None) -> list[RuntimeEntry]:
        """One transaction a step, each step sized to hold the file's one writer about
        `put_step_time` (the leader's commits and lease renewals wait for it), and begun after
        the writes of this process that wait (sqlite_turns.py); a batch of more than the first
        step is checked whole first (`_check_puts`), so a refusal then writes nothing. A refusal
        found at a later step (another writer in between) is PartlyWritten, as on Redis."""
        check_unique(puts)
        most = self.put_step
        least = min(self.put_step_least, most)
        size = max(least, most // 4)
        if len(puts) > size:
            self._run(lambda db: self._check_puts(db, puts, request_id), write=False)
        stored: list[RuntimeEntry] = []
        done = 0
        while done < len(puts):
            step = puts[done : done + size]
            write = partial(self._timed_step, puts=step, by=by, request_id=request_id)
            try:
                written, took = self._run(write, step=True)
            except TransientBackendError:
                raise  # repeated with the request id, the steps written are answered as stored
            except BackendError as exc:
                if not stored:
                    raise
                raise PartlyWritten(exc, [e.name for e in stored], len(puts)) from None
            stored += written
            done += len(step)
            size = next_step(size, took, least=least, most=most, target=self.put_step_time)
        return stored

    def _timed_step(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], by: str, request_id: str | None
    ) -> tuple[list[RuntimeEntry], float]:
        """`_put_step`, and the seconds it took (holding the file's writer)."""
        started = time.monotonic()
        stored = self._put_step(db, puts, by, request_id)
        return stored, time.monotonic() - started

    def _check_puts(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], request_id: str | None
    ) -> None:
        """Raise the first refusal of `puts` (a read: nothing written)."""
        if not _has_tables(db):
            return
        names = [p.entry.name for p in puts]
        current, files = _currents(db, names), _files_of(db, names)
        check_puts(puts, [current.get(n) for n in names], [files.get(n) for n in names], request_id)

    def _put_step(
        self, db: sqlite3.Connection, puts: Sequence[EntryPut], by: str, request_id: str | None
    ) -> list[RuntimeEntry]:
        """One step's transaction; the stored entries and the files' names read in one query
        each, the rows written with executemany, the feed trimmed once."""
        names = [p.entry.name for p in puts]
        current, files = _currents(db, names), _files_of(db, names)
        at = from_micros(micros(self._now()))
        outcomes = plan_puts(
            puts, [current.get(n) for n in names], [files.get(n) for n in names],
            at, by, request_id, _head(db),
        )  # fmt: skip
        written = [(o.stored, o.before) for o in outcomes if o.written]
        rows = [entry_row(stored) for stored, _ in written]
        db.executemany(_PUT, rows)
        db.executemany(
            "INSERT INTO entry_change (name, version) VALUES (?, ?)",
            [(stored.name, stored.version) for stored, _ in written],
        )
        _trim_feed(db, self.feed_retention)
        detail = json.dumps({"request_id": request_id, "source": API_SOURCE})
        ids = new_audit_ids(len(written))
        db.executemany(
            f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                _audit_row(audit_id, stored, before, row[2], at, by, detail)
                for audit_id, (stored, before), row in zip(ids, written, rows, strict=True)
            ],
        )
        return [o.stored for o in outcomes]

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        def work(db: sqlite3.Connection) -> RuntimeEntry:
            current = _current(db, name)
            removed = check_remove(name, current, _file_of(db, name), expected_version)
            at = from_micros(micros(self._now()))
            db.execute("DELETE FROM runtime_entry WHERE name = ?", (name,))
            _changed(db, name, None, self.feed_retention)
            _store_audit(db, entry_audit(new_audit_id(), at, by, removed, None, None))
            return removed

        return self._run(work)

    def get_entry(self, name: str) -> RuntimeEntry | None:
        return self._run(lambda db: _current(db, name) if _has_tables(db) else None, write=False)

    def get_entries(self, names: Sequence[str]) -> dict[str, RuntimeEntry]:
        if not names:
            return {}
        return self._run(lambda db: _currents(db, names) if _has_tables(db) else {}, write=False)

    def list_entries(self, after: str = "", limit: int = 1000) -> list[RuntimeEntry]:
        def read(db: sqlite3.Connection) -> list[RuntimeEntry]:
            if not _has_tables(db):
                return []
            rows = db.execute(
                f"SELECT {ENTRY_COLUMNS} FROM runtime_entry WHERE name > ? ORDER BY name LIMIT ?",
                (after, max(limit, 0)),
            )
            return [entry_of_row(row) for row in rows]

        return self._run(read, write=False)

    def entry_changes(self, cursor: int | None, limit: int = 1000) -> ChangePage:
        def read(db: sqlite3.Connection) -> ChangePage:
            if not _has_tables(db):
                return page_of(cursor, 0, 1, lambda _seen: [])
            head = _head(db)
            oldest = db.execute("SELECT min(seq) FROM entry_change").fetchone()[0]

            def after(seen: int) -> list[EntryChange]:
                rows = db.execute(
                    "SELECT seq, name, version FROM entry_change WHERE seq > ? ORDER BY seq "
                    "LIMIT ?",
                    (seen, max(limit, 0)),
                )
                return [EntryChange(*r) for r in rows]

            return page_of(cursor, head, head + 1 if oldest is None else oldest, after)

        return self._run(read, write=False)

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            self._check_lease(db, lease)
            names = sorted(files)
            colliding = [
                n
                for (n,) in db.execute(
                    "SELECT name FROM runtime_entry WHERE name IN (SELECT value FROM json_each(?))",
                    (json.dumps(names),),
                )
            ]
            if not colliding:
                db.execute("DELETE FROM file_entry")
                db.executemany("INSERT INTO file_entry (name, path) VALUES (?, ?)", files.items())
            return sorted(colliding)

        return self._run(work, lease=True)

    def file_entries(self) -> dict[str, str]:
        def read(db: sqlite3.Connection) -> dict[str, str]:
            if not _has_tables(db):
                return {}
            return dict(db.execute("SELECT name, path FROM file_entry").fetchall())

        return self._run(read, write=False)

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        def work(db: sqlite3.Connection) -> int:
            added = 0
            for entry in entries:
                if _current(db, entry.name) is None:
                    _raise_head(db, entry.version)
                    db.execute(_PUT, entry_row(entry))
                    _changed(db, entry.name, entry.version, self.feed_retention)
                    added += 1
            return added

        return self._run(work)
