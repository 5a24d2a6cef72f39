"""PostgreSQL: the lease, the run state and the queues of several hosts in one database.

Every write is one transaction, and every write under the lease locks the lease row
(`SELECT ... FOR SHARE`) before its compare-and-set on the horizons and its queue inserts, so a
take (`FOR UPDATE` on the same row) cannot commit between the check and the write: it waits for
the commit, or the commit waits for it and then finds the lease gone. Times (lease expiry, claim
deadlines, retry delays) are the database's `clock_timestamp()`, never a client's.

Tables, in the schema named by `--namespace` (default `beatd`; docs/postgresql.md):
  format        the persisted-state format (one row), raised by `upgrade` under an advisory lock
  lease         one row: node, token, epoch (the fencing epoch, never lowered), expires_at
  entry_state   entry -> last_slot_us, last_published_us, identity
  message       queued runs: claimed by receipt until ready_at, `FOR UPDATE SKIP LOCKED`
  dead_letter   dead letters with reason, deliveries, failed_at
  run, attempt  the run history (format 2): published records with their attempts, written in
                the commit's, the claim's and the settling steps' transactions
  run_open      the runs neither finished nor marked overdue (what a deadline may still mark)
  missed        missed-slot records, one per entry, reason and decision
  entry_summary each entry's newest finished run, updated with every final attempt end
  control       per entry its pause, busy mark and held run (format 2, the operator controls)
  audit         the audit log; trigger_key: remembered idempotency keys and request ids

The backend is its parts, one per role, sharing one pool (`PostgresLink`, postgres_link.py):
`PostgresLeaseStore` and `PostgresStateStore` here, `PostgresWorkQueue` and `PostgresQueueAdmin`
in postgres_queue.py (with the LISTEN/NOTIFY wake-ups), `PostgresRunHistory` in
postgres_history.py and `PostgresHistoryUpkeep` (retention, migrate's copy) in postgres_upkeep.py,
`PostgresControls` in postgres_controls.py; the history's statements inside the other parts'
transactions are postgres_records.py, the controls' postgres_gates.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from beatd.backends.base import (
    NEEDS,
    BeatdQueue,
    Destination,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    from_micros,
    to_micros,
)
from beatd.backends.postgres_controls import PostgresControls
from beatd.backends.postgres_entries import PostgresEntries
from beatd.backends.postgres_gates import gate, mark
from beatd.backends.postgres_link import LEASE, NOW, PostgresLink, redact
from beatd.backends.postgres_nodes import PostgresNodes
from beatd.backends.postgres_queue import PostgresQueueAdmin, PostgresWorkQueue, insert_messages
from beatd.backends.postgres_records import insert_missed, published_records
from beatd.backends.postgres_upkeep import PostgresHistoryUpkeep
from beatd.errors import BackendError
from beatd.state import EntryState

__all__ = ["PostgresBackend", "redact"]

# states per statement of load_states: a few ms of the server and 1 MiB of reply each
STATE_PAGE = 10_000


class PostgresLeaseStore(PostgresLink):
    """The lease row, locked `FOR UPDATE` by every change."""

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        def work(db: psycopg.Connection[Any]) -> Lease | None:
            row = db.execute(
                f"SELECT token, epoch, expires_at > {NOW} FROM {self.schema}.lease "
                "WHERE name = %s FOR UPDATE",
                (LEASE,),
            ).fetchone()
            assert row is not None  # written by the first migration, never deleted
            token, epoch, live = row
            if live:
                if held is None or (token, epoch) != (held.token, held.epoch):
                    return None  # held by another token, whatever node name it runs under
                lease = held
            else:
                lease = Lease(node, secrets.token_hex(16), max(epoch, min_epoch) + 1)
            db.execute(
                f"UPDATE {self.schema}.lease SET node = %s, token = %s, epoch = %s, "
                f"expires_at = {NOW} + %s, config_hash = %s WHERE name = %s",
                (lease.node, lease.token, lease.epoch, ttl, config_hash, LEASE),
            )
            return lease

        return self._run(work)

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        def work(db: psycopg.Connection[Any]) -> bool:
            cursor = db.execute(
                f"UPDATE {self.schema}.lease SET expires_at = {NOW} + %s "
                f"WHERE name = %s AND token = %s AND epoch = %s AND expires_at > {NOW}",
                (ttl, LEASE, lease.token, lease.epoch),
            )
            return cursor.rowcount == 1

        return self._run(work)

    def release_lease(self, lease: Lease) -> None:
        self._run(  # the row stays: it keeps the epoch
            lambda db: db.execute(
                f"UPDATE {self.schema}.lease SET expires_at = 0 WHERE name = %s AND token = %s",
                (LEASE, lease.token),
            )
        )

    def leader(self) -> LeaderInfo | None:
        row = self._run(
            lambda db: db.execute(
                f"SELECT node, epoch, expires_at - {NOW}, config_hash FROM {self.schema}.lease "
                "WHERE name = %s",
                (LEASE,),
            ).fetchone(),
            write=False,
        )
        if row is None or row[2] <= 0:
            return None
        return LeaderInfo(row[0], int(row[1]), float(row[2]), row[3])


class PostgresStateStore(PostgresLink):
    """The entry_state table, advanced with the runs' messages in one transaction that holds
    the lease row locked for share."""

    @property
    def _any_control(self) -> str:
        return f"EXISTS (SELECT 1 FROM {self.schema}.control)"

    def accepts(self, kind: type[Destination]) -> bool:
        return kind is BeatdQueue

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        """Every state, STATE_PAGE at a time in the key's order, each page its own statement
        within the statement timeout (one SELECT of 1,000,000 may outlast it); the leader reads
        under its lease, which fences every other state write."""
        query = (
            "SELECT entry, last_slot_us, last_published_us, identity "
            f"FROM {self.schema}.entry_state WHERE entry > %s ORDER BY entry LIMIT %s"
        )
        states: dict[str, EntryState] = {}
        after, page = "", STATE_PAGE

        def read(at: tuple[str, int]) -> list[Any]:
            return self._run(lambda db: db.execute(query, at).fetchall(), write=False)

        while True:
            rows = read((after, page))
            for entry, slot, published, identity in rows:
                last = from_micros(published) if published else None
                states[entry] = EntryState(entry, from_micros(slot), last, identity)
            if len(rows) < page:
                return states
            after = rows[-1][0]
            if pace is not None:
                pace()

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        """By the primary key, STATE_PAGE names a statement."""
        query = (
            "SELECT entry, last_slot_us, last_published_us, identity "
            f"FROM {self.schema}.entry_state WHERE entry = ANY(%s)"
        )
        asked = list(dict.fromkeys(names))
        states: dict[str, EntryState] = {}

        def read(chunk: list[str]) -> list[Any]:
            return self._run(lambda db: db.execute(query, (chunk,)).fetchall(), write=False)

        for i in range(0, len(asked), STATE_PAGE):
            for entry, slot, published, identity in read(asked[i : i + STATE_PAGE]):
                last = from_micros(published) if published else None
                states[entry] = EntryState(entry, from_micros(slot), last, identity)
        return states

    def state_page(self, cursor: str, limit: int) -> tuple[dict[str, EntryState], str]:
        """In the key's order, from after the last name read."""
        query = (
            "SELECT entry, last_slot_us, last_published_us, identity "
            f"FROM {self.schema}.entry_state WHERE entry > %s ORDER BY entry LIMIT %s"
        )
        rows = self._run(lambda db: db.execute(query, (cursor, limit)).fetchall(), write=False)
        page: dict[str, EntryState] = {}
        for entry, slot, published, identity in rows:
            last = from_micros(published) if published else None
            page[entry] = EntryState(entry, from_micros(slot), last, identity)
        return page, (rows[-1][0] if len(rows) == limit else "")

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        refused = [m for m in messages if type(m.destination) is not BeatdQueue]
        if refused:
            kind = type(refused[0].destination)
            needs = NEEDS.get(kind, ("another broker", ""))[0]
            raise BackendError(
                f"entry {refused[0].entry} publishes to a {kind.__name__}, which needs {needs}; "
                "PostgreSQL stores beatd's own messages only"
            )

        def work(db: psycopg.Connection[Any]) -> set[str]:
            # the commit's one clock reading, and whether any entry has a control
            now_us, controlled = self._check_lease_and(db, lease, self._any_control)
            guarded = any(w.guard is not None for w in writes)
            failed, held = (
                gate(db, self.schema, writes, messages, now_us)
                if (controlled or guarded)
                else (set[str](), {})
            )
            kept = [w for w in writes if w.state.entry not in failed] if failed else writes
            applied = self._write_states(db, kept)
            rejected = ({w.state.entry for w in writes} - applied) | failed
            published = [m for m in messages if m.entry not in rejected]
            replaced = []
            if guarded:
                replaced = mark(db, self.schema, writes, applied, published, held, now_us)
            if self.history:
                records = published_records(self.schema, lease, published, now_us)
                insert_messages(db, self.schema, self.channel, published, with_=records)
                insert_missed(db, self.schema, lease, writes, applied, now_us, replaced)
            else:
                insert_messages(db, self.schema, self.channel, published)
            return rejected

        return self._run(work)

    def _write_states(self, db: psycopg.Connection[Any], writes: Sequence[StateWrite]) -> set[str]:
        """Apply the compare-and-set writes in two statements; the entries written."""
        columns: list[list[Any]] = [[], [], [], [], []]
        for write in writes:
            state = write.state
            published = state.last_published
            row = (
                state.entry,
                to_micros(state.last_slot),
                None if published is None else to_micros(published),
                state.identity,
                None if write.expected is None else to_micros(write.expected),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        if not writes:
            return set()
        given = (
            "unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::bigint[]) "
            "AS w(entry, slot, published, identity, expected)"
        )
        updated = db.execute(
            f"UPDATE {self.schema}.entry_state s SET last_slot_us = w.slot, "
            f"last_published_us = w.published, identity = w.identity FROM {given} "
            "WHERE s.entry = w.entry AND s.last_slot_us = w.expected RETURNING s.entry",
            columns,
        ).fetchall()
        inserted = db.execute(
            f"INSERT INTO {self.schema}.entry_state "
            "(entry, last_slot_us, last_published_us, identity) "
            f"SELECT entry, slot, published, identity FROM {given} WHERE expected IS NULL "
            "ON CONFLICT (entry) DO NOTHING RETURNING entry",
            columns,
        ).fetchall()
        return {entry for (entry,) in updated} | {entry for (entry,) in inserted}

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        rejected = self.commit(lease, writes, messages)  # one round of transactions: no overlap
        return lambda: rejected

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        def work(db: psycopg.Connection[Any]) -> None:
            self._check_lease(db, lease)
            db.execute(
                f"DELETE FROM {self.schema}.entry_state WHERE entry = ANY(%s)", (list(entries),)
            )

        self._run(work)


class PostgresBackend(
    PostgresLeaseStore,
    PostgresStateStore,
    PostgresWorkQueue,
    PostgresQueueAdmin,
    PostgresHistoryUpkeep,
    PostgresEntries,  # its writes' audit records go through PostgresControls
    PostgresControls,
    PostgresNodes,
):
    """Every role, on one schema of one database (see the module doc)."""
