"""The embedded default: one SQLite file holding the lease, the run state and the queues.

WAL mode lets several processes on one host share the file: every write is one short
`BEGIN IMMEDIATE` transaction, and the lease check happens inside the same transaction as the
writes it guards, so a paused or deposed leader cannot write. Times are the host's wall clock,
which all processes sharing the file agree on.

The backend is its parts, one per role, sharing one file (`SQLiteFile`, sqlite_file.py, which
also maps SQLite's errors to NotApplied and OutcomeUnknown).
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from beatd.backends.base import (
    NEEDS,
    BeatdQueue,
    DeadLetter,
    Delivery,
    Destination,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    ack_ends_run,
    from_micros,
    unseen,
    utf8_fault,
)
from beatd.backends.sqlite_controls import HOLDS_BUSY, SQLiteControls, applied, failing
from beatd.backends.sqlite_entries import SQLiteEntries
from beatd.backends.sqlite_file import (
    _AS_BYTES,
    DEFAULT_PRIORITY,
    FORMAT_VERSION,
    LARGE_CATCH_UP,
    LEASE,
    MESSAGE_ATTEMPT,
    MESSAGE_PUBLISHED,
    SCHEMA,
    SQLiteFile,
    _priority,
    _stored,
    _text,
    _us,
    upgrade,
)
from beatd.backends.sqlite_history import (
    FOLD_EVERY,
    PUBLISHED,
    SQLiteRunHistory,
    fold,
    keep_relayed,
    log_done,
    micros,
    published_rows,
    record_ended,
    record_missed,
)
from beatd.backends.sqlite_nodes import SQLiteNodes
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.errors import BackendError
from beatd.history import Ending
from beatd.outcomes import Outcome
from beatd.state import EntryState

__all__ = ["SCHEMA", "SQLiteBackend"]

log = logging.getLogger(__name__)
_destination = attrgetter("destination")
# what a settling method records when the worker gives no `Ending`
_SUCCEEDED, _RETRIED = Ending(Outcome.SUCCEEDED), Ending(Outcome.RETRIED)
_DEAD_LETTERED, _RELEASED = Ending(Outcome.DEAD_LETTERED), Ending(Outcome.RELEASED)
_NONE = (None, None, None, None)  # no attempt opened: history is off
NAMES_PER_READ = 500  # names per `IN (...)`: within every SQLite's bound on parameters (999)
_ATTEMPT_COLUMNS = ", ".join(column for column, _ in MESSAGE_ATTEMPT)
_OPEN_ATTEMPT = f"SELECT {_ATTEMPT_COLUMNS} FROM message WHERE receipt = ?"
_GONE = ", ".join(column for column, _ in MESSAGE_ATTEMPT + MESSAGE_PUBLISHED)


class SQLiteLeaseStore(SQLiteFile):
    """The lease row and the fencing epoch, each change one transaction."""

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        def work(db: sqlite3.Connection) -> tuple[Lease | None, int]:
            now = self._now()
            row = db.execute(
                "SELECT token, epoch, expires_at FROM lease WHERE name = ?", (LEASE,)
            ).fetchone()
            found = FORMAT_VERSION
            if row is not None and row[2] > now:
                if held is None or (row[0], row[1]) != (held.token, held.epoch):
                    return None, found  # held by another token, whatever node name it runs under
                lease = held
            else:
                found = upgrade(db, self.path)  # committed with the take, or not at all
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
            return lease, found

        lease, found = self._run(work, lease=True)
        if found < FORMAT_VERSION:
            log.info(
                "upgraded the persisted state of %s from format %d to %d",
                self.path,
                found,
                FORMAT_VERSION,
            )
        return lease

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


class SQLiteStateStore(SQLiteFile):
    """The entry_state table, advanced with the runs' messages in one fenced transaction."""

    def accepts(self, kind: type[Destination]) -> bool:
        return kind is BeatdQueue

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        """Every state in one read: SQLite's file has no per-call limit to outlast."""
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

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        """By the primary key, NAMES_PER_READ names a statement (SQLite's bound on parameters)."""
        asked = list(dict.fromkeys(names))

        def read(db: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            for i in range(0, len(asked), NAMES_PER_READ):
                chunk = asked[i : i + NAMES_PER_READ]
                marks = ", ".join("?" * len(chunk))
                rows += db.execute(
                    "SELECT entry, last_slot_us, last_published_us, identity FROM entry_state "
                    f"WHERE entry IN ({marks})",
                    chunk,
                ).fetchall()
            return rows

        rows = self._run(read, write=False) if asked else []
        return {
            entry: EntryState(
                entry, from_micros(slot), from_micros(published) if published else None, identity
            )
            for entry, slot, published, identity in rows
        }

    def state_page(self, cursor: str, limit: int) -> tuple[dict[str, EntryState], str]:
        """In the key's order, from after the last name read."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT entry, last_slot_us, last_published_us, identity FROM entry_state "
                "WHERE entry > ? ORDER BY entry LIMIT ?",
                (cursor, limit),
            ).fetchall(),
            write=False,
        )
        page = {
            entry: EntryState(
                entry, from_micros(slot), from_micros(published) if published else None, identity
            )
            for entry, slot, published, identity in rows
        }
        return page, (rows[-1][0] if len(rows) == limit else "")

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        _only_beatd_queues(messages)

        def work(db: sqlite3.Connection) -> set[str]:
            self._check_lease(db, lease)
            now = self._now()  # one reading: the controls' checks and the runs' records
            rejected = failing(db, writes, messages, micros(now))
            for write in writes:
                state = write.state
                if state.entry in rejected:  # its pause or guard failed
                    continue
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
            replaced = applied(db, writes, messages, rejected, micros(now))
            if self.history:  # each run's published record in its message's row
                db.executemany(
                    PUBLISHED, published_rows(lease, now, micros(now), messages, rejected)
                )
                record_missed(db, lease, micros(now), writes, rejected, replaced)
            else:
                db.executemany(
                    "INSERT INTO message (id, queue, priority, body, ready_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (m.id, m.destination.queue, _priority(m.destination.priority), m.body, now)
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


def _only_beatd_queues(messages: Sequence[Outgoing]) -> None:
    """Refuse, before anything is written, messages for another broker than this file."""
    if set(map(type, map(_destination, messages))) - {BeatdQueue}:  # per run: in C
        refused = next(m for m in messages if type(m.destination) is not BeatdQueue)
        kind = type(refused.destination)
        needs = NEEDS.get(kind, ("another broker", ""))[0]
        raise BackendError(
            f"entry {refused.entry} publishes to a {kind.__name__}, which needs {needs}; "
            "SQLite stores beatd's own messages only"
        )


class SQLiteWorkQueue(SQLiteFile):
    """The message table: claims by receipt, ready again when their visibility lapses."""

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        ready = self._now() + delay
        self._run(
            lambda db: db.executemany(
                "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (m.id, m.destination.queue, _priority(m.destination.priority), m.body, ready)
                    for m in messages
                ],
            )
        )

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        receipt = f"{consumer}:{secrets.token_hex(8)}"
        marks = ",".join("?" * len(queues))

        def work(db: sqlite3.Connection) -> Delivery | None:
            now = self._now()
            # the attempt opens in the message's row (a trigger records one left open as lost)
            attempt = (consumer, self._host, os.getpid(), micros(now)) if self.history else _NONE
            row = db.execute(
                f"UPDATE message SET receipt = ?, ready_at = ?, deliveries = deliveries + 1, "
                f"attempt_consumer = ?, attempt_host = ?, attempt_pid = ?, attempt_us = ? "
                f"WHERE seq = (SELECT seq FROM message WHERE queue IN ({marks}) "
                f"AND ready_at <= ? ORDER BY priority DESC, seq LIMIT 1) "
                f"RETURNING {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, deliveries",
                (receipt, now + visibility, *attempt, *queues, now),
            ).fetchall()
            if not row:
                return None
            message_id, queue, body, deliveries = row[0]
            unreadable = utf8_fault(message_id, "id") or utf8_fault(body, "body")
            return Delivery(
                _text(message_id), _text(queue), _text(body), deliveries, receipt, unreadable
            )

        return self._run(work)

    def _end(
        self, db: sqlite3.Connection, delivery: Delivery, started: Any, ending: Ending
    ) -> None:
        """Store the attempt `started` (the claimed row's MESSAGE_ATTEMPT, if one is open),
        ended now as `ending` says."""
        if started is not None and started[3] is not None and self.history:
            record_ended(db, _stored(delivery.id), started[:4], ending, micros(self._now()))

    def _delete_for_good(
        self, db: sqlite3.Connection, delivery: Delivery, ending: Ending, final: bool = True
    ) -> None:
        """Delete the claimed message (ack, dead letter), if the claim still holds: its run's
        attempt ends (`_done`) and, when `final` and the run holds its entry's busy mark (read
        by the same statement), the controls' step for a final outcome runs (`_run_final`)."""
        row = db.execute(
            f"DELETE FROM message WHERE receipt = ? RETURNING {_GONE}, {HOLDS_BUSY}",
            (delivery.receipt,),
        ).fetchone()
        self._done(db, delivery, None if row is None else row[:-1], ending)
        if final and row is not None and row[-1]:
            self._run_final(db, _stored(delivery.id))

    def _done(self, db: sqlite3.Connection, delivery: Delivery, gone: Any, ending: Ending) -> None:
        """A message deleted for good (`gone`: its MESSAGE_ATTEMPT and MESSAGE_PUBLISHED): a
        record still in it is logged with its attempt (`log_done`), else the attempt is stored
        in `run`'s record."""
        if gone is None or gone[8] is None:  # no record in the message (published_us)
            self._end(db, delivery, gone, ending)
            return
        if delivery.queue == OUTBOX_QUEUE:
            keep_relayed(db, _stored(delivery.id), gone)
            return
        opened = gone[3] is not None and self.history
        log_done(db, _stored(delivery.id), gone, ending if opened else None, micros(self._now()))
        self._logged += 1
        if self._logged >= FOLD_EVERY:
            fold(db)
            self._logged = 0

    def _settle(
        self, sql: str, params: tuple[object, ...], delivery: Delivery, ending: Ending
    ) -> None:
        """Write to the claimed message, if the claim still holds, and with that write end the
        attempt open in it (`sql` closes it: attempt_us = NULL)."""

        def work(db: sqlite3.Connection) -> None:
            started = db.execute(_OPEN_ATTEMPT, (delivery.receipt,)).fetchone()
            if db.execute(sql, (*params, delivery.receipt)).rowcount == 1:
                self._end(db, delivery, started, ending)

        self._run(work)

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        cursor = self._run(
            lambda db: db.execute(
                "UPDATE message SET ready_at = ? WHERE receipt = ?",
                (self._now() + visibility, delivery.receipt),
            )
        )
        return cursor.rowcount == 1

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        def work(db: sqlite3.Connection) -> None:
            self._delete_for_good(db, delivery, ending or _SUCCEEDED, ack_ends_run(delivery.queue))

        self._run(work)

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._settle(
            "UPDATE message SET receipt = NULL, ready_at = ?, deliveries = deliveries - 1, "
            "attempt_us = NULL, published_us = NULL WHERE receipt = ?",
            (self._now(),),
            delivery,
            ending or _RELEASED,
        )

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        self._settle(
            "UPDATE message SET receipt = NULL, body = ?, ready_at = ?, deliveries = 0, "
            "attempt_us = NULL, published_us = NULL WHERE receipt = ?",
            (body, self._now() + delay),
            delivery,
            ending or _RETRIED,
        )

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        def work(db: sqlite3.Connection) -> None:  # moved in SQL: bytes kept as they are
            db.execute(
                "INSERT INTO dead_letter (id, queue, priority, body, reason, failed_at, "
                "deliveries) SELECT id, queue, priority, body, ?, ?, ? FROM message "
                "WHERE receipt = ?",
                (reason, self._now(), delivery.deliveries, delivery.receipt),
            )
            self._delete_for_good(db, delivery, ending or _DEAD_LETTERED)

        self._run(work)

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        self._settle(
            "UPDATE message SET attempt_us = NULL, published_us = NULL WHERE receipt = ?",
            (),
            delivery,
            ending,
        )


class SQLiteQueueAdmin(SQLiteFile):
    """The dead_letter table and queue depths, for operators and `beatd migrate`."""

    def dead_letters(self) -> list[DeadLetter]:
        return self._dead_rows("", ())

    def count_dead_letters(self) -> int:
        return int(
            self._run(
                lambda db: db.execute("SELECT count(*) FROM dead_letter").fetchone()[0],
                write=False,
            )
        )

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('queue')}, count(*) FROM dead_letter GROUP BY 1"
            ).fetchall(),
            write=False,
        )
        return {_text(q): int(n) for q, n in rows}

    def dead_letter_page(self, offset: int, limit: int) -> list[DeadLetter]:
        return self._dead_rows(" LIMIT ? OFFSET ?", (max(0, limit), max(0, offset)))

    def _dead_rows(self, page: str, params: tuple[int, ...]) -> list[DeadLetter]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, {_AS_BYTES.format('reason')}, failed_at, "
                f"deliveries FROM dead_letter ORDER BY seq{page}",
                params,
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

    def oldest_waiting(self) -> dict[str, datetime]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('queue')}, MIN(ready_at) FROM message "
                "WHERE ready_at <= ? GROUP BY queue",
                (self._now(),),
            ).fetchall(),
            write=False,
        )
        return {_text(q): datetime.fromtimestamp(t, UTC) for q, t in rows}

    def delete_dead(self, message_id: str | None) -> int:
        where, params = ("", ()) if message_id is None else ("WHERE id = ?", (message_id,))
        return self._run(
            lambda db: int(db.execute(f"DELETE FROM dead_letter {where}", params).rowcount)
        )

    def queued_as_dead_letters(
        self, reason: str, of_queue: Callable[[str], bool] = lambda queue: True
    ) -> list[DeadLetter]:
        """Every run still queued (claimed or not) in the queues `of_queue` takes, as dead
        letters with `reason`, bytes as stored: what `beatd migrate --queued-as-dead-letters`
        copies out of a damaged file (and the outbox runs it carries)."""
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_AS_BYTES.format('id')}, {_AS_BYTES.format('queue')}, "
                f"{_AS_BYTES.format('body')}, deliveries FROM message ORDER BY seq"
            ).fetchall(),
            write=False,
        )
        now = datetime.fromtimestamp(self._now(), UTC)
        letters = [DeadLetter(_text(i), _text(q), _text(b), reason, now, d) for i, q, b, d in rows]
        return [letter for letter in letters if of_queue(letter.queue)]

    def queue_depths(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute("SELECT queue, COUNT(*) FROM message GROUP BY queue").fetchall(),
            write=False,
        )
        return dict(rows)


class SQLiteBackend(
    SQLiteLeaseStore,
    SQLiteStateStore,
    SQLiteWorkQueue,
    SQLiteQueueAdmin,
    SQLiteRunHistory,
    SQLiteControls,
    SQLiteEntries,
    SQLiteNodes,
):
    """Every role, on one file (see the module doc). `read_only`: for commands that only look
    (status, dead list, a migration's source): the file is opened with `mode=ro`. With it or
    `create=False`, a missing file is an error."""
