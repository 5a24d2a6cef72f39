"""What a backend is, by role: the leader lease, the run state, the work queues, their
administration, the run history, the operator controls, the runtime entries and the node
records. Each role is a small protocol whose docstrings are the contract; `Backend` is the
composition that SQLite, Redis, PostgreSQL and the in-memory backend offer. A caller asks for
the role it uses (the worker a `WorkQueue`, `beatd migrate` a `StateStore` and a `QueueAdmin`),
so a backend that offers some roles only can serve the callers that need no more. Every backend
passes the same contract tests (`tests/backends/contract.py`).

Errors (beatd.errors), for every method of every role:
- `NotApplied` (a `TransientBackendError`): unreachable or busy, and nothing was written; try
  again.
- `OutcomeUnknown` (a `TransientBackendError`): the request was sent and its reply lost (a
  timeout, a connection lost while waiting): a write may have been applied. Try again only with
  writes that are safe to repeat; the scheduler holds such a commit's runs in doubt.
- `LeaseLost`: you are not the leader; nothing was written.
- `BackendError` (any other): permanent, retrying will not help.
- `StorageFailed`: the storage itself is gone or damaged: the daemon stops (`exit_status`).

Messages go to typed destinations (`BeatdQueue`, `CeleryQueue`); a backend says which it
accepts (`StateStore.accepts`), so nothing outside a backend asks which backend it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, runtime_checkable

from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.celery_events import Payload
from beatd.controls import (
    AuditRecord,
    EntryControl,
    Guard,
    HeldRun,
    Trigger,
    TriggerKey,
    TriggerResult,
)
from beatd.errors import BackendError
from beatd.history import (
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    MissedSlots,
    Retention,
    RunKind,
    RunRecord,
)
from beatd.nodes import NodeRecord
from beatd.runtime_entries import ChangePage, ResolvedEntry, RuntimeEntry
from beatd.state import EntryState


def to_micros(moment: datetime) -> int:
    """An instant as whole microseconds since the Unix epoch, as every backend stores it."""
    if moment.tzinfo is UTC:  # as the core's are: the runs of a burst share their slots
        return _utc_micros(moment)
    return _micros(moment)  # an equal local time on the other side of a fold is another instant


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(value: int) -> datetime:
    """The instant `to_micros` stored, aware UTC (a sum: 2.5 times the speed of
    `fromtimestamp` and `replace`, for the two times of each of a million entries read)."""
    return _EPOCH + timedelta(microseconds=value)


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds


_utc_micros = lru_cache(maxsize=4096)(_micros)


class StorageFailed(BackendError):
    """The storage is gone or damaged for good: retrying cannot help and leading on must not
    go on. The daemon steps down and exits with `exit_status` (docs/deployment.md)."""

    exit_status = 1


class StorageReplaced(StorageFailed):
    """The file at the backend's path is no longer the one this process opened (deleted or
    replaced): others may be leading in the new one. systemd restarts the daemon on it."""


class FormatTooNew(StorageFailed):
    """The storage holds beatd's persisted state in a newer format than this beatd knows: a
    newer beatd upgraded it. This one must neither lead nor write there: exit status 2."""

    exit_status = 2

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{where} holds beatd's persisted state in format {found}, but this beatd knows "
            f"formats up to {known} only: a newer beatd upgraded it, and an older one must "
            "neither lead nor write there. Upgrade beatd on this host to the version the others "
            "run (docs/design.md, Persisted-state format)"
        )
        self.found = found
        self.known = known


class StorageCorrupt(StorageFailed):
    """The storage holds damaged data (a malformed SQLite page). Restarting would only fail
    again, so the status is one the units do not restart on (RestartPreventExitStatus=)."""

    exit_status = 3


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of leadership: publishing is refused unless the token and epoch still hold."""

    node: str
    token: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    node: str
    epoch: int
    expires_in: float  # seconds of lease left, as the backend sees it
    config_hash: str


class StateWrite(NamedTuple):  # made per entry and run published, so cheap tuples
    """Advance one entry's state, but only if its persisted horizon is still `expected`; with
    it, record the slots the decision missed (one history record per reason)."""

    state: EntryState
    expected: datetime | None  # None: the entry has no persisted state yet
    missed: tuple[MissedSlots, ...] = ()
    # operator controls (beatd.controls): the overlap rule, whether the decision took the entry
    # for busy, and the run it holds back (buffer_one); see `StateStore.commit`
    guard: Guard | None = None
    busy: bool = False
    hold: HeldRun | None = None


