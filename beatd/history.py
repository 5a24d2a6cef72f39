"""The run history's records: what was published, each attempt at running it and how it ended,
and the slots that were missed. Plain values, written and read by the backends (`RunHistory`
in beatd.backends.base) and shown by `beatd history` and `beatd status` (docs/history.md).

A record is keyed by its run id. Times are aware UTC, taken from the backend's clock by the step
that writes them, so a start and an end are measured on the same clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from beatd.outcomes import Outcome

ERROR_LIMIT = 1024  # characters of an exception's message kept in an attempt (docs/history.md)
ERROR_TYPE_LIMIT = 200  # characters of an exception's type name kept
# Unfinished runs past a retention cap (per entry, or in all) that one trim call passes over
# before it gives up on that cap (RunHistory.trim): bounded work per call.
PASS_OVER = 1000


class RunKind(StrEnum):
    """Why a run was published."""

    SCHEDULED = "scheduled"  # its slot came while a leader ran
    CAUGHT_UP = "caught_up"  # published late, by the `missed:` policy, after downtime
    MANUAL = "manual"  # `beatd trigger` (the controls issue)
    BACKFILL = "backfill"  # `beatd backfill` (the controls issue)


LOST = "lost"  # an attempt whose claim lapsed with nothing written (the worker was killed)
TIME_LIMIT = "time_limit"  # the `reason` of an attempt its time limit ended
ATTEMPT_OUTCOMES = (*(o.value for o in Outcome), LOST)
# An attempt that ends with one of these ends its run; the others are followed by another.
FINAL = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.EXPIRED, Outcome.DEAD_LETTERED})
# Final outcomes that count towards `alert_after_failures` (retried and expired do not).
FAILED_FINALLY = frozenset({Outcome.FAILED, Outcome.DEAD_LETTERED})


class RunStatus(StrEnum):
    """A run's status: its last attempt's outcome when that ended the run, else one of these."""

    QUEUED = "queued"  # published, not started (for Celery: received by a worker)
    RUNNING = "running"  # an attempt started and has not ended
    OVERDUE = "overdue"  # its deadline passed before it finished
    UNKNOWN = "unknown"  # a Celery run whose task events never arrived


def cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Ending(NamedTuple):
    """How an attempt ended, as the worker says it, written with its ack, retry or dead letter.

    Never the task's arguments: the error is the exception's type and its message cut to
    `ERROR_LIMIT` characters (`Ending.failure` cuts them)."""

    outcome: Outcome
    reason: str = ""  # e.g. TIME_LIMIT
    error_type: str = ""
    error: str = ""

    @classmethod
    def failure(cls, outcome: Outcome, error_type: str, error: str, reason: str = "") -> Ending:
        return cls(outcome, reason, cut(error_type, ERROR_TYPE_LIMIT), cut(error, ERROR_LIMIT))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One hand-out of a run to a worker: numbered 1, 2, ... in the order they started."""

    number: int
    consumer: str  # the worker's consumer name (Celery: the worker's hostname, celery@host)
    host: str
    pid: int | None
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None  # an `Outcome` value or LOST; None while it runs
    reason: str = ""
    error_type: str = ""
    error: str = ""

    @property
    def duration(self) -> timedelta | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One published run and its attempts, oldest first."""

    id: str
    entry: str
    slot: datetime  # the scheduled slot
    due: datetime  # the slot plus its jitter
    published_at: datetime  # the backend's clock at the commit
    node: str  # the leader that published it, and its lease epoch
    epoch: int
    kind: RunKind
    celery: bool = False  # published in Celery's protocol: attempts come from task events
    attempts: tuple[Attempt, ...] = ()
    received_at: datetime | None = None  # Celery's task-received, if it arrived
    overdue_at: datetime | None = None  # when its deadline passed unfinished, if it did
    audit: str | None = None  # the audit record of a manual or backfill run (beatd.controls)

    @property
    def status(self) -> str:
        """The last attempt's outcome if it ended the run; else overdue, running, queued or
        unknown, in that order of precedence."""
        last = self.attempts[-1] if self.attempts else None
        if last is not None and last.outcome in FINAL:
            return last.outcome
        if self.overdue_at is not None:
            return RunStatus.OVERDUE
        if last is not None and last.outcome is None:
            return RunStatus.RUNNING
        if last is not None and last.outcome is not None:  # retried, crashed, released, lost:
            return last.outcome  # waiting for the next attempt
        if self.celery and self.received_at is None:
            return RunStatus.UNKNOWN
        return RunStatus.QUEUED

    @property
    def finished(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].outcome in FINAL

    @property
    def finished_at(self) -> datetime | None:
        """When its final attempt ended; None while it is unfinished."""
        return self.attempts[-1].ended_at if self.finished else None


class MissedSlots(NamedTuple):
    """Slots of one entry missed for one reason in one decision: one record, never one per
    slot. `reason` is a `MissReason` value of the core (skipped, beyond_catch_up, disabled,
    state_lost; paused and overlap with the controls issue)."""

    entry: str
    reason: str
    first: datetime
    last: datetime
    total: int  # how many slots


@dataclass(frozen=True, slots=True)
class MissedRecord:
    """A stored `MissedSlots`, with when it was written (the backend's clock at the commit) and
    by which leader; keyed by (entry, reason, first)."""

    slots: MissedSlots
    recorded_at: datetime
    node: str
    epoch: int
    overdue_at: datetime | None = None  # when the first slot's deadline passed, if marked


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """The newest of an entry's runs that ended, kept up to date in the same atomic step as
    each final attempt end: what `beatd status` and the per-entry metrics read."""

    entry: str
    last_status: str  # the final outcome of its newest finished run
    last_finished_at: datetime
    last_duration: timedelta | None  # of that run's last attempt
    last_success_at: datetime | None
    last_failure_at: datetime | None  # newest run that ended failed or dead_lettered
    consecutive_failures: int  # runs that ended failed or dead_lettered since the last success


class Retention(NamedTuple):
    """How much history is kept (docs/history.md): per entry the newest `per_entry` runs, none
    older than `max_age`, and at most `max_records` run records in all (the oldest go first).
    Missed-slot records follow `max_age` and `max_records` too."""

    per_entry: int = 1000
    max_age: timedelta = timedelta(days=30)
    max_records: int = 200_000  # about 120 MB on Redis (docs/history.md)


class HistoryQuery(NamedTuple):
    """Which run records to read, newest published first."""

    entry: str | None = None
    since: datetime | None = None  # published at or after
    limit: int = 100
    unfinished: bool = False  # only runs not finished and not yet marked overdue
