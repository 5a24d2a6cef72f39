"""The worker: claims run messages, runs registered tasks in a pool, settles each run once.

One loop in one thread owns every backend call. Each round it claims a message for every idle
slot, keeps the claims of running tasks alive (a heartbeat every third of the visibility
timeout), enforces time limits, then waits for a slot's reply, the wake pipe or its next
deadline. A run is acknowledged only after its task finished; a worker that dies loses its
claims and the backend hands the runs out again after the visibility timeout.

Three parts: `beatd.triage` decides, purely, what a claimed delivery is (run it, or settle it
unrun); `beatd.settling` writes each outcome and reports it once; `Worker` here drives the pool.

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
from dataclasses import dataclass, field
from typing import Any

from beatd.backends.base import Delivery, StorageFailed, WaitsForWork, WorkQueue
from beatd.backoff import Backoff
from beatd.clock import Clock, SystemClock
from beatd.errors import BackendError, TransientBackendError
from beatd.message import RunMessage
from beatd.outcomes import Outcome, WorkerStats
from beatd.pool import Died, Pool, PoolError, PoolKind, Ready, Reply, Slot
from beatd.settling import Settler
from beatd.tasks import Registry, Task
from beatd.triage import Expired, Rejected, triage

__all__ = ["Outcome", "Worker", "WorkerSettings", "WorkerStats"]

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


CLAIMS_PER_ROUND = 100


@dataclass(eq=False)
class Job:
    """A claimed delivery running on a slot, from its start to its settlement."""

    delivery: Delivery
    message: RunMessage
    task: Task[..., Any]
    slot: Slot
    started: float  # monotonic
    deadline: float | None  # monotonic; None: no time limit
    timed_out: bool = False
    lost: bool = False  # the heartbeat found the claim taken by another worker


class Wakeup:
    """A self-pipe: a signal handler or another thread wakes the loop waiting on `fd`."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._lock = threading.RLock()

    def set(self) -> None:
        # reentrant: a signal handler may interrupt a nudge on the same thread
        with self._lock, contextlib.suppress(BlockingIOError):  # full: already woken
            if self._write_fd >= 0:  # closed: already finished, and the number may be reused
                os.write(self._write_fd, b"!")

    def clear(self) -> None:
        if self.fd >= 0:
            os.read(self.fd, 4096)

    def close(self) -> None:
        """Close both ends, once: a second close would close whatever descriptor has reused
        the number since (another thread's socket or pipe)."""
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                os.close(self._write_fd)
            self.fd = self._write_fd = -1