@dataclass(frozen=True, slots=True)
class BeatdQueue:
    """beatd's own queue `queue`: a run message (beatd.message) for beatd's worker, handed out
    highest `priority` first (7-9 high, 4-6 or unset normal, 0-3 low)."""

    queue: str
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class CeleryQueue:
    """Celery's queue `queue`: a kombu envelope (beatd.celery_protocol) laid out as kombu's
    transport stores it, for Celery's workers; `priority` picks kombu's priority list."""

    queue: str
    priority: int | None = None


# Every kind of destination a backend writes; a new one is added here and accepted by the
# backends that can write it (docs/design.md, "Adding a backend or a destination"). RabbitMQ is
# none: its runs go to an outbox `BeatdQueue` that the leader's relay publishes.
Destination = BeatdQueue | CeleryQueue
# What an entry's `protocol` (beatd.config) names.
DESTINATION_OF_PROTOCOL: dict[str, type[Destination]] = {"beatd": BeatdQueue, "celery": CeleryQueue}
# What a destination needs of the broker, and how to get it, for the error that refuses it.
NEEDS: dict[type[Destination], tuple[str, str]] = {
    CeleryQueue: (
        "a Redis broker (Redis transport only)",
        "Point --broker at the Redis your Celery workers use (redis://HOST:PORT/DB)",
    ),
}


def destination_kind(protocol: str | None, amqp: bool = False) -> type[Destination]:
    """Where an entry of the configuration's `protocol` publishes to (None: beatd's own); with
    `amqp` (an AMQP destination), to the outbox, a `BeatdQueue` the leader's relay empties
    (beatd.celery_amqp)."""
    return BeatdQueue if amqp else DESTINATION_OF_PROTOCOL[protocol or "beatd"]


class Outgoing(NamedTuple):
    """One message to enqueue together with its entry's state write: `body` is encoded as its
    `destination` expects (a run message for a `BeatdQueue`, a kombu envelope for a
    `CeleryQueue`)."""

    entry: str
    id: str
    destination: Destination
    body: str
    # a scheduler's run: its published record is written with it (None: a requeue, no record)
    slot: datetime | None = None
    due: datetime | None = None  # the slot plus its jitter
    kind: RunKind = RunKind.SCHEDULED
    audit: str | None = None  # the audit record of a manual or backfill run


def is_celery_run(destination: Destination) -> bool:
    """Whether a run sent to `destination` is a Celery task (its record's `celery`): in a
    Celery queue, or in the AMQP outbox, bound for Celery's workers on RabbitMQ."""
    return isinstance(destination, CeleryQueue) or destination.queue == OUTBOX_QUEUE


def ack_ends_run(queue: str) -> bool:
    """Whether acking a message of `queue` is its run's final outcome: not in the AMQP outbox,
    where the relay's ack says only that RabbitMQ has the run; Celery's task event ends it."""
    return queue != OUTBOX_QUEUE


def utf8_fault(value: bytes, name: str) -> str:
    """Why a stored message's field `name` is not UTF-8 text ('' when it is): such a message
    is handed out all the same, for the worker to dead-letter (see `Delivery.unreadable`)."""
    try:
        value.decode()
    except UnicodeDecodeError as exc:
        return (
            f"the queue entry's {name} is not UTF-8 text "
            f"(byte 0x{value[exc.start]:02x} at offset {exc.start})"
        )
    return ""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to one worker; `receipt` proves the claim when acknowledging."""

    id: str
    queue: str
    body: str
    deliveries: int  # how many times it has been handed out, this time included
    receipt: str
    unreadable: str = ""  # why the stored message cannot be read: dead-letter it unrun


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str
    body: str
    reason: str
    failed_at: datetime
    deliveries: int


def unseen(letters: Sequence[DeadLetter], held: set[str]) -> list[DeadLetter]:
    """The dead letters whose run id is neither in `held` nor earlier in `letters`."""
    seen = set(held)
    new = []
    for letter in letters:
        if letter.id not in seen:
            seen.add(letter.id)
            new.append(letter)
    return new


class StoreIdentity(NamedTuple):
    """Which server process holds the data, and whether beatd's data is still in it."""

    run_id: str  # changes whenever the server restarts
    marker: str  # the name of beatd's format marker, for messages
    marked: bool  # beatd's format marker is there (written with every fresh take of the lease)
    epoch: int  # the stored fencing epoch; 0 when there is none


@runtime_checkable
class ForgetsOnRestart(Protocol):
    """A backend whose server can restart without its data (Redis without AOF; not SQLite)."""

    def identity(self) -> StoreIdentity:
        """The server's run id and what of beatd's data it holds; TransientBackendError when
        it cannot be reached."""


