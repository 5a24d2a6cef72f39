"""The in-memory backend: every role (lease, run state, queues, administration) held in this
process, for fast tests of the scheduler and the worker together and for trying beatd out.

`memory://NAME` names one store per process: every backend opened on the same name shares it,
so a scheduler and an embedded worker in one process see the same lease, states and queues, as
two processes on one SQLite file do. Nothing survives the process.

Each call is one atomic step under the store's lock, with the same semantics as the SQLite
backend (the contract suite, tests/backends/contract.py, runs on both): the lease check happens
in the same step as the write it guards, a commit is a compare-and-set on each entry's horizon,
and a claim is handed out highest priority first, then oldest. Times are the handle's wall clock
(`wall_clock`, injected so a test's FakeClock moves leases and claims on). Nothing here fails
on its own: faults are injected around any backend by `beatd.backends.faults.FaultyBackend`.
Queues are scanned, not indexed: meant for tests and small loads, not for throughput.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
    unseen,
)
from beatd.backends.memory_controls import Book, MemoryControls
from beatd.backends.memory_entries import MemoryEntries, Shelf
from beatd.backends.memory_history import History, MemoryHistory
from beatd.backends.memory_nodes import MemoryNodes, NodeBook
from beatd.errors import BackendError, LeaseLost
from beatd.history import Ending
from beatd.outcomes import Outcome
from beatd.state import EntryState

DEFAULT_PRIORITY = 5  # as SQLite stores an unset priority


@dataclass(frozen=True, slots=True)
class _Holder:
    lease: Lease
    expires_at: float  # wall-clock seconds
    config_hash: str


@dataclass(slots=True)
class _Message:
    seq: int  # order of arrival: the oldest of a priority goes first
    id: str
    queue: str
    priority: int
    body: str
    ready_at: float  # wall-clock seconds; while claimed, when the claim lapses
    deliveries: int = 0
    receipt: str | None = None


@dataclass
class _Store:
    """What one `memory://NAME` holds; every access is under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    holder: _Holder | None = None
    epoch: int = 0  # the last epoch handed out: never goes back
    states: dict[str, EntryState] = field(default_factory=dict)
    messages: dict[int, _Message] = field(default_factory=dict)  # by seq
    dead: list[tuple[_Message, DeadLetter]] = field(default_factory=list)  # oldest first
    sequence: itertools.count[int] = field(default_factory=itertools.count)
    history: History = field(default_factory=History)
    book: Book = field(default_factory=Book)  # the operator controls and the audit log
    shelf: Shelf = field(default_factory=Shelf)  # the runtime entries and their change feed
    nodes: NodeBook = field(default_factory=NodeBook)  # the node records

    def add(self, queue: BeatdQueue, message_id: str, body: str, ready_at: float) -> None:
        priority = DEFAULT_PRIORITY if queue.priority is None else queue.priority
        seq = next(self.sequence)
        self.messages[seq] = _Message(seq, message_id, queue.queue, priority, body, ready_at)

    def claimed(self, delivery: Delivery) -> _Message | None:
        """The message `delivery` still holds the claim on, if any."""
        return next((m for m in self.messages.values() if m.receipt == delivery.receipt), None)


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def store(name: str) -> _Store:
    """The process's store named `name`, made empty on first use."""
    with _STORES_LOCK:
        return _STORES.setdefault(name, _Store())


def discard(name: str) -> None:
    """Drop the store named `name` (tests free theirs); handles on it keep the old one."""
    with _STORES_LOCK:
        _STORES.pop(name, None)


class _StateReads:
    """The reads of the `StateStore` role, over the store's states under its lock."""

    _store: _Store

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        with self._store.lock:
            return dict(self._store.states)

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        with self._store.lock:
            held = self._store.states
            return {n: held[n] for n in names if n in held}

    def state_page(self, cursor: str, limit: int) -> tuple[dict[str, EntryState], str]:
        with self._store.lock:
            held = self._store.states
            names = sorted(n for n in held if n > cursor)[:limit]
            page = {n: held[n] for n in names}
        return page, (names[-1] if len(names) == limit else "")


