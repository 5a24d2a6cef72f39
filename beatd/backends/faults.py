"""Faults injected around any backend, so that every backend is tested against the same four.

`FaultyBackend(backend, plan)` wraps a backend (memory, SQLite, Redis alike) and passes every
call through, except the next call of an operation for which `plan` holds a fault:

- `FAIL_BEFORE_WRITE`: raises NotApplied without calling the backend: nothing is written.
- `FAIL_AFTER_WRITE`: calls the backend, then raises OutcomeUnknown: the write WAS applied and
  its reply lost, as after a Redis timeout.
- `LOSE_LEASE`: another node takes the lease just before the call reaches the backend (the
  holder's lease is released and a thief acquires it), so the lease the caller checked is gone
  when the backend checks it again in the step that writes: LeaseLost, nothing written.
- `DELAY_REPLY`: the reply is held until `plan.release()`: `send_commit`'s waiter (or a plain
  call) blocks on it, while the caller may work in the meantime.

The hook lives outside the backends on purpose: the code under test is the backend as shipped,
and one wrapper gives the contract suite (tests/backends/contract.py) the same faults on all of
them. The in-memory backend has no fault switches of its own; wrapped, it is the fast fault
double for tests of the scheduler and the worker together.

`commit` names both `commit` and `send_commit` (the same write, waited for or not); every other
operation is the method's name.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from beatd.backends.base import (
    Backend,
    DeadLetter,
    Delivery,
    Lease,
    Outgoing,
    StateWrite,
)
from beatd.controls import AuditRecord, EntryControl, Trigger, TriggerKey, TriggerResult
from beatd.errors import NotApplied, OutcomeUnknown
from beatd.history import Ending, EntrySummary, MissedRecord, Retention, RunRecord
from beatd.nodes import NodeRecord
from beatd.runtime_entries import ResolvedEntry, RuntimeEntry

T = TypeVar("T")

WRITES = frozenset(
    {
        "acquire_lease",
        "renew_lease",
        "release_lease",
        "commit",
        "forget",
        "enqueue",
        "claim",
        "extend",
        "ack",
        "release",
        "retry",
        "dead_letter",
        "note_ending",
        "add_dead_letters",
        "requeue_dead",
        "delete_dead",
        "mark_overdue",
        "mark_missed_overdue",
        "run_received",
        "attempt_started",
        "attempt_ended",
        "trim",
        "import_history",
        # the operator controls' (the `Controls` role)
        "pause",
        "resume",
        "trigger",
        "backfill",
        "record_audit",
        "trim_audit",
        "import_controls",
        # the runtime entries' (the `RuntimeEntries` role)
        "put_entry",
        "put_entries",
        "remove_entry",
        "register_file_entries",
        "import_entries",
        # the node records' (the `Nodes` role)
        "write_node",
    }
)
LEASED = frozenset(
    {"renew_lease", "commit", "forget", "register_file_entries"}
)  # the operations a lease guards
THIEF = "thief"  # the node that takes a lost lease


class Fault(Enum):
    FAIL_BEFORE_WRITE = "failed before writing"
    FAIL_AFTER_WRITE = "failed after writing"
    LOSE_LEASE = "lost the lease between the check and the write"
    DELAY_REPLY = "delayed the reply"


class FaultPlan:
    """The faults still to inject, each into the next call of its operation (first in, first
    out), and what was injected. Thread-safe: a worker and a scheduler may share one plan."""

    def __init__(self, *, thief_ttl: float = 60.0, hold_timeout: float = 30.0) -> None:
        self.thief_ttl = thief_ttl  # how long the thief holds a stolen lease
        self.hold_timeout = hold_timeout  # a delayed reply never released fails after this
        self.injected: list[tuple[str, Fault]] = []
        self.thief: Lease | None = None  # the lease taken by the last LOSE_LEASE
        self.holding = threading.Event()  # set while a delayed reply is being held
        self._released = threading.Event()
        # per operation, what its next calls meet: a fault, or None to pass through
        self._armed: defaultdict[str, deque[Fault | None]] = defaultdict(deque)
        self._lock = threading.Lock()

    def inject(self, operation: str, fault: Fault, *, after: int = 0, times: int = 1) -> None:
        """Inject `fault` into `times` calls of `operation`, once `after` more calls of it
        passed through (after=2: the third call fails)."""
        if operation not in WRITES:
            raise ValueError(f"no operation {operation!r} to fault: one of {sorted(WRITES)}")
        if fault is Fault.LOSE_LEASE and operation not in LEASED:
            raise ValueError(f"{operation} is not guarded by the lease: {sorted(LEASED)} are")
        with self._lock:
            self._armed[operation].extend([None] * after + [fault] * times)
            if fault is Fault.DELAY_REPLY:
                self._released.clear()

    def take(self, operation: str) -> Fault | None:
        """The fault for this call of `operation`, if one is armed (and count it injected)."""
        with self._lock:
            armed = self._armed.get(operation)
            if not armed:
                return None
            fault = armed.popleft()
            if fault is not None:
                self.injected.append((operation, fault))
            return fault

    def release(self) -> None:
        """Let every held reply through, and those delayed later until the next injection."""
        self._released.set()

    def hold(self, operation: str) -> None:
        """Block a delayed reply until `release`; OutcomeUnknown (a timeout) if it never is."""
        self.holding.set()
        try:
            if not self._released.wait(self.hold_timeout):
                raise OutcomeUnknown(
                    f"injected fault: {operation} {Fault.DELAY_REPLY.value} and nobody released "
                    f"it within {self.hold_timeout:g} s; outcome unknown"
                )
        finally:
            self.holding.clear()


class FaultyBackend:
    """`backend` with the faults of `plan` injected; everything else passes through."""

    def __init__(self, backend: Backend, plan: FaultPlan) -> None:
        self.backend = backend
        self.plan = plan
        self.url = backend.url

    def __getattr__(self, name: str) -> Any:  # reads, and what a backend offers beyond roles
        if name == "backend":  # not set yet (a copy being made): never ask ourselves again
            raise AttributeError(name)
        return getattr(self.backend, name)

    def _call(self, operation: str, write: Callable[[], T], lease: Lease | None = None) -> T:
        fault = self.plan.take(operation)
        if fault is None:
            return write()
        if fault is Fault.FAIL_BEFORE_WRITE:
            raise NotApplied(f"injected fault: {operation} {fault.value}; nothing was written")
        if fault is Fault.LOSE_LEASE:
            assert lease is not None  # inject() allows it only for the leased operations
            self._steal(lease)
            return write()
        if fault is Fault.DELAY_REPLY:
            result = write()
            self.plan.hold(operation)
            return result
        write()
        raise OutcomeUnknown(
            f"injected fault: {operation} {fault.value}; it was applied, but the caller "
            "cannot know: outcome unknown"
        )

    def _steal(self, lease: Lease) -> None:
        self.backend.release_lease(lease)
        self.plan.thief = self.backend.acquire_lease(THIEF, self.plan.thief_ttl)

    # --- the run state's writes ------------------------------------------------------------

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        return self._call("commit", lambda: self.backend.commit(lease, writes, messages), lease)

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        """The fault shows where the backend would show it: a failed send at once, a lost or
        delayed reply in the waiter."""
        fault = self.plan.take("commit")
        if fault is Fault.FAIL_BEFORE_WRITE:
            raise NotApplied(f"injected fault: commit {fault.value}; nothing was written")
        if fault is Fault.LOSE_LEASE:
            self._steal(lease)
        waiter = self.backend.send_commit(lease, writes, messages)
        if fault is Fault.FAIL_AFTER_WRITE:
            return lambda: self._reply_lost(waiter)
        if fault is Fault.DELAY_REPLY:
            return lambda: self._held(waiter)
        return waiter

    def _reply_lost(self, waiter: Callable[[], set[str]]) -> set[str]:
        waiter()
        raise OutcomeUnknown(
            f"injected fault: commit {Fault.FAIL_AFTER_WRITE.value}; it was applied, but the "
            "caller cannot know: outcome unknown"
        )

    def _held(self, waiter: Callable[[], set[str]]) -> set[str]:
        self.plan.hold("commit")
        return waiter()

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        self._call("forget", lambda: self.backend.forget(lease, entries), lease)

    # --- the lease ---------------------------------------------------------------------------

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        return self._call(
            "acquire_lease",
            lambda: self.backend.acquire_lease(
                node, ttl, config_hash, held=held, min_epoch=min_epoch
            ),
        )

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        return self._call("renew_lease", lambda: self.backend.renew_lease(lease, ttl), lease)

    def release_lease(self, lease: Lease) -> None:
        self._call("release_lease", lambda: self.backend.release_lease(lease))

    # --- the queues ----------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        self._call("enqueue", lambda: self.backend.enqueue(messages, delay))

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        return self._call("claim", lambda: self.backend.claim(queues, consumer, visibility))

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        return self._call("extend", lambda: self.backend.extend(delivery, visibility))

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._call("ack", lambda: self.backend.ack(delivery, ending))

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        self._call("release", lambda: self.backend.release(delivery, ending))

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        self._call("retry", lambda: self.backend.retry(delivery, body, delay, ending))

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        self._call("dead_letter", lambda: self.backend.dead_letter(delivery, reason, ending))

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        self._call("note_ending", lambda: self.backend.note_ending(delivery, ending))

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        return self._call("add_dead_letters", lambda: self.backend.add_dead_letters(letters))

    def requeue_dead(self, message_id: str | None) -> int:
        return self._call("requeue_dead", lambda: self.backend.requeue_dead(message_id))

    def delete_dead(self, message_id: str | None) -> int:
        return self._call("delete_dead", lambda: self.backend.delete_dead(message_id))

    # --- the run history's writes -------------------------------------------------------------

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        return self._call("mark_overdue", lambda: self.backend.mark_overdue(run_id, at))

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        return self._call(
            "mark_missed_overdue",
            lambda: self.backend.mark_missed_overdue(entry, reason, first, at),
        )

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        return self._call("run_received", lambda: self.backend.run_received(run_id, consumer, at))

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        return self._call(
            "attempt_started",
            lambda: self.backend.attempt_started(run_id, consumer, host, pid, at),
        )

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        return self._call("attempt_ended", lambda: self.backend.attempt_ended(run_id, ending, at))

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        return self._call("trim", lambda: self.backend.trim(retention, limit))

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        return self._call(
            "import_history", lambda: self.backend.import_history(runs, missed, summaries)
        )

    # --- the operator controls' writes --------------------------------------------------------

    def pause(
        self, entries: Sequence[str], reason: str, until: datetime | timedelta | None, by: str
    ) -> list[AuditRecord]:
        return self._call("pause", lambda: self.backend.pause(entries, reason, until, by))

    def resume(self, entries: Sequence[str], by: str) -> list[AuditRecord]:
        return self._call("resume", lambda: self.backend.resume(entries, by))

    def trigger(self, request: Trigger) -> TriggerResult:
        return self._call("trigger", lambda: self.backend.trigger(request))

    def backfill(
        self, entry: str, runs: Sequence[Outgoing], by: str, detail: Mapping[str, Any]
    ) -> tuple[list[str], AuditRecord]:
        return self._call("backfill", lambda: self.backend.backfill(entry, runs, by, detail))

    def record_audit(self, record: AuditRecord) -> None:
        self._call("record_audit", lambda: self.backend.record_audit(record))

    def trim_audit(self, max_age: timedelta, limit: int = 10_000) -> int:
        return self._call("trim_audit", lambda: self.backend.trim_audit(max_age, limit))

    def import_controls(
        self,
        controls: Mapping[str, EntryControl],
        audit: Sequence[AuditRecord] = (),
        keys: Sequence[TriggerKey] = (),
    ) -> int:
        return self._call(
            "import_controls", lambda: self.backend.import_controls(controls, audit, keys)
        )

    # --- runtime entries ------------------------------------------------------------------

    def put_entry(
        self,
        entry: ResolvedEntry,
        by: str,
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> RuntimeEntry:
        return self._call(
            "put_entry",
            lambda: self.backend.put_entry(
                entry, by, expected_version=expected_version, request_id=request_id
            ),
        )

    def put_entries(
        self,
        entries: Sequence[ResolvedEntry],
        by: str,
        *,
        create_only: bool = False,
        request_id: str | None = None,
    ) -> list[RuntimeEntry]:
        return self._call(
            "put_entries",
            lambda: self.backend.put_entries(
                entries, by, create_only=create_only, request_id=request_id
            ),
        )

    def remove_entry(
        self, name: str, by: str, *, expected_version: int | None = None
    ) -> RuntimeEntry:
        return self._call(
            "remove_entry",
            lambda: self.backend.remove_entry(name, by, expected_version=expected_version),
        )

    def register_file_entries(self, lease: Lease, files: Mapping[str, str]) -> list[str]:
        return self._call(
            "register_file_entries",
            lambda: self.backend.register_file_entries(lease, files),
            lease,
        )

    def import_entries(self, entries: Sequence[RuntimeEntry]) -> int:
        return self._call("import_entries", lambda: self.backend.import_entries(entries))

    # --- the node records' write -------------------------------------------------------------

    def write_node(self, record: NodeRecord, keep: float) -> None:
        self._call("write_node", lambda: self.backend.write_node(record, keep))