@runtime_checkable
class WaitsForWork(Protocol):
    """A backend an idle worker can block on instead of polling it (Redis; not SQLite)."""

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until a message may be ready on `queues` (True: claim now) or up to `timeout`
        seconds (False); raises TransientBackendError when the backend cannot be reached. A
        server that stops answering while the caller waits is noticed within about `timeout`
        plus the operation timeout: True, and the next `claim` raises NotApplied at once with
        what the wait met, so the caller reports the outage without a second wait. Call it from
        one thread only; it may return True spuriously, and never sleeps past a run added or
        become ready since its last return (one ready then was announced by that return: the
        caller claims until the queue is empty or its slots are full, and a wait that found
        the same ready runs again would spin while the slots are full)."""


@runtime_checkable
class HearsCeleryEvents(Protocol):
    """A source of the task events Celery's workers send with `-E`: a Redis backend (it is their
    broker; see beatd.celery_events), or RabbitMQ's `celeryev` exchange
    (beatd.backends.amqp_events). Pub/sub: what is sent while nobody listens is lost.
    """

    url: str  # for logs: never includes a password

    def celery_events(self, timeout: float) -> Sequence[Payload]:
        """The messages published on Celery's event channels since the last call, in order,
        waiting up to `timeout` seconds for the first (an empty list then). The first call, and
        the first after an error or `stop_celery_events`, subscribes on a connection of its own.
        Raises TransientBackendError when the source cannot be reached or stops answering (the
        subscription is dropped: the next call subscribes again), BackendError when it refuses
        the subscription (ACL, permissions). Call it from one thread only."""

    def stop_celery_events(self) -> None:
        """Unsubscribe and close that connection; idempotent. From the calling thread only."""


class Reachable(Protocol):
    """What every role offers: where it is, whether it answers, how it is set up."""

    url: str  # for logs: never includes a password

    def close(self) -> None:
        """Let go of connections and files; idempotent."""

    def ping(self) -> None:
        """Return when the backend answers; NotApplied or OutcomeUnknown when it cannot be
        reached."""

    def persistence_warnings(self) -> list[str]:
        """Settings of the backend under which beatd's guarantees cannot hold, explained."""


class LeaseStore(Reachable, Protocol):
    """The leader lease: one holder at a time, proven by a token, fenced by a rising epoch.

    Every method is one atomic step on the backend, checked against the backend's own clock.
    """

    def server_time(self) -> float:
        """The backend's clock as Unix time, which every node's clock is checked against."""

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        """Take the lease if nobody holds it or it expired: a fresh token, and the epoch
        max(last epoch, min_epoch) + 1, so an epoch never goes backwards even when the backend
        lost its data. If `held` is the lease still held (same token and epoch), renew it and
        record `config_hash`, returning `held` unchanged. Held by any other token, even one
        taken under the same node name, returns None.

        Not idempotent on a fresh take: after OutcomeUnknown the lease may be taken under a
        token the caller never saw, and is free again only when its TTL runs out."""

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease by `ttl` only if `lease` still holds it; False when lost.
        Idempotent: renewing twice only moves the expiry again."""

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up at once (clean shutdown) if still held; a no-op otherwise, so
        idempotent."""

    def leader(self) -> LeaderInfo | None:
        """Who holds the lease now, if anyone (a read)."""