class MemoryBackend(_StateReads, MemoryControls, MemoryHistory, MemoryEntries, MemoryNodes):
    """A handle on the store `name` of this process; `wall_clock` is its time (Unix seconds);
    with `history` False it writes no run history (it still reads it)."""

    def __init__(
        self,
        name: str = "",
        *,
        wall_clock: Callable[[], float] = time.time,
        history: bool = True,
    ) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self._store = store(name)
        self._now = wall_clock
        self._lock, self._history = self._store.lock, self._store.history
        self._book, self._add = self._store.book, self._store.add
        self._shelf, self._nodes = self._store.shelf, self._store.nodes
        self._writes_history = history
        self._host, self._pid = socket.gethostname(), os.getpid()

    def _horizon(self, entry: str) -> datetime | None:
        state = self._store.states.get(entry)  # under the lock, from the controls' steps
        return state.last_slot if state is not None else None

    def close(self) -> None:
        """Nothing to let go of: the store stays with the process for the other handles."""

    def ping(self) -> None:
        """Always answers: the store is in this process."""

    def persistence_warnings(self) -> list[str]:
        return [
            f"{self.url} keeps the lease, every entry's state and every queued run in this "
            "process only: all of it is lost when the process exits; use sqlite:// or "
            "redis:// for anything but tests"
        ]

    def server_time(self) -> float:
        return self._now()

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
        with self._store.lock:
            now, holder = self._now(), self._store.holder
            if holder is not None and holder.expires_at > now:
                if held is None or (holder.lease.token, holder.lease.epoch) != (
                    held.token,
                    held.epoch,
                ):
                    return None  # held by another token, whatever node name it runs under
                lease = holder.lease
            else:
                self._store.epoch = max(self._store.epoch, min_epoch) + 1
                lease = Lease(node, secrets.token_hex(16), self._store.epoch)
            self._store.holder = _Holder(lease, now + ttl, config_hash)
            return lease

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        with self._store.lock:
            holder = self._store.holder
            if holder is None or not self._holds(holder, lease):
                return False
            self._store.holder = _Holder(holder.lease, self._now() + ttl, holder.config_hash)
            return True

    def release_lease(self, lease: Lease) -> None:
        with self._store.lock:
            holder = self._store.holder
            if holder is not None and holder.lease.token == lease.token:
                self._store.holder = None

    def leader(self) -> LeaderInfo | None:
        with self._store.lock:
            holder, now = self._store.holder, self._now()
            if holder is None or holder.expires_at <= now:
                return None
            node, epoch = holder.lease.node, holder.lease.epoch
            return LeaderInfo(node, epoch, holder.expires_at - now, holder.config_hash)

    def _holds(self, holder: _Holder, lease: Lease) -> bool:
        same = (holder.lease.token, holder.lease.epoch) == (lease.token, lease.epoch)
        return same and holder.expires_at > self._now()

    def _check_lease(self, lease: Lease) -> None:
        holder = self._store.holder
        if holder is None or not self._holds(holder, lease):
            raise LeaseLost(f"lease epoch {lease.epoch} of {lease.node} is no longer held")

    # --- run state ------------------------------------------------------------------------

    def accepts(self, kind: type[Destination]) -> bool:
        return kind is BeatdQueue

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        queues = [_beatd_queue(m) for m in messages]  # refused before anything is written
        with self._store.lock:
            self._check_lease(lease)
            now = self._now()  # one reading: the runs of one commit share it
            at = datetime.fromtimestamp(now, UTC)
            states, book = self._store.states, self._store.book
            rejected: set[str] = set()
            mine: dict[str, list[Outgoing]] = {}
            for m in messages:
                mine.setdefault(m.entry, []).append(m)
            for write in writes:
                entry = write.state.entry
                current = states.get(entry)
                ours = mine.pop(entry, [])
                if (current.last_slot if current is not None else None) != write.expected or (
                    not book.passes(entry, write, ours, at)
                ):
                    rejected.add(entry)
                else:
                    states[entry] = write.state
                    replaced = book.applied(write, ours, at)
                    if self._writes_history:
                        self._history.missed_by(write, lease, at)
                        if replaced is not None:
                            self._history.missed_one(replaced, lease, at)
            rejected.update(e for e, ours in mine.items() if not book.passes(e, None, ours, at))
            for m, queue in zip(messages, queues, strict=True):
                if m.entry not in rejected:
                    self._store.add(queue, m.id, m.body, now)
                    if self._writes_history:
                        self._history.published(m, lease, at)
            return rejected

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        rejected = self.commit(lease, writes, messages)  # in this process: nothing to overlap
        return lambda: rejected

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        with self._store.lock:
            self._check_lease(lease)
            for entry in entries:
                self._store.states.pop(entry, None)

    # --- queues ---------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        queues = [_beatd_queue(m) for m in messages]
        with self._store.lock:
            ready = self._now() + delay
            for m, queue in zip(messages, queues, strict=True):
                self._store.add(queue, m.id, m.body, ready)

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        receipt = f"{consumer}:{secrets.token_hex(8)}"
        with self._store.lock:
            now = self._now()
            ready = [
                m for m in self._store.messages.values() if m.queue in queues and m.ready_at <= now
            ]
            if not ready:
                return None
            chosen = min(ready, key=lambda m: (-m.priority, m.seq))
            chosen.receipt, chosen.ready_at = receipt, now + visibility
            chosen.deliveries += 1
            if self._writes_history:
                at = datetime.fromtimestamp(now, UTC)
                self._history.start(chosen.id, consumer, self._host, self._pid, at)
            return Delivery(chosen.id, chosen.queue, chosen.body, chosen.deliveries, receipt)

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is not None:
                message.ready_at = self._now() + visibility
            return message is not None

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is not None:
                del self._store.messages[message.seq]
                self._ended(message, ending or Ending(Outcome.SUCCEEDED))
                if ack_ends_run(message.queue):
                    self._run_ended(message.id)

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is not None:
                message.receipt, message.ready_at = None, self._now()
                message.deliveries -= 1
                self._ended(message, ending or Ending(Outcome.RELEASED))

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is not None:
                message.receipt, message.body = None, body
                message.ready_at, message.deliveries = self._now() + delay, 0
                self._ended(message, ending or Ending(Outcome.RETRIED))

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is None:
                return
            del self._store.messages[message.seq]
            failed_at = datetime.fromtimestamp(self._now(), UTC)
            letter = DeadLetter(
                message.id, message.queue, message.body, reason, failed_at, delivery.deliveries
            )
            self._store.dead.append((message, letter))
            self._ended(message, ending or Ending(Outcome.DEAD_LETTERED))
            self._run_ended(message.id)

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        with self._store.lock:
            message = self._store.claimed(delivery)
            if message is not None:
                self._ended(message, ending)

    def _ended(self, message: _Message, ending: Ending) -> None:
        """End the run's open attempt, under the lock of the queue step that settled it."""
        if self._writes_history:
            self._history.end(message.id, ending, self._at())

    # --- administration -------------------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        with self._store.lock:
            return [letter for _, letter in self._store.dead]

    def count_dead_letters(self) -> int:
        with self._store.lock:
            return len(self._store.dead)

    def dead_letter_counts(self) -> dict[str, int]:
        with self._store.lock:
            return dict(Counter(letter.queue for _, letter in self._store.dead))

    def dead_letter_page(self, offset: int, limit: int) -> list[DeadLetter]:
        with self._store.lock:
            return [letter for _, letter in self._store.dead[offset : offset + limit]]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        with self._store.lock:
            new = unseen(letters, {letter.id for _, letter in self._store.dead})
            for letter in new:
                message = _Message(-1, letter.id, letter.queue, DEFAULT_PRIORITY, letter.body, 0)
                self._store.dead.append((message, letter))
            return len(new)

    def requeue_dead(self, message_id: str | None) -> int:
        with self._store.lock:
            moving = [d for d in self._store.dead if message_id in (None, d[1].id)]
            self._store.dead = [d for d in self._store.dead if message_id not in (None, d[1].id)]
            now = self._now()
            for message, _ in moving:
                queue = BeatdQueue(message.queue, message.priority)
                self._store.add(queue, message.id, message.body, now)
            return len(moving)

    def delete_dead(self, message_id: str | None) -> int:
        with self._store.lock:
            kept = [d for d in self._store.dead if message_id not in (None, d[1].id)]
            gone = len(self._store.dead) - len(kept)
            self._store.dead = kept
            return gone

    def oldest_waiting(self) -> dict[str, datetime]:
        with self._store.lock:
            now, oldest = self._now(), dict[str, float]()
            for m in self._store.messages.values():
                if m.ready_at <= now and m.ready_at < oldest.get(m.queue, now + 1):
                    oldest[m.queue] = m.ready_at
        return {q: datetime.fromtimestamp(t, UTC) for q, t in oldest.items()}

    def queue_depths(self) -> dict[str, int]:
        with self._store.lock:
            return dict(Counter(m.queue for m in self._store.messages.values()))


def _beatd_queue(outgoing: Outgoing) -> BeatdQueue:
    """The message's destination, which must be beatd's own queue: the only kind stored here."""
    if isinstance(outgoing.destination, BeatdQueue):
        return outgoing.destination
    kind = type(outgoing.destination)
    needs = NEEDS.get(kind, ("another broker", ""))[0]
    raise BackendError(
        f"entry {outgoing.entry} publishes to a {kind.__name__}, which needs {needs}; "
        "the memory backend stores beatd's own messages only"
    )
