"""The worker: claims run messages, runs registered tasks in a pool, settles each run once.

One loop in one thread owns every backend call. Each round it claims a message for every idle
slot, keeps the claims of running tasks alive (a heartbeat every third of the visibility
timeout), enforces time limits, then waits for a slot's reply, the wake pipe or its next
deadline. A run is acknowledged only after its task finished; a worker that dies loses its
claims and the backend hands the runs out again after the visibility timeout.

Each claimed message ends in exactly one outcome, logged as one `task=... outcome=...` line:

    succeeded      the task returned; the message is acknowledged
    retried        it failed (or raised Retry) with retries left; requeued with attempt + 1
    failed         it failed with no retries left; moved to the dead-letter queue
    expired        past its `expires_at` when claimed; acknowledged without running
    dead_lettered  never ran: unreadable, unknown task, or its delivery budget is spent
    crashed        its child process died; the claim lapses and the run is delivered again
    released       the worker stopped before it finished; given back to the queue
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from beatd.backends.base import Backend, Delivery, StorageFailed, WaitsForWork
from beatd.clock import Clock, SystemClock
from beatd.errors import BackendError
from beatd.message import MessageError, RunMessage
from beatd.pool import Died, Pool, PoolError, PoolKind, Ready, Reply, Slot
from beatd.tasks import Registry, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    pool: PoolKind = "process"
    modules: tuple[str, ...] = ()  # task modules each child imports
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # MiB resident after a task
    drain_timeout: float = 30.0
    min_poll: float = 0.01  # idle polling starts here and doubles...
    max_poll: float = 1.0  # ...up to here: SQLite has no blocking pop
    block_period: float = 1.5  # Redis: longest wait per call (the backend keeps it in its bound)
    max_backoff: float = 5.0  # backend errors
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    @property
    def heartbeat_interval(self) -> float:
        return self.visibility_timeout / 3


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    EXPIRED = "expired"
    DEAD_LETTERED = "dead_lettered"
    CRASHED = "crashed"
    RELEASED = "released"


FAILURES = (Outcome.RETRIED, Outcome.FAILED, Outcome.CRASHED)
LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.EXPIRED: logging.INFO,
    Outcome.RELEASED: logging.INFO,
    Outcome.RETRIED: logging.WARNING,
}
CLAIMS_PER_ROUND = 100


@dataclass
class WorkerStats:
    """Counts per (task, outcome) and per-entry last success and failure, for metrics."""

    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    last_success: dict[str, datetime] = field(default_factory=dict)
    last_failure: dict[str, datetime] = field(default_factory=dict)
    observe_duration: Callable[[str, float], None] = lambda _task, _seconds: None

    def record(
        self,
        task: str,
        entry: str | None,
        outcome: Outcome,
        when: datetime,
        duration: float | None = None,
    ) -> None:
        self.outcomes[task, outcome] += 1
        if duration is not None:
            self.observe_duration(task, duration)
        if entry is not None and outcome is Outcome.SUCCEEDED:
            self.last_success[entry] = when
        elif entry is not None and outcome in FAILURES:
            self.last_failure[entry] = when

    def count(self, outcome: Outcome, task: str | None = None) -> int:
        return sum(n for (t, o), n in self.outcomes.items() if o is outcome and task in (None, t))


@dataclass(eq=False)
class Job:
    """A claimed delivery, from claim to settlement."""

    delivery: Delivery
    message: RunMessage
    task: Task[..., Any]
    slot: Slot
    started: float  # monotonic
    deadline: float | None  # monotonic; None: no time limit
    timed_out: bool = False
    lost: bool = False  # the heartbeat found the claim taken by another worker


Report = Callable[[], None]


@dataclass(eq=False)
class Unsettled:
    """A run whose ack, retry or dead-letter write failed; retried with backoff."""

    delivery: Delivery
    write: Callable[[], None]
    report: Report
    retry_at: float
    backoff: float = 1.0


class Worker:
    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        settings: WorkerSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.clock = clock or SystemClock()
        self.stats = WorkerStats()
        self.pool = Pool(self.settings.pool, self.settings.concurrency, self.settings.modules)
        self.jobs: dict[int, Job] = {}  # by slot index
        self.unsettled: list[Unsettled] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.RLock()
        self._stopping = False
        self._stopped = threading.Event()  # set with _stopping, for the waiting thread's naps
        self._aborted = False
        self._ready = False
        self._nudged = False
        self._drain_deadline: float | None = None
        self._claim_at = 0.0
        self._poll = 0.0
        self._heartbeat_at = 0.0
        self._backoff = 0.0
        self._backend_down = False
        self._waits = isinstance(backend, WaitsForWork)  # woken by the backend, never polling

    @property
    def backend_up(self) -> bool:
        """False from a failed backend call until one succeeds again (for /readyz)."""
        return not self._backend_down

    # --- control, from signal handlers and other threads ---------------------------------

    def stop(self) -> None:
        """Stop claiming; finish running tasks (up to the drain timeout), then return."""
        self._stopping = True
        self._stopped.set()
        self._wake()

    def abort(self) -> None:
        """Stop at once: running tasks are killed and their runs released."""
        self._stopping = self._aborted = True
        self._stopped.set()
        self._wake()

    def nudge(self) -> None:
        """Messages may be waiting (the scheduler just published): claim now, not later."""
        self._nudged = True
        self._wake()

    def _wake(self) -> None:
        # reentrant: a signal handler may interrupt a nudge on the same thread
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: already woken
            if self._wake_w >= 0:  # closed: already finished, and the number may be reused
                os.write(self._wake_w, b"!")

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped and drained; running tasks' runs are released if cut short."""
        settings = self.settings
        log.info(
            "worker consumer=%s pool=%s concurrency=%d queues=%s tasks=%d visibility=%gs",
            settings.consumer,
            settings.pool,
            settings.concurrency,
            ",".join(settings.queues),
            len(self.registry),
            settings.visibility_timeout,
        )
        self.pool.start()
        if isinstance(self.backend, WaitsForWork):
            watch = threading.Thread(target=self._watch, args=(self.backend,), daemon=True)
            watch.start()
        try:
            while not self._finished():
                self._round()
        finally:
            self._shutdown()

    def _finished(self) -> bool:
        if self._aborted:
            return True
        if not self._stopping:
            return False
        mono = self.clock.monotonic()
        if self._drain_deadline is None:
            self._drain_deadline = mono + self.settings.drain_timeout
            log.info(
                "stopping: no new claims; waiting up to %gs for %d running task(s)",
                self.settings.drain_timeout,
                len(self.jobs),
            )
        idle = not self.jobs and not self.unsettled
        return idle or mono >= self._drain_deadline

    def _round(self) -> None:
        mono = self.clock.monotonic()
        if self._nudged:
            self._nudged = False
            self._claim_at = mono
            self._poll = 0.0
        if not self._stopping and mono >= self._claim_at:
            self._claim(mono)
        if mono >= self._heartbeat_at:
            self._heartbeat()
            self._heartbeat_at = mono + self.settings.heartbeat_interval
        self._enforce_time_limits(mono)
        self._settle_pending(mono)
        woken, events = self.pool.wait(self._next_wake(mono) - mono, self._wake_r)
        if woken:
            os.read(self._wake_r, 4096)
        for slot, event in events:
            self._handle(slot, event)

    def _next_wake(self, mono: float) -> float:
        moments = [self._heartbeat_at]
        if not self._stopping and self.pool.idle() is not None:
            moments.append(self._claim_at)
        moments.extend(
            j.deadline for j in self.jobs.values() if j.deadline is not None and not j.timed_out
        )
        moments.extend(u.retry_at for u in self.unsettled)
        if self._drain_deadline is not None:
            moments.append(self._drain_deadline)
        return max(min(moments), mono)

    # --- claiming ---------------------------------------------------------------------------

    def _claim(self, mono: float) -> None:
        settings = self.settings
        for _ in range(CLAIMS_PER_ROUND):  # runs settled without a slot must not starve the rest
            slot = self.pool.idle()
            if slot is None:
                return
            try:
                delivery = self.backend.claim(
                    settings.queues, settings.consumer, settings.visibility_timeout
                )
            except StorageFailed:
                raise  # gone or damaged storage: stop, no retrying
            except BackendError as exc:
                self._backend_failed(exc)
                return
            self._backend_recovered()
            if delivery is None and self._waits:  # idle: woken when a run is added; claims
                self._claim_at = mono + settings.visibility_timeout  # lapse without a wake-up
                return
            if delivery is None:  # idle: poll again soon, then less and less often
                self._poll = min(max(self._poll * 2, settings.min_poll), settings.max_poll)
                self._claim_at = mono + self._poll
                return
            self._poll = 0.0
            self._accept(delivery, slot)

    def _watch(self, backend: WaitsForWork) -> None:
        """The waiting thread: nudges the loop when the backend says a run may be ready. It
        makes no other call; outages are the loop's to report."""
        try:
            while not self._stopping:
                try:
                    if backend.wait_for_work(self.settings.queues, self.settings.block_period):
                        self.nudge()
                except BackendError as exc:
                    log.debug("waiting for runs failed, retrying: %s", exc)
                    self._stopped.wait(self.settings.block_period)
        except Exception:
            if not self._stopping:
                raise  # a fault of ours, not the backend closed under the wait at shutdown

    def _accept(self, delivery: Delivery, slot: Slot) -> None:
        """Start the delivery on `slot`, or settle it at once when it must not run."""
        if delivery.unreadable:
            self._bury_unrun(delivery, None, delivery.unreadable)
            return
        try:
            message = RunMessage.from_json(delivery.body)
        except MessageError as exc:
            self._bury_unrun(delivery, None, f"unreadable run message: {exc}")
            return
        if message.id != delivery.id:  # which one would the logs, the task, a retry believe?
            reason = (
                f"the queue entry's id {delivery.id!r} differs from its body's id {message.id!r}"
            )
            self._bury_unrun(delivery, message, reason)
            return
        budget = self.settings.max_deliveries
        if delivery.deliveries > budget:
            reason = (
                f"delivered {delivery.deliveries} times without finishing (max-deliveries "
                f"{budget}): each worker or child that took it died"
            )
            self._bury_unrun(delivery, message, reason)
            return
        task = self.registry.get(message.task)
        if task is None:
            reason = (
                f"no task named {message.task!r} is registered in this worker: import the "
                "module that defines it with -A/--app or list it under imports: in a "
                "schedule file"
            )
            self._bury_unrun(delivery, message, reason)
            return
        if message.is_expired(self.clock.now()):
            report = self._report(
                delivery, message, Outcome.EXPIRED, deliveries=delivery.deliveries
            )
            self._settle(delivery, lambda: self.backend.ack(delivery), report)
            return
        mono = self.clock.monotonic()
        deadline = mono + task.time_limit if task.time_limit else None
        job = Job(delivery, message, task, slot, mono, deadline)
        if slot.send(delivery.body, delivery.deliveries):
            self.jobs[slot.index] = job
        else:  # its child died while idle: the run never started
            self._release(job, "its child process had died")
            self._restart(slot, "it died while idle")

    def _bury_unrun(self, delivery: Delivery, message: RunMessage | None, reason: str) -> None:
        report = self._report(
            delivery, message, Outcome.DEAD_LETTERED, deliveries=delivery.deliveries, reason=reason
        )
        self._settle(delivery, lambda: self.backend.dead_letter(delivery, reason), report)

    # --- running tasks ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        held: list[tuple[Delivery, Job | None]]
        held = [(j.delivery, j) for j in self.jobs.values() if not j.lost]
        held += [(u.delivery, None) for u in self.unsettled]
        for delivery, job in held:
            try:
                kept = self.backend.extend(delivery, self.settings.visibility_timeout)
            except BackendError as exc:
                log.warning("id=%s heartbeat failed: %s", delivery.id, exc)
                continue
            if not kept and job is not None:
                job.lost = True
                log.warning(
                    "task=%s id=%s lost its claim (a heartbeat came too late); another worker "
                    "may run it too",
                    job.task.name,
                    delivery.id,
                )

    def _enforce_time_limits(self, mono: float) -> None:
        for job in self.jobs.values():
            if job.deadline is None or job.timed_out or mono < job.deadline:
                continue
            job.timed_out = True
            how = "killing its child" if job.slot.kind == "process" else "interrupting its thread"
            log.warning(
                "task=%s id=%s ran over its time limit of %gs; %s",
                job.task.name,
                job.delivery.id,
                job.task.time_limit,
                how,
            )
            job.slot.interrupt()

    def _handle(self, slot: Slot, event: Ready | Reply | Died) -> None:
        if isinstance(event, Ready):
            log.debug("slot=%d %s child pid=%d ready", slot.index, slot.kind, event.pid)
            if not self._ready and all(s.state != "starting" for s in self.pool.slots):
                self._ready = True
                log.info("ready: %d %s slot(s) started", len(self.pool.slots), slot.kind)
            return
        job = self.jobs.pop(slot.index, None)
        if isinstance(event, Died):
            if event.starting:
                raise PoolError(f"a {slot.kind} child died before it was ready: {event.how}")
            if job is not None:
                self._died(job, event.how)
            else:
                log.warning("slot=%d idle child ended: %s", slot.index, event.how)
            if not self._stopping:
                slot.start()
            return
        assert job is not None, "a reply from a slot that was given no run"
        if event.status == "ok":
            report = self._report_job(job, Outcome.SUCCEEDED)
            self._settle(job.delivery, lambda: self.backend.ack(job.delivery), report)
        elif event.status == "retry":
            self._failed(job, f"Retry: {event.detail}", countdown=event.countdown)
        elif job.timed_out and event.detail.startswith("TimeLimitExceeded"):
            self._failed(job, _over_time(job), trace=event.traceback)
        else:
            self._failed(job, event.detail, trace=event.traceback)
        self._recycle(slot, event)

    def _died(self, job: Job, how: str) -> None:
        if job.timed_out:
            self._failed(job, f"{_over_time(job)}; {how}")
            return
        # as if its worker had died: the claim lapses, the run is delivered again and counted
        reason = (
            f"{how}; delivered again after the visibility timeout, dead-lettered after "
            f"{self.settings.max_deliveries} deliveries"
        )
        self._report_job(
            job,
            Outcome.CRASHED,
            deliveries=job.delivery.deliveries,
            reason=reason,
        )()

    def _failed(
        self, job: Job, error: str, countdown: float | None = None, trace: str = ""
    ) -> None:
        attempt, task = job.message.attempt, job.task
        if attempt > task.max_retries:
            reason = f"failed after {attempt} attempt(s): {error}"
            report = self._report_job(job, Outcome.FAILED, reason=reason, trace=trace)
            self._settle(
                job.delivery, lambda: self.backend.dead_letter(job.delivery, reason), report
            )
            return
        delay = countdown if countdown is not None else task.retry_delay(attempt)
        body = job.message.next_attempt().to_json()
        report = self._report_job(
            job,
            Outcome.RETRIED,
            retry_in=f"{delay:g}s",
            error=error,
            trace=trace,
        )
        self._settle(job.delivery, lambda: self.backend.retry(job.delivery, body, delay), report)

    def _release(self, job: Job, reason: str) -> None:
        report = self._report_job(job, Outcome.RELEASED, reason=reason)
        self._settle(job.delivery, lambda: self.backend.release(job.delivery), report)

    def _recycle(self, slot: Slot, reply: Reply) -> None:
        settings = self.settings
        if slot.kind != "process":
            return  # threads do not leak apart from the process
        reason = ""
        if settings.max_tasks_per_child and slot.runs >= settings.max_tasks_per_child:
            reason = f"it ran {slot.runs} task(s) (max-tasks-per-child)"
        limit = settings.max_memory_per_child
        if limit and reply.rss > limit * 2**20:
            reason = f"it uses {reply.rss / 2**20:.0f} MiB (max-memory-per-child {limit} MiB)"
        if reason:
            self._restart(slot, reason)

    def _restart(self, slot: Slot, reason: str) -> None:
        log.info("slot=%d replacing child pid=%d: %s", slot.index, slot.pid, reason)
        slot.stop()
        slot.start()

    # --- settling ---------------------------------------------------------------------------

    def _settle(self, delivery: Delivery, write: Callable[[], None], report: Report) -> None:
        """Write a run's outcome, then report it; retried with backoff while the backend fails."""
        try:
            write()
        except BackendError as exc:
            log.warning("id=%s outcome not written yet, retrying: %s", delivery.id, exc)
            self.unsettled.append(Unsettled(delivery, write, report, self.clock.monotonic() + 1))
            return
        report()

    def _settle_pending(self, mono: float) -> None:
        for pending in [u for u in self.unsettled if u.retry_at <= mono]:
            try:
                pending.write()
            except BackendError:
                pending.backoff = min(pending.backoff * 2, self.settings.max_backoff)
                pending.retry_at = mono + pending.backoff
                continue
            self.unsettled.remove(pending)
            pending.report()

    def _report_job(self, job: Job, outcome: Outcome, trace: str = "", **fields: object) -> Report:
        return self._report(job.delivery, job.message, outcome, job, trace, **fields)

    def _report(
        self,
        delivery: Delivery,
        message: RunMessage | None,
        outcome: Outcome,
        job: Job | None = None,
        trace: str = "",
        **fields: object,
    ) -> Report:
        """Count and log an outcome, once it is written: one `task=... outcome=...` line."""
        task = message.task if message else "?"
        attempt = message.attempt if message else "?"
        run = message.id if message else delivery.id  # the id the task sees, where there is one
        head = f"task={task} id={run} attempt={attempt} outcome={outcome}"
        duration = self.clock.monotonic() - job.started if job is not None else None
        if job is not None:
            fields = {"duration": f"{duration:.3f}s", **fields}
            if job.lost:
                fields["claim"] = "lost"

        def report() -> None:
            entry = message.entry if message else None
            self.stats.record(task, entry, outcome, self.clock.now(), duration)
            line = " ".join([head, *(f"{k}={v}" for k, v in fields.items())])
            # the same context as fields of their own, for --log-format json
            extra: dict[str, object] = {"task": task, "id": delivery.id, "entry": entry}
            extra |= {"attempt": attempt, "outcome": str(outcome), **fields}
            if duration is not None:
                extra["duration"] = duration  # seconds, as a number
            log.log(
                LEVELS.get(outcome, logging.ERROR),
                "%s%s",
                line,
                f"\n{trace.rstrip()}" if trace else "",
                extra=extra,
            )

        return report

    # --- stopping ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Give back every run that did not finish, then stop the pool."""
        for job in list(self.jobs.values()):
            job.slot.stop(kill=True)
            self._release(job, "the worker stopped before the task finished")
        self.jobs.clear()
        for pending in self.unsettled:
            log.error(
                "id=%s outcome never written; it will be delivered again", pending.delivery.id
            )
        self.pool.close()
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1
        log.info("worker stopped %s", _summary(self.stats))

    # --- backend health ---------------------------------------------------------------------

    def _backend_failed(self, exc: BackendError) -> None:
        self._backoff = min(max(self._backoff * 2, 0.1), self.settings.max_backoff)
        self._claim_at = self.clock.monotonic() + self._backoff
        if not self._backend_down:
            log.error("backend %s unavailable, retrying with backoff: %s", self.backend.url, exc)
            self._backend_down = True

    def _backend_recovered(self) -> None:
        self._backoff = 0.0
        if self._backend_down:
            log.info("backend %s reachable again", self.backend.url)
            self._backend_down = False


def _over_time(job: Job) -> str:
    return f"TimeLimitExceeded: ran over its time limit of {job.task.time_limit or 0:g}s"


def _summary(stats: WorkerStats) -> str:
    return " ".join(f"{outcome}={stats.count(outcome)}" for outcome in Outcome)