class StateStore(Reachable, Protocol):
    """Every entry's persisted state, advanced only by the lease holder, by compare-and-set on
    the horizon, atomically with the messages of the runs it publishes."""

    def accepts(self, kind: type[Destination]) -> bool:
        """Whether `commit` can write messages to destinations of `kind`."""

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        """Every entry's persisted state (a read). A backend that reads them in pages calls
        `pace` between the pages (a leader renews its lease there)."""

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        """The persisted states of the entries `names` (those with none left out), reading only
        those, whatever the number of other entries (a read): what `beatd status` and a
        standby's metrics show of a few entries among many."""

    def state_page(self, cursor: str, limit: int) -> tuple[dict[str, EntryState], str]:
        """About `limit` of the persisted states from `cursor` ("": the first page), and the
        cursor of the next page ("": none left), each page one short read: a pass over every
        state in steps (a leader adopting in stages looks for the states of entries no longer
        configured). A state present throughout the pass is in it (maybe twice)."""

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        """Apply state writes and enqueue their messages, atomically with the lease check: all
        of it or nothing.

        Raises LeaseLost (nothing written) when `lease` no longer holds, BackendError for a
        message whose destination the backend does not accept (nothing written). A write whose
        entry's persisted horizon differs from `expected` is skipped with its messages; the
        names of such entries are returned so the caller can resync them. So repeating a commit
        whose outcome was unknown publishes nothing twice: its writes find the horizon moved.

        Run history (unless the backend was opened with `history=False`): in the same atomic
        step, each message with a `slot` gets its published `RunRecord` (no attempts; published
        at the backend's clock, read once for the whole commit, so the runs of one commit share
        it; node and epoch from `lease`, `celery` for a `CeleryQueue`), and
        each applied write's `missed` one `MissedRecord` per item; nothing for a skipped write.
        A record whose run id (or missed key) is already stored is left as it is.

        Operator controls (beatd.controls), checked in the same atomic step against the entry's
        persisted `EntryControl`, by the backend's clock; a write that fails a check is skipped
        with its messages and its entry returned, like a horizon mismatch, so the leader
        resyncs (`load_controls`) and decides again:
        - a pause: a message of the entry whose `due` the pause `covers` fails (writes without
          messages pass: they record paused slots as missed);
        - with a `guard` (overlap skip or buffer_one): the entry counts as busy when its busy
          mark is younger than `guard.timeout`; the write fails when that differs from
          `write.busy`. An applied write with messages sets the busy mark to its last run
          (an older, stale mark is replaced); `hold` replaces the held run (None leaves it), and
          a held run it replaces is recorded missed (reason `overlap`, its slot) in that step: the
          leader cannot tell whether a final outcome published the held run meanwhile. But a
          held manual run (kind `manual`, `beatd trigger`) is never replaced: it stays held and
          the slot `hold` wanted is recorded missed (reason `overlap`) instead, in that step
          (one rule, `beatd.controls.replaced_held`).
        Without a guard the busy mark and held run are neither checked nor changed.
        """

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        """`commit`, split in two so the caller can work while the backend does: the returned
        function waits for the outcome (or raises what `commit` raises). A backend may do all
        the work at once and raise here. Wait for one before sending the next."""

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        """Drop the state of entries removed from the configuration, under the lease
        (LeaseLost otherwise). Idempotent."""


class WorkQueue(Reachable, Protocol):
    """beatd's own queues (`BeatdQueue`): runs claimed by workers for a visibility period,
    then acknowledged, retried, dead-lettered or, when the claim lapses, delivered again.

    The settling methods (extend, ack, release, retry, dead_letter, note_ending) act only while
    the delivery's claim still holds, and do nothing once it was lost to another worker: each is
    idempotent, so one repeated after OutcomeUnknown is harmless.

    Run history (unless opened with `history=False`), written only for a run whose published
    record exists (a run id the history does not know is never recorded): `claim` appends an
    `Attempt` (numbered on from the last; consumer, this process's host name and pid, started
    at the backend's clock), first ending a previous attempt still open as `lost`, in the same
    atomic step as the claim. The settling methods end the open attempt in the same atomic step
    as their queue write, with `ending` or, when None, the outcome they stand for (ack:
    succeeded, retry: retried, dead_letter: dead_lettered, release: released), at the backend's
    clock; a final outcome (history.FINAL) updates the entry's `EntrySummary` in that step too.
    A settling step that finds no open attempt (its end was noted) writes no history.
    So the history never disagrees with the queue: an end is recorded if and only if its queue
    write was applied.

    Operator controls, also with history off: a final outcome (ack, dead_letter; and
    `RunHistory.attempt_ended` for Celery runs) clears the entry's busy mark if this run holds
    it (an ack in the AMQP outbox is none: `ack_ends_run`) and, in the same step, publishes
    the entry's held run if there is one (enqueued, its published record written, the busy
    mark set to it) — unless a pause covers now, when the held run is dropped and recorded
    missed with reason `paused`."""

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        """Add messages to their `BeatdQueue`s outside any lease (worker retries, dead-letter
        requeues). Not idempotent: a repeat after OutcomeUnknown may add a message twice."""

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        """Hand out the next ready message (highest priority first, then oldest).

        The claim lasts `visibility` seconds unless extended; when it lapses the message is
        delivered again. Returns None when nothing is ready. A stored message that cannot be
        read (bytes that are not UTF-8, a missing field) is handed out all the same, with
        `unreadable` saying why, never raised as an error: the caller dead-letters it. After
        OutcomeUnknown a message may have been claimed unseen: it is delivered again when its
        claim lapses.
        """

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        """Keep a claim alive (heartbeat); False when it was lost to another worker."""

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        """The run finished: remove the message for good."""

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        """Give the message back unprocessed (drain on shutdown); its delivery is not counted."""

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        """Replace the claimed message by `body`, ready again after `delay` seconds."""

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        """Move the claimed message to the dead-letter queue with a reason."""

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        """Record how the claimed run's attempt ended without settling the message (a task whose
        process died: its claim lapses and it is delivered again). History only; the claim is
        left as it is, so a later claim of the run finds this attempt ended, not lost."""


