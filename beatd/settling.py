"""Settling a claimed run: write its outcome to the backend, then report it, exactly once.

The worker decides when a run is over; the `Settler` writes what that means (ack, retry,
dead letter, release) and only then counts and logs the outcome, as one `task=... outcome=...`
line. A write the backend refuses is kept as `Unsettled` and written again with backoff; its
claim stays alive through the worker's heartbeats meanwhile, and its outcome is reported when
the write finally lands (or logged as never written when the worker stops first).

Each write carries the attempt's `Ending` for the run history, which the backend records in the
same atomic step: the outcome in the worker's words, a failure's exception type and message
(split from the reply's "Type: message", cut by `Ending.failure`), `reason=time_limit` for a
time-limit kill, and the reason of a dead letter or a release. A crashed child settles nothing
(its claim lapses), so its ending is only noted (`WorkQueue.note_ending`), once: a refused note
is logged, not written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from beatd.backends.base import Delivery, WorkQueue
from beatd.backoff import Backoff
from beatd.clock import Clock
from beatd.errors import BackendError
from beatd.history import ERROR_LIMIT, TIME_LIMIT, Ending, cut
from beatd.message import RunMessage
from beatd.outcomes import Outcome, WorkerStats
from beatd.pool import Reply
from beatd.tasks import Task

# the outcome lines are the worker's: operators and log filters know them by this name
log = logging.getLogger("beatd.worker")

FIRST_RETRY = 1.0  # seconds before an outcome the backend refused is written again


LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.EXPIRED: logging.INFO,
    Outcome.RELEASED: logging.INFO,
    Outcome.RETRIED: logging.WARNING,
}


class StartedRun(Protocol):
    """A run handed to a slot, as its settling sees it (the worker's job)."""

    delivery: Delivery
    message: RunMessage
    task: Task[..., Any]
    started: float  # monotonic
    timed_out: bool  # the worker enforced its time limit
    lost: bool  # a heartbeat found its claim taken by another worker


@dataclass(frozen=True, slots=True)
class Report:
    """One outcome's count and log line, made once its write is done."""

    delivery: Delivery
    message: RunMessage | None
    outcome: Outcome
    fields: dict[str, object]
    trace: str = ""
    duration: float | None = None  # seconds the task ran; None when it never ran

    def emit(self, stats: WorkerStats, now: datetime) -> None:
        message = self.message
        task = message.task if message else "?"
        attempt = message.attempt if message else "?"
        entry = message.entry if message else None
        run = message.id if message else self.delivery.id  # the id the task sees, if any
        stats.record(task, entry, self.outcome, now, self.duration)
        head = f"task={task} id={run} attempt={attempt} outcome={self.outcome}"
        line = " ".join([head, *(f"{k}={v}" for k, v in self.fields.items())])
        # the same context as fields of their own, for --log-format json
        extra: dict[str, object] = {"task": task, "id": run, "entry": entry}
        extra |= {"attempt": attempt, "outcome": str(self.outcome), **self.fields}
        if self.duration is not None:
            extra["duration"] = self.duration  # seconds, as a number
        log.log(
            LEVELS.get(self.outcome, logging.ERROR),
            "%s%s",
            line,
            f"\n{self.trace.rstrip()}" if self.trace else "",
            extra=extra,
        )


@dataclass(eq=False)
class Unsettled:
    """A run whose ack, retry or dead-letter write failed; written again with backoff."""

    delivery: Delivery
    write: Callable[[], None]
    report: Report
    retry_at: float  # monotonic
    backoff: Backoff


def over_time(run: StartedRun) -> str:
    return f"TimeLimitExceeded: ran over its time limit of {run.task.time_limit or 0:g}s"


def failure(outcome: Outcome, error: str, reason: str = "") -> Ending:
    """The ending of a failed attempt, from the worker's "Type: message" error text (just a
    message when it names no type)."""
    error_type, sep, message = error.partition(": ")
    if not sep or " " in error_type:
        error_type, message = "", error
    return Ending.failure(outcome, error_type, message, reason)


def said(outcome: Outcome, reason: str) -> Ending:
    """The ending of an attempt that ended for a reason given in words (a dead letter, a
    release, a crash)."""
    return Ending(outcome, cut(reason, ERROR_LIMIT))


class Settler:
    """Writes each run's outcome to the backend and reports it once the write is done."""

    def __init__(
        self, backend: WorkQueue, clock: Clock, stats: WorkerStats, max_backoff: float
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.stats = stats
        self.max_backoff = max_backoff
        self.unsettled: list[Unsettled] = []

    # --- runs that never started --------------------------------------------------------

    def expired(self, delivery: Delivery, message: RunMessage) -> None:
        report = Report(delivery, message, Outcome.EXPIRED, {"deliveries": delivery.deliveries})
        ending = Ending(Outcome.EXPIRED)
        self._settle(lambda: self.backend.ack(delivery, ending), report)

    def rejected(self, delivery: Delivery, message: RunMessage | None, reason: str) -> None:
        fields = {"deliveries": delivery.deliveries, "reason": reason}
        report = Report(delivery, message, Outcome.DEAD_LETTERED, fields)
        ending = said(Outcome.DEAD_LETTERED, reason)
        self._settle(lambda: self.backend.dead_letter(delivery, reason, ending), report)

    # --- runs that started ------------------------------------------------------------------

    def replied(self, run: StartedRun, reply: Reply) -> None:
        """Settle a run by its slot's reply."""
        if reply.status == "ok":
            report = self._report(run, Outcome.SUCCEEDED)
            ending = Ending(Outcome.SUCCEEDED)
            self._settle(lambda: self.backend.ack(run.delivery, ending), report)
        elif reply.status == "retry":
            self.failed(run, f"Retry: {reply.detail}", countdown=reply.countdown)
        elif run.timed_out and reply.detail.startswith("TimeLimitExceeded"):
            self.failed(run, over_time(run), trace=reply.traceback, reason=TIME_LIMIT)
        else:
            self.failed(run, reply.detail, trace=reply.traceback)

    def failed(
        self,
        run: StartedRun,
        error: str,
        countdown: float | None = None,
        trace: str = "",
        reason: str = "",
    ) -> None:
        """Retry the run while it has retries left, else dead-letter it. `error` is
        "Type: message"; `reason` goes to the history (TIME_LIMIT for a time-limit kill)."""
        attempt, task, delivery = run.message.attempt, run.task, run.delivery
        if attempt > task.max_retries:
            why = f"failed after {attempt} attempt(s): {error}"
            report = self._report(run, Outcome.FAILED, trace, reason=why)
            ending = failure(Outcome.FAILED, error, reason)
            self._settle(lambda: self.backend.dead_letter(delivery, why, ending), report)
            return
        delay = countdown if countdown is not None else task.retry_delay(attempt)
        body = run.message.next_attempt().to_json()
        report = self._report(run, Outcome.RETRIED, trace, retry_in=f"{delay:g}s", error=error)
        ending = failure(Outcome.RETRIED, error, reason)
        self._settle(lambda: self.backend.retry(delivery, body, delay, ending), report)

    def crashed(self, run: StartedRun, how: str, max_deliveries: int) -> None:
        """Its child died: nothing is settled, the claim lapses and the run comes again; the
        attempt's end is noted in the history."""
        if run.timed_out:
            self.failed(run, f"{over_time(run)}; {how}", reason=TIME_LIMIT)
            return
        reason = (
            f"{how}; delivered again after the visibility timeout, dead-lettered after "
            f"{max_deliveries} deliveries"
        )
        report = self._report(
            run, Outcome.CRASHED, deliveries=run.delivery.deliveries, reason=reason
        )
        self._note(run.delivery, said(Outcome.CRASHED, how))
        report.emit(self.stats, self.clock.now())

    def released(self, run: StartedRun, reason: str) -> None:
        """Give the run back to its queue unfinished, for another worker to take."""
        report = self._report(run, Outcome.RELEASED, reason=reason)
        ending = said(Outcome.RELEASED, reason)
        self._settle(lambda: self.backend.release(run.delivery, ending), report)

    def _note(self, delivery: Delivery, ending: Ending) -> None:
        """Record an attempt's end that settles nothing; once, whatever the backend says: the
        claim lapses anyway, and the next claim ends the attempt as lost."""
        try:
            self.backend.note_ending(delivery, ending)
        except BackendError as exc:
            log.warning(
                "id=%s outcome=%s not written to the run history (the next claim records the "
                "attempt as lost): %s",
                delivery.id,
                ending.outcome,
                exc,
            )

    # --- writes the backend refused ---------------------------------------------------------

    def held(self) -> list[Delivery]:
        """The deliveries whose outcome is not written yet: their claims must stay alive."""
        return [pending.delivery for pending in self.unsettled]

    def next_retry(self) -> float | None:
        return min((pending.retry_at for pending in self.unsettled), default=None)

    def retry_due(self, mono: float) -> None:
        """Write again each refused outcome whose time has come."""
        for pending in [u for u in self.unsettled if u.retry_at <= mono]:
            try:
                pending.write()
            except BackendError:
                pending.retry_at = mono + pending.backoff.failed()
                continue
            self.unsettled.remove(pending)
            pending.report.emit(self.stats, self.clock.now())

    def abandon(self) -> None:
        """At shutdown: say which outcomes were never written."""
        for pending in self.unsettled:
            log.error(
                "id=%s outcome never written; it will be delivered again", pending.delivery.id
            )

    def _settle(self, write: Callable[[], None], report: Report) -> None:
        """Write a run's outcome, then report it; kept for retrying while the backend fails."""
        delivery = report.delivery
        try:
            write()
        except BackendError as exc:
            log.warning("id=%s outcome not written yet, retrying: %s", delivery.id, exc)
            backoff = Backoff(FIRST_RETRY, self.max_backoff)
            retry_at = self.clock.monotonic() + backoff.failed()
            self.unsettled.append(Unsettled(delivery, write, report, retry_at, backoff))
            return
        report.emit(self.stats, self.clock.now())

    def _report(
        self, run: StartedRun, outcome: Outcome, trace: str = "", **fields: object
    ) -> Report:
        """The report of a run that started: its duration first, a lost claim last."""
        duration = self.clock.monotonic() - run.started
        fields = {"duration": f"{duration:.3f}s", **fields}
        if run.lost:
            fields["claim"] = "lost"
        return Report(run.delivery, run.message, outcome, fields, trace, duration)