class Worker:
    """Drives the pool: claims for idle slots, heartbeats, time limits, replies, recycling.

    What to do with a claimed delivery is `beatd.triage`'s decision; writing and reporting each
    outcome is the `Settler`'s (`beatd.settling`).
    """

    def __init__(
        self,
        backend: WorkQueue,
        registry: Registry,
        settings: WorkerSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings or WorkerSettings()
        self.clock = clock or SystemClock()
        self.stats = WorkerStats()
        self.settler = Settler(backend, self.clock, self.stats, self.settings.max_backoff)
        self.pool = Pool(
            self.settings.pool, self.settings.concurrency, registry, self.settings.modules
        )
        self.jobs: dict[int, Job] = {}  # by slot index
        self._wakeup = Wakeup()
        self._stopping = False
        self._stopped = threading.Event()  # set with _stopping, for the waiting thread's naps
        self._aborted = False
        self._ready = False
        self._nudged = False
        self._drain_deadline: float | None = None
        self._claim_at = 0.0
        self._poll = 0.0
        self._heartbeat_at = 0.0
        self._backoff = Backoff(0.1, self.settings.max_backoff)  # while the backend fails
        self._waits = isinstance(backend, WaitsForWork)  # woken by the backend, never polling

    @property
    def backend_up(self) -> bool:
        """False from a failed backend call until one succeeds again (for /readyz)."""
        return not self._backoff.failing

    # --- control, from signal handlers and other threads ---------------------------------

    def stop(self) -> None:
        """Stop claiming; finish running tasks (up to the drain timeout), then return."""
        self._stopping = True
        self._stopped.set()
        self._wakeup.set()

    def abort(self) -> None:
        """Stop at once: running tasks are killed and their runs released."""
        self._stopping = self._aborted = True
        self._stopped.set()
        self._wakeup.set()

    def nudge(self) -> None:
        """Messages may be waiting (the scheduler just published): claim now, not later."""
        self._nudged = True
        self._wakeup.set()

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
        idle = not self.jobs and not self.settler.unsettled
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
        self.settler.retry_due(mono)
        woken, events = self.pool.wait(self._next_wake(mono) - mono, self._wakeup.fd)
        if woken:
            self._wakeup.clear()
        for slot, event in events:
            self._handle(slot, event)

    def _next_wake(self, mono: float) -> float:
        moments = [self._heartbeat_at]
        if not self._stopping and self.pool.idle() is not None:
            moments.append(self._claim_at)
        moments.extend(
            j.deadline for j in self.jobs.values() if j.deadline is not None and not j.timed_out
        )
        retry_at = self.settler.next_retry()
        if retry_at is not None:
            moments.append(retry_at)
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
        makes no other call; outages are the loop's to report, a refusal (e.g. an ACL without
        the wake-up channels) is said once: claims still happen, only later."""
        warned = False
        try:
            while not self._stopping:
                try:
                    if backend.wait_for_work(self.settings.queues, self.settings.block_period):
                        self.nudge()
                except BackendError as exc:
                    warned = _wait_failed(exc, warned)
                    self._stopped.wait(self.settings.block_period)
        except Exception:
            if not self._stopping:
                raise  # a fault of ours, not the backend closed under the wait at shutdown

    def _accept(self, delivery: Delivery, slot: Slot) -> None:
        """Start the delivery on `slot`, or settle it at once when it must not run."""
        decision = triage(delivery, self.registry, self.settings.max_deliveries, self.clock.now())
        if isinstance(decision, Rejected):
            self.settler.rejected(delivery, decision.message, decision.reason)
            return
        if isinstance(decision, Expired):
            self.settler.expired(delivery, decision.message)
            return
        mono = self.clock.monotonic()
        task = decision.task
        deadline = mono + task.time_limit if task.time_limit else None
        job = Job(delivery, decision.message, task, slot, mono, deadline)
        if slot.send(delivery.body, delivery.deliveries):
            self.jobs[slot.index] = job
        else:  # its child died while idle: the run never started
            self.settler.released(job, "its child process had died")
            self._restart(slot, "it died while idle")

    # --- running tasks ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        held: list[tuple[Delivery, Job | None]]
        held = [(j.delivery, j) for j in self.jobs.values() if not j.lost]
        held += [(delivery, None) for delivery in self.settler.held()]
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
            if job is not None:  # as if its worker had died: the claim lapses
                self.settler.crashed(job, event.how, self.settings.max_deliveries)
            else:
                log.warning("slot=%d idle child ended: %s", slot.index, event.how)
            if not self._stopping:
                slot.start()
            return
        assert job is not None, "a reply from a slot that was given no run"
        self.settler.replied(job, event)
        self._recycle(slot, event)

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

    # --- stopping ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Give back every run that did not finish, then stop the pool."""
        for job in list(self.jobs.values()):
            job.slot.stop(kill=True)
            self.settler.released(job, "the worker stopped before the task finished")
        self.jobs.clear()
        self.settler.abandon()
        self.pool.close()
        self._wakeup.close()
        log.info("worker stopped %s", self.stats.summary())

    # --- backend health ---------------------------------------------------------------------

    def _backend_failed(self, exc: BackendError) -> None:
        if not self._backoff.failing:
            log.error("backend %s unavailable, retrying with backoff: %s", self.backend.url, exc)
        self._claim_at = self.clock.monotonic() + self._backoff.failed()

    def _backend_recovered(self) -> None:
        if self._backoff.failing:
            log.info("backend %s reachable again", self.backend.url)
        self._backoff.succeeded()


def _wait_failed(exc: BackendError, warned: bool) -> bool:
    """Log a failed wait for runs: a refusal once as a WARNING (it will not pass by itself),
    outages and repeats at debug level. Whether the warning has been given."""
    if warned or isinstance(exc, TransientBackendError):
        log.debug("waiting for runs failed, retrying: %s", exc)
        return warned
    log.warning("cannot wait for runs: %s", exc)
    return True