class QueueAdmin(Reachable, Protocol):
    """What operators and `beatd migrate` do to the queues: look, and move dead letters."""

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first (a read)."""

    def count_dead_letters(self) -> int:
        """How many dead letters there are, without reading them (a read)."""

    def dead_letter_counts(self) -> dict[str, int]:
        """How many dead letters each queue has (queues with none left out), without reading
        the letters: what `beatd status` and the metrics scrape show (a read; Redis keeps a
        count per queue beside the letters, and reads them all only while that count cannot be
        trusted: see RedisQueueAdmin)."""

    def dead_letter_page(self, offset: int, limit: int) -> list[DeadLetter]:
        """At most `limit` dead letters, oldest first, after skipping the `offset` oldest: the
        same letters as `dead_letters()[offset:offset + limit]`, reading only those (a read;
        deep pages may cost the letters skipped on Redis, whose stream has no offset)."""

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters as they are (used when migrating between backends), keyed by run
        id: a letter whose id is already a dead letter here is skipped, so copying twice adds
        nothing (idempotent). How many were added."""

    def requeue_dead(self, message_id: str | None) -> int:
        """Move one dead letter (or all, for None) back to its queue; how many moved. A dead
        letter moves once: repeating finds it gone."""

    def delete_dead(self, message_id: str | None) -> int:
        """Delete one dead letter (or all, for None) for good; how many went. One atomic step
        per call; a letter goes once: repeating (or an id no dead letter has) deletes nothing
        and returns 0, so the caller can say the id is unknown."""

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting or in flight per queue (a read)."""

    def oldest_waiting(self) -> dict[str, datetime]:
        """Per queue that has a message ready for a worker and not handed out, when the oldest
        such message became ready (queued, or its retry delay ended), by the backend's clock
        (a read; queues with none are left out). A message whose claim lapsed counts from the
        lapse where claims are rows (SQLite, PostgreSQL, memory); on Redis it counts as in
        flight until a worker takes it again."""


@runtime_checkable
class QueuedReads(Protocol):
    """Reading the runs still queued as they are: what `beatd migrate` carries from the AMQP
    outbox, and copies as dead letters out of a damaged SQLite file (SQLite, Redis, PostgreSQL;
    not the memory backend)."""

    def queued_as_dead_letters(
        self, reason: str, of_queue: Callable[[str], bool] = lambda queue: True
    ) -> list[DeadLetter]:
        """Every run still queued in the queues `of_queue` takes, claimed or not (a claim whose
        claimant died included) and delayed retries too, as dead letters with `reason`, failed
        now by the backend's clock, ids and bodies as stored (a read)."""


