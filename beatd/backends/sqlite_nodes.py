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
