"""PostgreSQL's work queues: the message table claimed `FOR UPDATE SKIP LOCKED` (workers never
wait on each other's claims), visibility by `ready_at` on the database's clock, and wake-ups by
LISTEN/NOTIFY on one dedicated connection outside the pool (a pooler in transaction mode cannot
carry a LISTEN). Every insert of ready messages notifies in its own transaction, so a listener
hears of a message only once it can be claimed. A message that only becomes ready later (a
delayed retry, a lapsed claim) is announced by nobody: `wait_for_work` waits no longer than
until the earliest such moment, so polling is the fallback, not the rule.

PostgreSQL stores text in the database's encoding only: a message that is not UTF-8 cannot be
stored, so `Delivery.unreadable` stays empty here.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from beatd.backends.base import DeadLetter, Delivery, Outgoing, ack_ends_run, unseen
from beatd.backends.postgres_link import DEFAULT_PRIORITY, NOW, NOW_US, PostgresLink
from beatd.backends.postgres_records import claim_history, end_history
from beatd.errors import NotApplied
from beatd.history import Ending
from beatd.outcomes import Outcome

log = logging.getLogger(__name__)


def _priority(priority: int | None) -> int:
    return DEFAULT_PRIORITY if priority is None else priority


def insert_messages(
    db: psycopg.Connection[Any],
    schema: str,
    channel: str,
    messages: Sequence[Outgoing],
    delay: float = 0.0,
    with_: tuple[str, tuple[Any, ...]] = ("", ()),
) -> None:
    """Insert messages ready after `delay` seconds and, when ready now, notify their queues, in
    one statement (one round trip; the NOTIFY is delivered when the transaction commits).
    The columns go as arrays in binary format (`%b`): psycopg writes a text-format array in
    Python, escaping every quote of every JSON body (15 µs a run; binary: under 1 µs).
    `with_`: data-modifying CTEs (`WITH name AS (...) `) and their parameters, run in the same
    statement (the published records: one round trip for all)."""
    if not messages:
        return
    prefix, before = with_
    insert = (
        f"INSERT INTO {schema}.message (id, queue, priority, body, ready_at) "
        f"SELECT id, queue, priority, body, {NOW} + %s "
        "FROM unnest(%b::text[], %b::text[], %b::int[], %b::text[]) "
        "AS m(id, queue, priority, body)"
    )
    columns = (
        delay,
        [m.id for m in messages],
        [m.destination.queue for m in messages],
        [_priority(m.destination.priority) for m in messages],
        [m.body for m in messages],
    )
    if delay > 0:  # ready later: announced by nobody (see wait_for_work)
        db.execute(f"{prefix}{insert}", (*before, *columns))
        return
    # a data-modifying CTE runs to its end whether or not the query reads it
    queued = f"{prefix}, queued AS ({insert}) " if prefix else f"WITH queued AS ({insert}) "
    queues = sorted({m.destination.queue for m in messages})
    db.execute(
        f"{queued}SELECT pg_notify(%s, queue) FROM unnest(%s::text[]) AS q(queue)",
        (*before, *columns, channel, queues),
    )


def _queues_match(queues: Sequence[str]) -> tuple[str, object]:
    """The claim's condition on the queue and its parameter. For one queue an equality, so the
    (queue, priority DESC, seq) index yields the runs in claim order and the claim stops at the
    first ready one; PostgreSQL 15 cannot take that order from `= ANY(...)`, and sorts every
    queued run of the queues at each claim (20-40 ms at 15,000 queued)."""
    if len(queues) == 1:
        return "queue = %(queues)s", queues[0]
    return "queue = ANY(%(queues)s)", list(queues)


class PostgresWorkQueue(PostgresLink):
    """The message table: claims by receipt, ready again when their visibility lapses."""

    _listener: psycopg.Connection[Any] | None = None
    _listens = 0  # times the wake-up connection was opened
    _seen_until = 0.0  # the database's time up to which ready messages were announced

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        self._run(
            lambda db: insert_messages(db, self.schema, self.channel, messages, delay), alone=True
        )

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        receipt = f"{consumer}:{secrets.token_hex(8)}"
        match, queues_value = _queues_match(queues)
        sql = (
            f"WITH claimed AS (UPDATE {self.schema}.message SET receipt = %(receipt)s, "
            f"ready_at = {NOW} + %(visibility)s, deliveries = deliveries + 1 WHERE seq = ("
            f"SELECT seq FROM {self.schema}.message WHERE {match} "
            f"AND ready_at <= {NOW} ORDER BY priority DESC, seq LIMIT 1 "
            "FOR UPDATE SKIP LOCKED) RETURNING id, queue, body, deliveries)"
            f"{claim_history(self.schema) if self.history else ''} "
            "SELECT id, queue, body, deliveries FROM claimed"
        )
        params = {"receipt": receipt, "visibility": visibility, "queues": queues_value}
        if self.history:
            params.update(consumer=consumer, host=socket.gethostname(), pid=os.getpid())
        row = self._run(lambda db: db.execute(sql, params).fetchone(), alone=True)
        if row is None:
            return None
        message_id, queue, body, deliveries = row
        return Delivery(message_id, queue, body, deliveries, receipt)

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        cursor = self._run(
            lambda db: db.execute(
                f"UPDATE {self.schema}.message SET ready_at = {NOW} + %s WHERE receipt = %s",
                (visibility, delivery.receipt),
            )
        )
        return cursor.rowcount == 1

    def _settle(
        self,
        settled: str,
        params: dict[str, Any],
        ending: Ending,
        notify: bool = False,
        final: bool = False,
    ) -> None:
        """Run the queue write `settled` (CTEs ending in `settled(id, queue)`, the claim checked
        by `%(receipt)s`) and, unless history is off, end the run's attempt with `ending` in
        the same statement: both or neither. `notify`: its queue's listeners hear of it.
        `final`: the run reached a final outcome; if it holds its entry's busy mark (the same
        statement looks), the mark is cleared in the same transaction (postgres_gates.py)."""
        history, extra = "", dict[str, Any]()
        if self.history:
            history, extra = end_history(self.schema, ending, "settled", NOW_US)
        tail = ", pg_notify(%(channel)s, queue)" if notify else ""
        if final:
            tail += f", id, EXISTS (SELECT 1 FROM {self.schema}.control WHERE busy_run = id)"
        sql = f"WITH {settled}{history} SELECT queue{tail} FROM settled"
        values = {**params, **extra, "channel": self.channel}

        def work(db: psycopg.Connection[Any]) -> None:
            row = db.execute(sql, values).fetchone()
            if final and row is not None and row[-1]:
                self._run_ended(db, row[-2])

        self._run(work)

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._settle(
            f"settled AS (DELETE FROM {self.schema}.message WHERE receipt = %(receipt)s "
            "RETURNING id, queue)",
            {"receipt": delivery.receipt},
            ending or Ending(Outcome.SUCCEEDED),
            final=ack_ends_run(delivery.queue),
        )

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._settle(
            f"settled AS (UPDATE {self.schema}.message SET receipt = NULL, ready_at = {NOW}, "
            "deliveries = deliveries - 1 WHERE receipt = %(receipt)s RETURNING id, queue)",
            {"receipt": delivery.receipt},
            ending or Ending(Outcome.RELEASED),
            notify=True,
        )

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        self._settle(
            f"settled AS (UPDATE {self.schema}.message SET receipt = NULL, body = %(body)s, "
            f"ready_at = {NOW} + %(delay)s, deliveries = 0 WHERE receipt = %(receipt)s "
            "RETURNING id, queue)",
            {"receipt": delivery.receipt, "body": body, "delay": delay},
            ending or Ending(Outcome.RETRIED),
        )

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        self._settle(
            f"settled AS (DELETE FROM {self.schema}.message WHERE receipt = %(receipt)s "
            "RETURNING id, queue, priority, body), "
            f"dead AS (INSERT INTO {self.schema}.dead_letter "
            "(id, queue, priority, body, reason, failed_at, deliveries) "
            f"SELECT id, queue, priority, body, %(why)s, {NOW}, %(deliveries)s FROM settled)",
            {"receipt": delivery.receipt, "why": reason, "deliveries": delivery.deliveries},
            ending or Ending(Outcome.DEAD_LETTERED),
            final=True,
        )

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        if not self.history:
            return
        self._settle(
            f"settled AS (SELECT id, queue FROM {self.schema}.message "
            "WHERE receipt = %(receipt)s FOR UPDATE)",
            {"receipt": delivery.receipt},
            ending,
        )

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """LISTEN on the dedicated connection; True at a notification for one of `queues`, or
        when a message there became ready (or, within `timeout`, becomes ready) without one
        since the last call returned. A run already ready then was announced by that return:
        a worker whose slots are all busy leaves it queued, and this wait must not find it
        again and again (a busy loop), but sleep until something new is added or ready."""
        self._check_prepared()  # the schema, if it could not be checked at open
        try:
            listener = self._listening()
            row = listener.execute(
                f"SELECT {NOW}, (SELECT min(ready_at) FROM {self.schema}.message "
                "WHERE queue = ANY(%s) AND ready_at > %s)",
                (list(queues), self._seen_until),
            ).fetchone()
            assert row is not None
            now, ready_at = float(row[0]), None if row[1] is None else float(row[1])
            self._seen_until = now
            if ready_at is not None and ready_at <= now:
                return True
            wait = timeout if ready_at is None else min(timeout, ready_at - now)
            for _ in listener.notifies(timeout=wait, stop_after=1):
                return True  # maybe another queue's: a spurious True is allowed
            if ready_at is not None and ready_at - now <= timeout:
                self._seen_until = ready_at  # announced now: the next call waits past it
                return True
            return False
        except psycopg.Error as exc:
            self._drop_listener()
            raise NotApplied(f"{self.url}: cannot wait for work: {exc}") from exc

    def _listening(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            listener = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=self.connect_timeout
            )
            listener.execute(f"LISTEN {self.channel}")
            self._listener = listener
            self._seen_until = 0.0  # whatever is ready now was never announced on it
            self._listens += 1
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._drop_listener()
        super().close()

    def connection_stats(self) -> dict[str, int]:
        """The pool now, and how often the wake-up connection was opened again (metrics)."""
        pool = self._pool.get_stats()
        size, idle = pool.get("pool_size", 0), pool.get("pool_available", 0)
        return {
            "in_use": size - idle,
            "idle": idle,
            "waiting": pool.get("requests_waiting", 0),
            "listen_reconnects": max(0, self._listens - 1),
        }


class PostgresQueueAdmin(PostgresLink):
    """The dead_letter table and queue depths, for operators and `beatd migrate`."""

    def dead_letters(self) -> list[DeadLetter]:
        return self._dead_rows("", ())

    def count_dead_letters(self) -> int:
        sql = f"SELECT count(*) FROM {self.schema}.dead_letter"
        row = self._run(lambda db: db.execute(sql).fetchone(), write=False)
        return int(row[0]) if row is not None else 0

    def dead_letter_counts(self) -> dict[str, int]:
        sql = f"SELECT queue, count(*) FROM {self.schema}.dead_letter GROUP BY queue"
        rows = self._run(lambda db: db.execute(sql).fetchall(), write=False)
        return {q: int(n) for q, n in rows}

    def dead_letter_page(self, offset: int, limit: int) -> list[DeadLetter]:
        return self._dead_rows(" LIMIT %s OFFSET %s", (max(0, limit), max(0, offset)))

    def _dead_rows(self, page: str, params: tuple[int, ...]) -> list[DeadLetter]:
        rows = self._run(
            lambda db: db.execute(
                "SELECT id, queue, body, reason, failed_at, deliveries "
                f"FROM {self.schema}.dead_letter ORDER BY seq{page}",
                params,
            ).fetchall(),
            write=False,
        )
        return [
            DeadLetter(i, q, b, r, datetime.fromtimestamp(f, UTC), d) for i, q, b, r, f, d in rows
        ]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        def work(db: psycopg.Connection[Any]) -> int:
            db.execute(f"LOCK TABLE {self.schema}.dead_letter IN SHARE ROW EXCLUSIVE MODE")
            held = {i for (i,) in db.execute(f"SELECT id FROM {self.schema}.dead_letter")}
            new = unseen(letters, held)
            with db.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {self.schema}.dead_letter (id, queue, priority, body, reason, "
                    "failed_at, deliveries) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (d.id, d.queue, DEFAULT_PRIORITY, d.body, d.reason, failed, d.deliveries)
                        for d, failed in ((d, d.failed_at.timestamp()) for d in new)
                    ],
                )
            return len(new)

        return self._run(work)

    def requeue_dead(self, message_id: str | None) -> int:
        where, params = ("", ()) if message_id is None else ("WHERE id = %s", (message_id,))

        def work(db: psycopg.Connection[Any]) -> int:
            moved = db.execute(
                f"WITH moved AS (DELETE FROM {self.schema}.dead_letter {where} "
                "RETURNING seq, id, queue, priority, body) "
                f"INSERT INTO {self.schema}.message (id, queue, priority, body, ready_at) "
                f"SELECT id, queue, priority, body, {NOW} FROM moved ORDER BY seq "
                "RETURNING queue",
                params,
            ).fetchall()
            for queue in sorted({q for (q,) in moved}):
                db.execute("SELECT pg_notify(%s, %s)", (self.channel, queue))
            return len(moved)

        return self._run(work)

    def oldest_waiting(self) -> dict[str, datetime]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT queue, MIN(ready_at) FROM {self.schema}.message "
                f"WHERE ready_at <= {NOW} GROUP BY queue"
            ).fetchall(),
            write=False,
        )
        return {queue: datetime.fromtimestamp(t, UTC) for queue, t in rows}

    def delete_dead(self, message_id: str | None) -> int:
        where, params = ("", ()) if message_id is None else ("WHERE id = %s", (message_id,))
        return self._run(
            lambda db: int(
                db.execute(f"DELETE FROM {self.schema}.dead_letter {where}", params).rowcount
            )
        )

    def queued_as_dead_letters(
        self, reason: str, of_queue: Callable[[str], bool] = lambda queue: True
    ) -> list[DeadLetter]:
        """Every message in the queues `of_queue` takes, claimed or not, as dead letters
        (QueuedReads), in the order they were queued."""
        rows = self._run(
            lambda db: db.execute(
                f"SELECT id, queue, body, deliveries, {NOW} FROM {self.schema}.message ORDER BY seq"
            ).fetchall(),
            write=False,
        )
        return [
            DeadLetter(i, q, b, reason, datetime.fromtimestamp(now, UTC), d)
            for i, q, b, d, now in rows
            if of_queue(q)
        ]

    def queue_depths(self) -> dict[str, int]:
        rows = self._run(
            lambda db: db.execute(
                f"SELECT queue, COUNT(*) FROM {self.schema}.message GROUP BY queue"
            ).fetchall(),
            write=False,
        )
        return {queue: int(count) for queue, count in rows}