class RunHistory(Reachable, Protocol):
    """The run history (beatd.history): read by `beatd history` and `beatd status`, marked by
    the leader (deadlines) and fed by it from Celery's task events, trimmed by retention, and
    copied by `beatd migrate`. The published records, missed slots and beatd's own attempts are
    written by `StateStore.commit` and the `WorkQueue` steps (see there).

    The writing methods here are each one atomic step and idempotent, and write nothing for a
    run id the history does not hold: they return False then (and when there was nothing to
    change), True when they wrote. A backend opened with `history=False` writes nothing here
    either (False), except `trim` and `import_history`, which an operator asks for."""

    def runs(self, query: HistoryQuery) -> list[RunRecord]:
        """The run records `query` asks for, newest published first (ties: by run id,
        descending), at most `query.limit` (a read)."""

    def run(self, run_id: str) -> RunRecord | None:
        """One run's record, if held (a read)."""

    def missed(
        self, entry: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[MissedRecord]:
        """Missed-slot records (of `entry`, recorded at or after `since`), newest first."""

    def summaries(self, entries: Sequence[str] | None = None) -> dict[str, EntrySummary]:
        """The summary of each entry (of `entries`, or all) that has a finished run (a read)."""

    def history_size(self) -> tuple[int, int]:
        """How many run records and missed-slot records are kept (a read)."""

    def trimmed_up_to(self, entry: str) -> datetime | None:
        """The newest slot of `entry` whose run record (of any kind but manual) `trim` deleted,
        written in the trim's step; None if none was. The history vouches for what was
        published only after it: `beatd backfill` refuses slots at or before it (a read)."""

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        """Mark a run overdue at `at` (its deadline) unless it finished at or before `at` or
        was marked: a run that finished after its deadline (while no leader watched it) is
        marked too."""

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        """Mark the missed-slot record keyed (entry, reason, first) overdue at `at` unless it
        was marked."""

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        """A Celery worker received the run (task-received), unless it was already."""

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        """Start an attempt, as `claim` does (a previous open attempt ends `lost`), from a
        Celery task-started event; a repeat (the same consumer and `at` as the open attempt)
        writes nothing."""

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        """End the open attempt (one is started first at `at` when none is open: a task event
        that came without its task-started), updating the entry's summary for a final
        outcome, as the `WorkQueue` steps do; a repeat (the last attempt already ended at `at`
        with the same outcome) writes nothing."""

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        """Delete at most `limit` records beyond `retention` (per entry the oldest past
        `per_entry`, any older than `max_age` by the backend's clock, the oldest past
        `max_records`; missed records by age and count); how many went. Oldest means published
        (recorded) first, ties by run id (missed key). Call again while it returns `limit`.
        Summaries are kept. The per-entry and total caps never delete an unfinished run (queued,
        running or overdue: its end must still reach its record and its entry's summary); it
        counts towards them, and only `max_age` deletes it (so a run stuck forever expires);
        a Celery run no task event reached (`unknown`: it may never finish) is not protected. A
        backend may pass over at most `PASS_OVER` (beatd.history) unfinished runs past a cap per
        entry and call: the finished runs behind more of them wait for `max_age` too."""

    def export_runs(self, batch: int = 1000) -> Iterator[list[RunRecord]]:
        """Every run record, in batches (for `beatd migrate`)."""

    def export_missed(self) -> list[MissedRecord]:
        """Every missed-slot record (for `beatd migrate`)."""

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        """Store records as they are (`beatd migrate`): a run id or missed key already held is
        skipped, and a summary replaces one unless that one finished later (on a tie the copy
        wins over one the copied runs computed), so copying twice adds nothing. How many run
        and missed records were added."""


class HistoryTrimmed(BackendError):
    """`Controls.backfill` refused, nothing published: a run's slot is at or before `bound`,
    the newest slot of `entry` whose record a trim deleted (`RunHistory.trimmed_up_to`)."""

    def __init__(self, entry: str, bound: datetime) -> None:
        super().__init__(
            f"cannot backfill entry {entry}: the run history's retention trimmed its records up "
            f"to slot {bound.isoformat()}, so slots up to it can no longer be checked"
        )
        self.entry, self.bound = entry, bound


def first_trimmed(runs: Sequence[Outgoing], bound: datetime | None) -> bool:
    """Whether a run of `runs` has a slot at or before `bound` (None: nothing was trimmed)."""
    return bound is not None and any(m.slot is not None and m.slot <= bound for m in runs)


def backfill_needs_history(entry: str, url: str) -> BackendError:
    """The refusal of `Controls.backfill` on a backend opened with the history off."""
    return BackendError(
        f"cannot backfill entry {entry}: {url} was opened with the run history off, and without "
        "published records the slots already published cannot be told apart; open it with the "
        "history on"
    )


class Controls(Reachable, Protocol):
    """Operator controls (beatd.controls, docs/controls.md): pauses, manual triggers, backfills,
    busy marks and held runs, and the audit log. Every write is one atomic step by the backend's
    clock, needs no lease (a command works with no leader), and records its audit record in that
    step. Paused and busy entries are enforced by `StateStore.commit`.
    A run published without a lease (a trigger, a backfill, a held run published by a final
    outcome) is recorded with node "" and epoch 0, as is a held run dropped as missed."""

    def load_controls(self, entries: Sequence[str] | None = None) -> dict[str, EntryControl]:
        """The control of each entry (of `entries`, or all) that has one (a read)."""

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        """Pause `entries` from now (a `timedelta` until: from the backend's now), replacing a
        pause in place; one audit record per entry, with the pause before and after."""

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        """Lift the pause of each of `entries` that has one; an audit record for each lifted."""

    def trigger(self, request: Trigger) -> TriggerResult:
        """Publish one manual run now, in one step: a `request_id` seen within
        IDEMPOTENCY_KEY_TTL returns that request's result unchanged (a retry after
        OutcomeUnknown is never a second run); a used `idempotency_key` returns DUPLICATE with
        its run id; unless `force`, a pause covering now refuses it (REFUSED_PAUSED, the pause
        in `detail`) and a fresh busy mark under the guard refuses it (skip: REFUSED_BUSY, the
        running id in `detail`) or holds it (buffer_one: HELD; a held scheduled slot gives way,
        recorded missed, reason `overlap`, node "" and epoch 0; but a held manual run is kept
        and the trigger refused, REFUSED_HELD with the held run's id in `detail`). A
        published run gets its record (kind manual, its audit id; slot and due now) and, under
        a guard, the busy mark. Only a published or held run writes an audit record and uses up
        its idempotency key; a refused one is remembered by its request id only. The entry need
        not have a persisted state."""

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        """Publish each of `runs` (kind backfill, their scheduled ids) whose run id has no
        published record, in one step, with one audit record (its id on each record); the ids
        published, and a held run among them is no longer held. Running it twice publishes
        nothing more. HistoryTrimmed, nothing published, when a run's slot is at or before
        the entry's `trimmed_up_to`. BackendError with history off: without published records
        nothing can be deduplicated."""

    def record_audit(self, record: AuditRecord) -> None:
        """Store an audit record of an action taken elsewhere (a dead-letter requeue)."""

    def audit(
        self,
        entry: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        *,
        controls_only: bool = False,
    ) -> list[AuditRecord]:
        """Audit records (of `entry`, at or after `since`), newest first (a read).
        `controls_only`: without the runtime entries' changes (actions `entry.*`, an import
        writes them by the 100,000), read at a cost in proportion to the others."""

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        """Delete at most `limit` audit records older than `max_age`, and idempotency keys and
        request ids older than IDEMPOTENCY_KEY_TTL; how many went."""

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        """Store controls, audit records and trigger keys as they are (`beatd migrate`): an
        entry that has a control here, an audit id or a key already held is skipped, so copying
        twice adds nothing. How many were added."""

    def trigger_keys(self) -> list[TriggerKey]:
        """Every remembered idempotency key and request id (for `beatd migrate`)."""


@runtime_checkable
class RuntimeEntries(Reachable, Protocol):
    """Runtime entries (beatd.runtime_entries, issue 18): entries written through the API, the
    CLI or a client rather than in schedule files, with their change feed, which the leader and
    the standbys poll to hold every entry without reading them all again.

    Each write (`put_entry`, `remove_entry`) is one atomic step by the backend's clock that also
    appends its change-feed record and writes its audit record (`entry.add`, `entry.set` or
    `entry.remove`, with the entry before and after as `RuntimeEntry.audit_json`, under `by`),
    so the feed and the audit log never disagree with the entries. A write needs no lease (a
    command works with no leader); the leader alone registers the file entries' names.

    Names are unique across schedule files and runtime entries: the leader registers its file
    entries' names at adoption (`register_file_entries`), and a write checks a name against that
    set in its atomic step, so a name registered between a caller's read and its write is still
    refused.

    Timeouts (OutcomeUnknown), method by method: the reads and `register_file_entries` are safe
    to repeat. `put_entry` may have been applied: repeat it with the same `request_id`, and if it
    was, the entry it stored is returned unchanged (no second version, audit or change record)
    as long as no other write came between (then the repeat's expected version fails, or without
    one it writes again). `remove_entry` may have been applied: a repeat raises UnknownEntry if
    it was (or someone else removed the entry).

    `feed_retention` change records are kept (beatd.runtime_entries.FEED_RETENTION unless set
    on the handle); each write trims the oldest beyond it in its step."""

    feed_retention: int

    def put_entry(
        self,
        entry: ResolvedEntry,
        by: str,
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> RuntimeEntry:
        """Create or replace the runtime entry `entry.name`: when created, at the version of
        its change record's seq (so a name removed and added again never repeats a version),
        one more than the stored one when replaced; created and updated at the backend's
        clock. The entry stored is returned.

        `expected_version`: None writes whatever is stored; 0 creates only; N replaces version
        N only. Otherwise VersionMismatch (expected and actual, 0 for none), nothing written.
        A name in the registered file set is refused, nothing written: NameTaken (naming the
        file) for a create or an unconditional put, FileEntryReadOnly (naming the file to edit)
        for a conditional replace. A `request_id` equal to the stored entry's last write's
        returns that entry as stored, writing nothing (see the timeouts above)."""

    def put_entries(
        self,
        entries: Sequence[ResolvedEntry],
        by: str,
        *,
        create_only: bool = False,
        request_id: str | None = None,
    ) -> list[RuntimeEntry]:
        """`put_entry` of each of `entries` (expected version 0 with `create_only`, else none),
        all in one atomic step, in order (their change records too): every entry is written or,
        at the first refusal (raised as `put_entry` raises it), none. A name given twice is a
        BackendError, nothing written. An entry whose stored last write is `request_id` is
        returned as stored and not written again, so a batch repeated after OutcomeUnknown
        writes nothing twice. The entries stored, in order. (`Client.add_many` and bulk imports:
        one step per batch, not per entry.) A backend may write a big batch in several atomic
        steps (Redis, SQLite: so that no step holds it long) if it checks every entry before the
        first, so that a refusal then writes nothing; a refusal found at a later step (another
        writer took a name in between) is PartlyWritten, naming the entries written; a repeat
        with `request_id` completes a batch cut off between steps."""

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        """Remove the runtime entry `name` (only at `expected_version`, when given); the entry
        as it was. UnknownEntry when there is none, FileEntryReadOnly (naming the file) for a
        file entry's name, VersionMismatch: nothing written."""

    def get_entry(self, name: str) -> RuntimeEntry | None:
        """The runtime entry `name`, if stored (a read)."""

    def get_entries(self, names: Sequence[str]) -> dict[str, RuntimeEntry]:
        """The runtime entries of `names` that are stored, by name, each as `get_entry` reads
        it (a read; a name absent or given twice is no error). One query, script or locked
        step per call, so a reader of many names (the change feed's) pays one round trip, not
        one each; a backend may read a long list in several steps (Redis: `get_step` names a
        script), each consistent, which the feed's readers allow since they read values, not
        differences."""

    def list_entries(self, after: str = "", limit: int = 1000) -> list[RuntimeEntry]:
        """At most `limit` runtime entries whose names sort after `after` (by code point),
        in that order: a page; pass the last name for the next (a read, consistent per page)."""

    def entry_changes(self, cursor: int | None, limit: int = 1000) -> ChangePage:
        """The change records after `cursor` (the `seq` of the last one seen), oldest first, at
        most `limit`, and the cursor to pass next (a read).

        A reader starts with None: it gets `reload` and the head's cursor, loads every entry
        (`list_entries`), then polls from that cursor; a change made while it loaded is seen
        both ways, and the reader applies it by reading the entry's current value (a page's
        entries at once: `get_entries`) so order never matters. `reload` is returned too when
        records after `cursor` were trimmed (the reader fell more than `feed_retention` behind)
        or `cursor` is beyond the head (the storage was replaced or lost its data): load every
        entry again."""

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        """Replace the registered file-entry names (name -> the file that defines it), under
        `lease` (LeaseLost otherwise), in one step that first checks them against the runtime
        entries: the colliding names, sorted, and nothing registered when there are any (the
        leader reports the configuration error naming both sources and keeps the last good
        configuration). Idempotent."""

    def file_entries(self) -> dict[str, str]:
        """The registered file-entry names and their files (a read)."""

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        """Store entries as they are, versions and times included (`beatd migrate`), each with
        its change record (its seq past the entry's version, so no entry created later takes
        it) and no audit record (the audit log is copied apart); a name already stored is
        skipped, so copying twice adds nothing. How many were added."""


@runtime_checkable
class Nodes(Reachable, Protocol):
    """Node records (beatd.nodes, issue 18): each `beatd run` says who it is at every lease
    renewal or standby attempt (every TTL/3 at most), so one cheap write, apart from the
    commits. A write needs no lease; records are kept by the backend's clock, so nodes whose
    clocks differ still agree on which are live."""

    def write_node(self, record: NodeRecord, keep: float) -> None:
        """Store `record` in place of its node's, stamped `last_seen` now by the backend's
        clock and kept for `keep` seconds of that clock (the scheduler: 3 x the lease TTL). One
        atomic step; safe to repeat after OutcomeUnknown (it only moves `last_seen`). Records
        of other nodes that have expired may be deleted in the same step."""

    def nodes(self) -> list[NodeRecord]:
        """The records not expired by the backend's clock, by node name, each with its
        `last_seen` (a read)."""


SESSION_KEY_BYTES = 32


@runtime_checkable
class SessionKeys(Reachable, Protocol):
    """The web console's session key (beatd.console.sessions, issue 19): one random secret per
    namespace that every node signs and checks session cookies with."""

    def session_key(self) -> bytes:
        """The namespace's session key, SESSION_KEY_BYTES random bytes, made on the first call
        in one atomic get-or-create step: callers on every node, first or concurrent, get the
        same key, and it never changes after. Safe to repeat after OutcomeUnknown (a key made
        by a lost reply is the one the repeat returns). Not copied by `beatd migrate`: the
        sessions signed with it end (sign in again)."""

    def session_generation(self, token: str) -> int:
        """How often the token whose digest prefix is `token` signed out of the console: 0
        before the first time (a read). A session cookie carries the generation it was issued
        at and is honoured only while it is still the token's."""

    def end_sessions(self, token: str) -> int:
        """Sign the token `token` out everywhere: one more than its generation, in one atomic
        step; the new generation. Not copied by `beatd migrate` (nor is the key)."""


class Backend(
    LeaseStore,
    StateStore,
    WorkQueue,
    QueueAdmin,
    RunHistory,
    Controls,
    RuntimeEntries,
    Nodes,
    SessionKeys,
    Protocol,
):
    """A backend that offers every role: what `open_backend` returns (SQLite, Redis,
    PostgreSQL, memory)."""
