"""The one interface every backend implements: leader lease, run state, queues.

The scheduler core never sees a backend; the loop in `beatd.scheduler` and the worker do. Every
backend passes the same contract tests (`tests/backends/contract.py`).

Errors: `TransientBackendError` means "unreachable or busy, nothing was written, try again";
`LeaseLost` means "you are not the leader, nothing was written"; `BackendError` is permanent;
`StorageFailed` means the storage itself is gone or damaged: the daemon stops (`exit_status`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple, Protocol, runtime_checkable

from beatd.core import EntryState
from beatd.errors import BackendError


def to_micros(moment: datetime) -> int:
    """An instant as whole microseconds since the Unix epoch, as every backend stores it."""
    if moment.tzinfo is UTC:  # as the core's are: the runs of a burst share their slots
        return _utc_micros(moment)
    return _micros(moment)  # an equal local time on the other side of a fold is another instant


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


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
    """Advance one entry's state, but only if its persisted horizon is still `expected`."""

    state: EntryState
    expected: datetime | None  # None: the entry has no persisted state yet


class Outgoing(NamedTuple):
    """One message to enqueue together with its entry's state write.

    `protocol` says how `body` is encoded and where it goes: `beatd` (a run message for beatd's
    worker) or `celery` (a kombu envelope for Celery's workers; Redis only, `commit` only).
    """

    entry: str
    id: str
    queue: str
    priority: int | None
    body: str
    protocol: str = "beatd"


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
        seconds (False); raises TransientBackendError when the backend cannot be reached. Call
        it from one thread only; it may return True spuriously, never sleep past a ready run."""


class Backend(Protocol):
    url: str  # for logs: never includes a password

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise TransientBackendError when the backend cannot be reached."""

    def server_time(self) -> float:
        """The backend's clock as Unix time, which every node's clock is checked against."""

    def persistence_warnings(self) -> list[str]:
        """Settings of the backend under which beatd's guarantees cannot hold, explained."""

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
        """Take the lease if nobody holds it or it expired: a fresh token, and the epoch
        max(last epoch, min_epoch) + 1, so an epoch never goes backwards even when the backend
        lost its data. If `held` is the lease still held (same token and epoch), renew it and
        record `config_hash`, returning `held` unchanged. Held by any other token, even one
        taken under the same node name, returns None."""

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease by `ttl` only if `lease` still holds it; False when lost."""

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up at once (clean shutdown) if still held; a no-op otherwise."""

    def leader(self) -> LeaderInfo | None:
        """Who holds the lease now, if anyone."""

    # --- run state ------------------------------------------------------------------------

    def load_states(self) -> dict[str, EntryState]:
        """Every entry's persisted state."""

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        """Apply state writes and enqueue their messages, atomically with the lease check.

        Raises LeaseLost (nothing written) when `lease` no longer holds. A write whose entry's
        persisted horizon differs from `expected` is skipped with its messages; the names of
        such entries are returned so the caller can resync them.
        """

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        """`commit`, split in two so the caller can work while the backend does: the returned
        function waits for the outcome (or raises what `commit` raises). A backend may do all
        the work at once and raise here. Wait for one before sending the next."""

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        """Drop the state of entries removed from the configuration."""

    # --- queues ---------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        """Add messages outside any lease (worker retries, dead-letter requeues)."""

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        """Hand out the next ready message (highest priority first, then oldest).

        The claim lasts `visibility` seconds unless extended; when it lapses the message is
        delivered again. Returns None when nothing is ready. A stored message that cannot be
        read (bytes that are not UTF-8, a missing field) is handed out all the same, with
        `unreadable` saying why, never raised as an error: the caller dead-letters it.
        """

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        """Keep a claim alive (heartbeat); False when it was lost to another worker."""

    def ack(self, delivery: Delivery) -> None:
        """The run finished: remove the message for good."""

    def release(self, delivery: Delivery) -> None:
        """Give the message back unprocessed (drain on shutdown); its delivery is not counted."""

    def retry(self, delivery: Delivery, body: str, delay: float) -> None:
        """Replace the claimed message by `body`, ready again after `delay` seconds."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the claimed message to the dead-letter queue with a reason."""

    def dead_letters(self) -> list[DeadLetter]: ...

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters as they are (used when migrating between backends), keyed by run
        id: a letter whose id is already a dead letter here is skipped, so copying twice adds
        nothing. How many were added."""

    def requeue_dead(self, message_id: str | None) -> int:
        """Move one dead letter (or all, for None) back to its queue; how many moved."""

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting or in flight per queue."""
