"""The SQLite backend's node records (`Nodes` in beatd.backends.base): the table `node`
(NODES_SCHEMA, sqlite_file.py, format 2), kept by the host's clock, which every process on the
file shares; and the console's session key (`SessionKeys`), in the table `console_key`, made
with its one row by the first call (no format change: a file without it simply has no key
yet)."""

from __future__ import annotations

import secrets
import sqlite3

from beatd.backends.base import SESSION_KEY_BYTES, from_micros
from beatd.backends.sqlite_file import SQLiteFile
from beatd.backends.sqlite_history import micros
from beatd.nodes import NodeRecord

_KEY_TABLE = (
    "CREATE TABLE IF NOT EXISTS console_key (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "key BLOB NOT NULL)"
)
_SIGNOUT_TABLE = (
    "CREATE TABLE IF NOT EXISTS console_signout (token TEXT PRIMARY KEY, "
    "generation INTEGER NOT NULL) WITHOUT ROWID"
)
_PUT = "INSERT OR REPLACE INTO node (name, record, seen_us, expires_us) VALUES (?, ?, ?, ?)"


def _has_table(db: sqlite3.Connection) -> bool:
    """Whether the file has the node table (a read-only file of format 1 has not)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'node'").fetchone() is not None


class SQLiteNodes(SQLiteFile):
    """The `Nodes` role."""

    def write_node(self, record: NodeRecord, keep: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = micros(self._now())
            db.execute("DELETE FROM node WHERE expires_us <= ?", (now,))
            db.execute(_PUT, (record.node, record.to_json(), now, now + round(keep * 1e6)))

        self._run(work)

    def nodes(self) -> list[NodeRecord]:
        def read(db: sqlite3.Connection) -> list[NodeRecord]:
            if not _has_table(db):
                return []
            rows = db.execute(
                "SELECT name, record, seen_us FROM node WHERE expires_us > ? ORDER BY name",
                (micros(self._now()),),
            )
            return [NodeRecord.from_json(n, text, from_micros(seen)) for n, text, seen in rows]

        return self._run(read, write=False)

    def session_key(self) -> bytes:
        def work(db: sqlite3.Connection) -> bytes:  # one write transaction: the file's lock
            db.execute(_KEY_TABLE)
            db.execute(
                "INSERT OR IGNORE INTO console_key (id, key) VALUES (1, ?)",
                (secrets.token_bytes(SESSION_KEY_BYTES),),
            )
            row = db.execute("SELECT key FROM console_key WHERE id = 1").fetchone()
            return bytes(row[0])

        return self._run(work)

    def session_generation(self, token: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            known = "SELECT 1 FROM sqlite_master WHERE name = 'console_signout'"
            if db.execute(known).fetchone() is None:
                return 0  # nobody signed out yet: the table is made by the first sign-out
            row = db.execute(
                "SELECT generation FROM console_signout WHERE token = ?", (token,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return self._run(read, write=False)

    def end_sessions(self, token: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute(_SIGNOUT_TABLE)
            row = db.execute(
                "INSERT INTO console_signout (token, generation) VALUES (?, 1) "
                "ON CONFLICT (token) DO UPDATE SET generation = generation + 1 "
                "RETURNING generation",
                (token,),
            ).fetchone()
            return int(row[0])

        return self._run(work)
