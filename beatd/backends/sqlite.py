"""The embedded default: one SQLite file holding the lease, the run state and the queues.

WAL mode lets several processes on one host share the file: every write is one short
`BEGIN IMMEDIATE` transaction, and the lease check happens inside the same transaction as the
writes it guards, so a paused or deposed leader cannot write. Times are the host's wall clock,
which all processes sharing the file agree on.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from beatd.backends.base import (
    DeadLetter,
    Delivery,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    from_micros,
    to_micros,
)
from beatd.core import EntryState
from beatd.errors import BackendError, LeaseLost, TransientBackendError

SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    token TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    config_hash TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS epoch (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entry_state (
    entry TEXT PRIMARY KEY,
    last_slot_us INTEGER NOT NULL,
    last_published_us INTEGER,
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body TEXT NOT NULL,
    ready_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS message_order ON message (queue, priority DESC, seq);
CREATE INDEX IF NOT EXISTS message_receipt ON message (receipt);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    deliveries INTEGER NOT NULL
);
"""
LEASE = "scheduler"
DEFAULT_PRIORITY = 5
T = TypeVar("T")


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


class SQLiteBackend:
    def __init__(
        self, path: str | os.PathLike[str], *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._now = wall_clock
        self._local = threading.local()
        self._run(lambda db: db.executescript(SCHEMA), write=False)

    # --- connections and transactions ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=10000")
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(f"cannot open {self.path}: {exc}") from exc
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run `work` in a transaction, turning SQLite's errors into backend errors."""
        try:
            if not write:
                return work(self._connection())
            with self._transaction() as db:
                return work(db)
        except sqlite3.OperationalError as exc:
            # full disk, file-size limit, locked database, read-only file: all may pass
            raise TransientBackendError(f"{self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"{self.path}: {exc}") from exc

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone(), write=False)

    def server_time(self) -> float:
        return self._now()  # every process sharing the file shares this host's clock

    def persistence_warnings(self) -> list[str]:
        return []

    # --- leadership -----------------------------------------------------------------------

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        def work(db: sqlite3.Connection) -> Lease | None:
            now = self._now()
            row = db.execute(
                "SELECT node, token, epoch, expires_at FROM lease WHERE name = ?", (LEASE,)
            ).fetchone()
            if row is not None and row[3] > now and row[0] != node:
                return None
            if row is not None and row[3] > now:  # already ours: keep the token and epoch
                lease = Lease(node, row[1], row[2])
            else:
                db.execute(
                    "INSERT INTO epoch (name, value) VALUES (?, 1) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + 1",
                    (LEASE,),
                )
                epoch = db.execute("SELECT value FROM epoch WHERE name = ?", (LEASE,)).fetchone()
                lease = Lease(node, secrets.token_hex(16), epoch[0])
            db.execute(
                "INSERT OR REPLACE INTO lease (name, node, token, epoch, expires_at, config_hash)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (LEASE, node, lease.token, lease.epoch, now + ttl, config_hash),
            )
            return lease

        return self._run(work)

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            now = self._now()
            cursor = db.execute(
                "UPDATE lease SET expires_at = ? "
                "WHERE name = ? AND token = ? AND epoch = ? AND expires_at > ?",
                (now + ttl, LEASE, lease.token, lease.epoch, now),
            )
            return cursor.rowcount == 1

        return self._run(work)

    def release_lease(self, lease: Lease) -> None:
        self._run(
            lambda db: db.execute(
                "DELETE FROM lease WHERE name = ? AND token = ?", (LEASE, lease.token)
            )
        )

    def leader(self) -> LeaderInfo | None:
        def work(db: sqlite3.Connection) -> LeaderInfo | None:
            row = db.execute(
                "SELECT node, epoch, expires_at, config_hash FROM lease WHERE name = ?", (LEASE,)
            ).fetchone()
            now = self._now()
            if row is None or row[2] <= now:
                return None
            return LeaderInfo(row[0], row[1], row[2] - now, row[3])

        return self._run(work, write=False)

    def _check_lease(self, db: sqlite3.Connection, lease: Lease) -> None:
        row = db.execute(
            "SELECT 1 FROM lease WHERE name = ? AND token = ? AND epoch = ? AND expires_at > ?",
            (LEASE, lease.token, lease.epoch, self._now()),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"lease epoch {lease.epoch} of {lease.node} is no longer held")

    # --- run state ------------------------------------------------------------------------

    def load_states(self) -> dict[str, EntryState]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT entry, last_slot_us, last_published_us, identity FROM entry_state"
            ).fetchall(),
            write=False,
        )
        return {
            entry: EntryState(
                entry, from_micros(slot), from_micros(published) if published else None, identity
            )
            for entry, slot, published, identity in rows
        }

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        celery = [m.entry for m in messages if m.protocol == "celery"]
        if celery:
            raise BackendError(
                f"entry {celery[0]} uses protocol celery, which needs a Redis broker (Redis "
                "transport only); SQLite stores beatd's own messages only"
            )

        def work(db: sqlite3.Connection) -> set[str]:
            self._check_lease(db, lease)
            rejected: set[str] = set()
            for write in writes:
                state = write.state
                params = (
                    _us(state.last_slot),
                    _us(state.last_published),
                    state.identity,
                    state.entry,
                )
                if write.expected is None:
                    cursor = db.execute(
                        "INSERT OR IGNORE INTO entry_state "
                        "(last_slot_us, last_published_us, identity, entry) VALUES (?, ?, ?, ?)",
                        params,
                    )
                else:
                    cursor = db.execute(
                        "UPDATE entry_state SET last_slot_us = ?, last_published_us = ?, "
                        "identity = ? WHERE entry = ? AND last_slot_us = ?",
                        (*params, _us(write.expected)),
                    )
                if cursor.rowcount != 1:
                    rejected.add(state.entry)
            now = self._now()
            db.executemany(
                "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (m.id, m.queue, _priority(m.priority), m.body, now)
                    for m in messages
                    if m.entry not in rejected
                ],
            )
            return rejected

        return self._run(work)

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        rejected = self.commit(lease, writes, messages)  # in this process: nothing to overlap
        return lambda: rejected

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        def work(db: sqlite3.Connection) -> None:
            self._check_lease(db, lease)
            db.executemany("DELETE FROM entry_state WHERE entry = ?", [(e,) for e in entries])

        self._run(work)

    # --- queues ---------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        ready = self._now() + delay
        self._run(
            lambda db: db.executemany(
                "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
                [(m.id, m.queue, _priority(m.priority), m.body, ready) for m in messages],
            )
        )

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        receipt = f"{consumer}:{secrets.token_hex(8)}"
        marks = ",".join("?" * len(queues))

        def work(db: sqlite3.Connection) -> Delivery | None:
            now = self._now()
            row = db.execute(
                f"UPDATE message SET receipt = ?, ready_at = ?, deliveries = deliveries + 1 "
                f"WHERE seq = (SELECT seq FROM message WHERE queue IN ({marks}) "
                f"AND ready_at <= ? ORDER BY priority DESC, seq LIMIT 1) "
                f"RETURNING id, queue, body, deliveries",
                (receipt, now + visibility, *queues, now),
            ).fetchall()
            if not row:
                return None
            message_id, queue, body, deliveries = row[0]
            return Delivery(message_id, queue, body, deliveries, receipt)

        return self._run(work)

    def _update_claimed(self, sql: str, params: tuple[object, ...], delivery: Delivery) -> bool:
        cursor = self._run(lambda db: db.execute(sql, (*params, delivery.receipt)))
        return cursor.rowcount == 1

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        return self._update_claimed(
            "UPDATE message SET ready_at = ? WHERE receipt = ?",
            (self._now() + visibility,),
            delivery,
        )

    def ack(self, delivery: Delivery) -> None:
        self._update_claimed("DELETE FROM message WHERE receipt = ?", (), delivery)

    def release(self, delivery: Delivery) -> None:
        self._update_claimed(
            "UPDATE message SET receipt = NULL, ready_at = ?, deliveries = deliveries - 1 "
            "WHERE receipt = ?",
            (self._now(),),
            delivery,
        )

    def retry(self, delivery: Delivery, body: str, delay: float) -> None:
        self._update_claimed(
            "UPDATE message SET receipt = NULL, body = ?, ready_at = ?, deliveries = 0 "
            "WHERE receipt = ?",
            (body, self._now() + delay),
            delivery,
        )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            rows = db.execute(
                "DELETE FROM message WHERE receipt = ? RETURNING id, queue, priority, body",
                (delivery.receipt,),
            ).fetchall()
            db.executemany(
                "INSERT INTO dead_letter (id, queue, priority, body, reason, failed_at, "
                "deliveries) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, reason, self._now(), delivery.deliveries) for row in rows],
            )

        self._run(work)

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT id, queue, body, reason, failed_at, deliveries FROM dead_letter "
                "ORDER BY seq"
            ).fetchall(),
            write=False,
        )
        return [
            DeadLetter(i, q, b, r, datetime.fromtimestamp(f, UTC), d) for i, q, b, r, f, d in rows
        ]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._run(
            lambda db: db.executemany(
                "INSERT INTO dead_letter (id, queue, priority, body, reason, failed_at, "
                "deliveries) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.id,
                        d.queue,
                        DEFAULT_PRIORITY,
                        d.body,
                        d.reason,
                        d.failed_at.timestamp(),
                        d.deliveries,
                    )
                    for d in letters
                ],
            )
        )

    def requeue_dead(self, message_id: str | None) -> int:
        where, params = ("", ()) if message_id is None else ("WHERE id = ?", (message_id,))

        def work(db: sqlite3.Connection) -> int:
            rows = db.execute(
                f"DELETE FROM dead_letter {where} RETURNING id, queue, priority, body", params
            ).fetchall()
            now = self._now()
            db.executemany(
                "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
                [(*row, now) for row in rows],
            )
            return len(rows)

        return self._run(work)

    def queue_depths(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute("SELECT queue, COUNT(*) FROM message GROUP BY queue").fetchall(),
            write=False,
        )
        return dict(rows)


def _priority(priority: int | None) -> int:
    return DEFAULT_PRIORITY if priority is None else priority
