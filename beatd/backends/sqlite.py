"""The embedded default: one SQLite file holding the lease, the run state and the queues.

WAL mode lets several processes on one host share the file: every write is one short
`BEGIN IMMEDIATE` transaction, and the lease check happens inside the same transaction as the
writes it guards, so a paused or deposed leader cannot write. Times are the host's wall clock,
which all processes sharing the file agree on.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from beatd.backends.base import (
    DeadLetter,
    Delivery,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    StorageCorrupt,
    StorageReplaced,
    from_micros,
    to_micros,
    unseen,
    utf8_fault,
)
from beatd.core import EntryState
from beatd.errors import BackendError, LeaseLost, TransientBackendError

log = logging.getLogger(__name__)

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
BEATD_TABLES = ("lease", "entry_state")  # in every beatd database since the first
DEFAULT_PRIORITY = 5
# Runs committed after which the leader truncates the WAL at its next lease renewal: about 0.5 MB
# of WAL (tests/backends/test_sqlite.py measures it).
LARGE_CATCH_UP = 1000
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_NOTADB = 8, 11, 26  # primary result codes
# Lease and publishing writes check the file at every call; a worker's (claims, acks) at most
# this often (seconds): a stat per claim would cost about a tenth of it.
FILE_CHECK_INTERVAL = 0.5
T = TypeVar("T")


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


class SQLiteBackend:
    """`read_only`: for commands that only look (status, dead list, a migration's source):
    the file is opened with `mode=ro`. With it or `create=False`, a missing file is an error."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall_clock: Callable[[], float] = time.time,
        read_only: bool = False,
        create: bool = True,
    ) -> None:
        if str(path) == ":memory:":  # else sqlite3 opens one connection's private database
            raise BackendError(
                "cannot use ':memory:' as the database: an in-memory SQLite database belongs to "
                "one connection of one process, but the scheduler, its standbys and the workers "
                "share beatd's database; give a file path (sqlite:///beatd.db)"
            )
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.read_only = read_only
        self._now = wall_clock
        self._local = threading.local()  # a connection per thread
        self._opened: tuple[int, int] | None = None  # the file's device and inode, first opened
        self._check_at = 0.0  # monotonic: when a queue's write checks the file next
        self._published_since_truncate = 0  # runs committed since the WAL was last truncated
        if (read_only or not create) and not self.path.is_file():
            raise BackendError(
                f"no database at {self.path}: check the path (`beatd run` creates it)"
            )
        if read_only or not create:  # a file that is there: it must be beatd's
            self._require_beatd_database()
        if read_only:
            self._connection()
        else:
            self._run(lambda db: db.executescript(SCHEMA), write=False)

    def _require_beatd_database(self) -> None:
        """Refuse, as bad input, a file at the path that is not beatd's database (a mistyped
        path to another file): looked at read-only, so nothing in it changes."""
        uri = f"file:{quote(str(self.path))}?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                tables = {name for (name,) in rows}
        except sqlite3.DatabaseError as exc:
            if _primary(exc) != SQLITE_NOTADB:
                raise self._failure(exc) from exc
            why = "it is not a SQLite database (or its first page is damaged)"
        else:
            missing = [t for t in BEATD_TABLES if t not in tables]
            if not missing:
                return
            why = "it holds no tables" if not tables else f"it has no {' or '.join(missing)} table"
        raise BackendError(
            f"{self.path} is not a beatd database: {why}; check the path (`beatd run` creates "
            "the database)"
        )

    # --- connections and transactions ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._open_read_only() if self.read_only else self._open()
                opened = os.stat(self.path)
            except sqlite3.DatabaseError as exc:
                if _primary(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB):
                    raise self._failure(exc) from exc
                raise BackendError(f"cannot open {self.path}: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(f"cannot open {self.path}: {exc}") from exc
            if self._opened is None:
                self._opened = (opened.st_dev, opened.st_ino)
            elif (opened.st_dev, opened.st_ino) != self._opened:  # opened again, or a thread's
                db.close()
                raise self._replaced()
            self._local.db = db
        return db

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise BackendError(
                f"cannot create the database {self.path}: there is no directory "
                f"{self.path.parent}; create it, or correct the path"
            )
        with suppress(FileExistsError):  # created 0600: run state is nobody else's business
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # SQLite gives -wal and -shm the file's mode
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _check_file(self) -> None:
        """Refuse to write to a file that is no longer the one at our path: a process that
        went on would lead or work apart from every process that opened the path since."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise self._replaced() from None
        except OSError as exc:
            raise TransientBackendError(f"cannot check {self.path}: {exc}") from exc
        if (now.st_dev, now.st_ino) != self._opened:
            raise self._replaced()

    def _replaced(self) -> StorageReplaced:
        device, inode = self._opened or (0, 0)
        return StorageReplaced(
            f"{self.path} is not the database file this process opened (device {device} "
            f"inode {inode}): it was deleted or replaced; a process still using it would "
            "lead or work apart from every process using the file at that path now. Restart "
            "beatd (systemd does) to use the file there now"
        )

    @contextmanager
    def _transaction(self, lease: bool) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        now = time.monotonic()
        if lease or now >= self._check_at:  # a queue's writes: at most every FILE_CHECK_INTERVAL
            self._check_file()
            self._check_at = now + FILE_CHECK_INTERVAL
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if (
                db.in_transaction
            ):  # SQLite ends it itself on a full disk or corruption: keep that error
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _run(
        self, work: Callable[[sqlite3.Connection], T], *, write: bool = True, lease: bool = False
    ) -> T:
        """Run `work` in a transaction, turning SQLite's errors into backend errors. `lease`:
        a write of the lease or under it, always made to the file at the path (`_check_file`)."""
        try:
            if not write:
                return work(self._connection())
            with self._transaction(lease) as db:
                return work(db)
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: sqlite3.DatabaseError) -> BackendError:
        code = _primary(exc)
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return StorageCorrupt(
                f"{self.path} is damaged: PRAGMA quick_check found: {self._quick_check()}. "
                "Retrying cannot repair it: restore the file from a backup, or copy what is "
                "readable to a new file (see docs/deployment.md, When storage fails)"
            )
        if code == SQLITE_READONLY:
            # Opened while the file could not be written (its mode, a read-only mount): the
            # connection stays read-only even once that is fixed, so open it again next time.
            self.close()
            return TransientBackendError(
                f"{self.path}: {exc}; opening it again at the next attempt"
            )
        if isinstance(exc, sqlite3.OperationalError):
            # full disk, file-size limit, locked database: all may pass
            return TransientBackendError(f"{self.path}: {exc}")
        return BackendError(f"{self.path}: {exc}")

    def _quick_check(self) -> str:
        """What SQLite's own check finds, on one line and cut to what a log line can hold."""
        try:
            uri = f"file:{quote(str(self.path))}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
                rows = db.execute("PRAGMA quick_check(20)").fetchall()
        except sqlite3.Error as exc:
            return f"nothing, it could not run ({exc})"
        lines = [line for (row,) in rows for line in str(row).splitlines()]
        text = "; ".join(lines)
        return text if len(text) <= 1000 else text[:1000] + " [cut]"

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
                "SELECT token, epoch, expires_at FROM lease WHERE name = ?", (LEASE,)
            ).fetchone()
            if row is not None and row[2] > now:
                if held is None or (row[0], row[1]) != (held.token, held.epoch):
                    return None  # held by another token, whatever node name it runs under
                lease = held
            else:
                last = db.execute("SELECT value FROM epoch WHERE name = ?", (LEASE,)).fetchone()
                epoch = max(last[0] if last else 0, min_epoch) + 1
                db.execute(
                    "INSERT OR REPLACE INTO epoch (name, value) VALUES (?, ?)", (LEASE, epoch)
                )
                lease = Lease(node, secrets.token_hex(16), epoch)
            db.execute(
                "INSERT OR REPLACE INTO lease (name, node, token, epoch, expires_at, config_hash)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (LEASE, lease.node, lease.token, lease.epoch, now + ttl, config_hash),
            )
            return lease

        return self._run(work, lease=True)

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            now = self._now()
            cursor = db.execute(
                "UPDATE lease SET expires_at = ? "
                "WHERE name = ? AND token = ? AND epoch = ? AND expires_at > ?",
                (now + ttl, LEASE, lease.token, lease.epoch, now),
            )
            return cursor.rowcount == 1

        renewed = self._run(work, lease=True)
        if renewed and self._published_since_truncate >= LARGE_CATCH_UP:
            self._truncate_wal()
        return renewed

    def _truncate_wal(self) -> None:
        """Give the WAL's space back after a large catch-up: SQLite's own checkpoints reuse the
        file but never shrink it (about 4 MB stays). Done at a lease renewal, between bursts, so
        that it never slows one; housekeeping only, so a busy database just tries next time."""
        try:
            busy, _, _ = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("could not truncate the WAL of %s, trying again later: %s", self.path, exc)
            return
        if not busy:
            self._published_since_truncate = 0
            log.debug("truncated the WAL of %s after a large catch-up", self.path)

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

        rejected = self._run(work, lease=True)
        self._published_since_truncate += len(messages)
        return rejected

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        rejected = self.commit(lease, writes, messages)  # in this process: nothing to overlap
        return lambda: rejected

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        def work(db: sqlite3.Connection) -> None:
            self._check_lease(db, lease)
            db.executemany("DELETE FROM entry_state WHERE entry = ?", [(e,) for e in entries])

        self._run(work, lease=True)

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
                f"RETURNING {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, deliveries",
                (receipt, now + visibility, *queues, now),
            ).fetchall()
            if not row:
                return None
            message_id, queue, body, deliveries = row[0]
            unreadable = utf8_fault(message_id, "id") or utf8_fault(body, "body")
            return Delivery(
                _text(message_id), _text(queue), _text(body), deliveries, receipt, unreadable
            )

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
        def work(db: sqlite3.Connection) -> None:  # moved in SQL: bytes kept as they are
            db.execute(
                "INSERT INTO dead_letter (id, queue, priority, body, reason, failed_at, "
                "deliveries) SELECT id, queue, priority, body, ?, ?, ? FROM message "
                "WHERE receipt = ?",
                (reason, self._now(), delivery.deliveries, delivery.receipt),
            )
            db.execute("DELETE FROM message WHERE receipt = ?", (delivery.receipt,))

        self._run(work)

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, {_AS_BYTES.format('reason')}, failed_at, "
                "deliveries FROM dead_letter ORDER BY seq"
            ).fetchall(),
            write=False,
        )
        return [
            DeadLetter(_text(i), _text(q), _text(b), _text(r), datetime.fromtimestamp(f, UTC), d)
            for i, q, b, r, f, d in rows
        ]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        def work(db: sqlite3.Connection) -> int:
            held = {
                _text(i) for (i,) in db.execute(f"SELECT {_AS_BYTES.format('id')} FROM dead_letter")
            }
            new = unseen(letters, held)
            db.executemany(
                "INSERT INTO dead_letter (id, queue, priority, body, reason, failed_at, "
                "deliveries) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        _stored(d.id),
                        _stored(d.queue),
                        DEFAULT_PRIORITY,
                        _stored(d.body),
                        _stored(d.reason),
                        d.failed_at.timestamp(),
                        d.deliveries,
                    )
                    for d in new
                ],
            )
            return len(new)

        return self._run(work)

    def requeue_dead(self, message_id: str | None) -> int:
        where, params = ("", ()) if message_id is None else ("WHERE id = ?", (message_id,))

        def work(db: sqlite3.Connection) -> int:  # moved in SQL: bytes kept as they are
            db.execute(
                "INSERT INTO message (id, queue, priority, body, ready_at) "
                f"SELECT id, queue, priority, body, ? FROM dead_letter {where} ORDER BY seq",
                (self._now(), *params),
            )
            return int(db.execute(f"DELETE FROM dead_letter {where}", params).rowcount)

        return self._run(work)

    def queued_as_dead_letters(self, reason: str) -> list[DeadLetter]:
        """Every run still queued (claimed or not), as dead letters with `reason`, bytes as
        stored: what `beatd migrate --queued-as-dead-letters` copies out of a damaged file."""
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, deliveries FROM message ORDER BY seq"
            ).fetchall(),
            write=False,
        )
        now = datetime.fromtimestamp(self._now(), UTC)
        return [DeadLetter(_text(i), _text(q), _text(b), reason, now, d) for i, q, b, d in rows]

    def queue_depths(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute("SELECT queue, COUNT(*) FROM message GROUP BY queue").fetchall(),
            write=False,
        )
        return dict(rows)


# Text as another program may have stored it: not UTF-8, or a BLOB. Read as bytes and decoded
# with surrogateescape, so the worker sees what is wrong and dead-letters it (never an outage).
_AS_BYTES = "CAST({} AS BLOB)"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _stored(value: str) -> str | bytes:
    """Text to write: as it is, or, when it carries bytes that are not UTF-8 (read by `_text`),
    those bytes, stored as a BLOB that every reader casts back."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _primary(exc: sqlite3.Error) -> int:
    """SQLite's primary result code (an extended code carries it in its low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _priority(priority: int | None) -> int:
    return DEFAULT_PRIORITY if priority is None else priority
