"""The daemon loop: composes leadership, adoption and publishing around a clock.

`Scheduler.step()` does one round (reload, leadership, adopt, publish) and says how long to
sleep: until the next due time, the next lease renewal or standby attempt, or half the watchdog
interval, whichever is first. Signals and schedule-file changes wake it early. There is no
polling. What happens is told to the observers (beatd.events) given to the constructor.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from beatd.adoption import Adoption
from beatd.backends.base import Backend, Lease, StorageFailed
from beatd.backoff import Backoff
from beatd.clock import Clock
from beatd.config import Config
from beatd.core import Planner, RunCounts
from beatd.dataloss import DataLossRecovery
from beatd.deadlines import Deadlines
from beatd.errors import BackendError, ConfigError, LeaseLost
from beatd.events import (
    Adopted,
    BackendDown,
    BackendUp,
    BecameLeader,
    Event,
    Observer,
    Reloaded,
    ReloadFailed,
    Reloading,
    Status,
    Stepped,
    SteppedDown,
    Stopped,
    Totals,
)
from beatd.failing import EntryHealth
from beatd.holding import HeldEnds
from beatd.leadership import Leadership, LeadershipSettings, Role
from beatd.node_reports import NodeIdentity, NodeReports, this_process
from beatd.publisher import Publisher
from beatd.steering import Steering

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerSettings", "Totals", "run_for"]


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    node: str = field(default_factory=socket.gethostname)
    lease_ttl: float = 10.0
    batch_size: int = 1000
    watchdog_interval: float | None = None  # seconds; pinged at half of it
    max_backoff: float = 5.0
    max_clock_skew: float = 1.0  # refuse leadership when our clock is this far off the backend's
    tick_budget: int | None = None  # next-fire computations per tick (core.TICK_BUDGET)
    removed_grace: float = 3600.0  # seconds a removed entry's state is kept (core.RemovedEntries)

    @property
    def renew_interval(self) -> float:
        return self.leadership.renew_interval

    @property
    def standby_interval(self) -> float:
        return self.leadership.standby_interval

    @property
    def leadership(self) -> LeadershipSettings:
        return LeadershipSettings(self.node, self.lease_ttl, self.max_clock_skew)


class Scheduler:
    """The loop. Its parts: `Leadership` (the lease), `NodeReports` (this node's record),
    `Adoption` (configuration and persisted state into the planner), `Publisher` (decisions
    into commits), `Deadlines` and `EntryHealth` (the history judged while leading), and the
    observers."""

    def __init__(
        self,
        backend: Backend,
        load_config: Callable[[], Config],
        clock: Clock,
        settings: SchedulerSettings | None = None,
        *,
        config: Config | None = None,
        observers: Sequence[Observer] = (),
        identity: NodeIdentity | None = None,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.settings = settings = settings or SchedulerSettings()
        self._load_config = load_config
        self.config = config if config is not None else load_config()
        self.deadlines = Deadlines(backend, clock)
        self.health = EntryHealth(backend, clock)
        self.steering = Steering(backend, backend, clock, settings.node)
        self.observers: tuple[Observer, ...] = (
            self.deadlines,
            self.health,
            self.steering,
            *observers,
        )
        self.totals = Totals()
        self.planner = Planner(settings.tick_budget)
        self.wake = threading.Event()
        data_loss = DataLossRecovery(backend, settings.lease_ttl)
        self.leadership = Leadership(backend, clock, settings.leadership, self.totals, data_loss)
        identity = identity or this_process(api_addr=None)  # `node_reports.serving` sets it
        self.node_reports = NodeReports(
            backend, settings.node, identity, settings.lease_ttl, self.totals
        )
        self.publisher = Publisher(backend, clock, settings.node, settings.batch_size, self._emit)
        self.publisher.controls = self.steering.controls
        self.held_ends = HeldEnds(backend, self.publisher.counts)
        self.adoption = Adoption(backend, clock, self.publisher, data_loss, settings.removed_grace)
        self._backoff = Backoff(maximum=settings.max_backoff)
        self._retry_at = 0.0  # monotonic: backoff after a backend error
        self._reload_requested = False
        self._adopted = False

    @property
    def lease(self) -> Lease | None:
        return self.leadership.lease

    @property
    def is_leader(self) -> bool:
        return self.leadership.lease is not None

    @property
    def epoch_seen(self) -> int:
        return self.leadership.epoch_seen

    @property
    def counts(self) -> RunCounts:
        return self.publisher.counts

    def paused_entries(self) -> list[str]:
        """The entries a pause covers now, as the leader knows (empty on a standby)."""
        return self.planner.paused(self.clock.now()) if self.is_leader else []

    @property
    def busy_marks_dropped(self) -> Mapping[str, int]:
        return self.publisher.busy_marks_dropped + self.steering.dropped

    @property
    def commands_counted(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Runs triggered and backfilled, counted from the audit log while leading, per entry."""
        return self.steering.triggered, self.steering.backfilled

    def status(self) -> Status:
        return Status(
            self.totals.backend_up, self.is_leader, len(self.config.entries), self.backend.url
        )

    def request_reload(self) -> None:
        """Reload the schedule files at the next step (SIGHUP, a changed file)."""
        self._reload_requested = True
        self.wake.set()

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set; raises StorageFailed (after stepping down) when the storage
        is gone or damaged."""
        while not stop.is_set():
            delay = self.step()
            self._emit(Stepped(self.status()))
            self.clock.sleep(delay, self.wake)
            self.wake.clear()
        self.shutdown()

    def shutdown(self) -> None:
        self.leadership.release()
        self._emit(Stopped())

    def step(self) -> float:
        """One round; returns the seconds to sleep before the next."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        mono = self.clock.monotonic()
        if mono >= self._retry_at:
            try:
                if self._lead(mono):
                    self._backend_recovered()
            except StorageFailed as exc:
                self._storage_failed(exc)
                raise
            except BackendError as exc:
                self._backend_failed(exc)
        return self._delay()

    def _lead(self, mono: float) -> bool:
        """Leadership, then (leading) adoption and publishing; True when the backend was
        asked."""
        poll = self.leadership.poll(mono, self.config.fingerprint, self.planner)
        if poll.role is Role.BECAME_LEADER:
            self._became_leader()
        elif poll.role is Role.STEPPED_DOWN:
            self._stepped_down()
        if poll.asked:  # a renewal or a standby attempt: say who we are
            self.node_reports.report(self.is_leader, self.config.fingerprint)
        lease, asked = self.lease, poll.asked
        if lease is not None and (not self._adopted or self.publisher.readopt):
            self._adopt(lease)
            asked = True
        if self.lease is not None and self._adopted:
            asked |= self.adoption.forget_expired(self.lease)
            asked |= self.steering.refresh(self.planner)
        if self.lease is not None:
            asked |= self._publish(self.lease)
        if self.lease is not None and self._adopted:
            asked |= self.held_ends.count(self.planner)
            asked |= self.deadlines.mark_passed(self.clock.now())
            asked |= self.health.refresh(self.config.entries)
            summaries = self.health.summaries
            asked |= self.steering.pause_failing(self.config.entries, summaries, self.planner)
        return asked

    def _publish(self, lease: Lease) -> bool:
        done = self.publisher.publish(self.planner, lease)
        if done.lease_lost is not None:
            log.warning("%s; now standby", done.lease_lost)
            self._step_down()
        self.publisher.log_round(self.planner, done.counts_before)
        return done.asked

    def _adopt(self, lease: Lease) -> None:
        try:
            if not self.leadership.announce(self.config.fingerprint, self.planner):
                self._stepped_down()
                return
            self.adoption.adopt(self.config, self.planner, lease)
            self.deadlines.adopt(self.config.entries)
        except LeaseLost as exc:
            log.warning("%s; now standby", exc)
            self._step_down()
            return
        self._adopted = True
        self._emit(Adopted(self.config))

    def _delay(self) -> float:
        mono = self.clock.monotonic()
        if self._retry_at > mono:
            return self._retry_at - mono
        deadlines = [self.leadership.wake_at]
        if self.lease is not None:
            for wake in (
                self.planner.next_wake(),
                self.adoption.removed.next_expiry(),
                self.deadlines.next_at(),
            ):
                if wake is not None:
                    deadlines.append(mono + (wake - self.clock.now()).total_seconds())
            if (read := self.health.next_read()) is not None:
                deadlines.append(read)
        if self.settings.watchdog_interval:
            deadlines.append(mono + self.settings.watchdog_interval / 2)
        return max(0.0, min(deadlines) - mono)

    def _emit(self, event: Event) -> None:
        for observer in self.observers:
            observer.notify(event)

    # --- configuration -------------------------------------------------------------------

    def reload(self) -> bool:
        self._emit(Reloading())
        try:
            config = self._load_config()
        except ConfigError as exc:
            self.totals.reloads_failed += 1
            self.totals.last_reload_ok = False
            log.error(
                "reload refused, keeping the last good configuration (%d entries):\n%s",
                len(self.config.entries),
                exc,
            )
            self._emit(ReloadFailed(self.status()))
            return False
        self.config = config
        self.publisher.forget()
        self.totals.reloads_ok += 1
        self.totals.last_reload_ok = True
        self._adopted = False
        log.info("reloaded %d entries config=%s", len(config.entries), config.fingerprint)
        self._emit(Reloaded(self.status()))
        return True

    # --- leadership changes and backend health -------------------------------------------

    def _became_leader(self) -> None:
        lease = self.leadership.lease
        assert lease is not None
        self.planner = Planner(self.settings.tick_budget)
        self._adopted = False
        self._emit(BecameLeader(self.status(), lease.node, lease.epoch))

    def _step_down(self) -> None:
        self.leadership.step_down(self.planner)
        self._stepped_down()

    def _stepped_down(self) -> None:
        self.publisher.in_doubt.clear()  # outcomes unknown for good: neither repeated nor counted
        self.planner = Planner(self.settings.tick_budget)
        self._emit(SteppedDown(self.status()))

    def _backend_failed(self, exc: BackendError) -> None:
        was_down = self._backoff.failing
        self._retry_at = self.clock.monotonic() + self._backoff.failed()
        self.totals.backend_up = False
        if not was_down:
            log.error("backend %s unavailable, retrying with backoff: %s", self.backend.url, exc)
            self._emit(BackendDown(self.status()))
        else:
            log.debug(
                "backend %s still unavailable; next try in %.1f s",
                self.backend.url,
                self._backoff.delay,
            )

    def _storage_failed(self, exc: StorageFailed) -> None:
        """Gone or damaged storage is no outage to wait out: stop leading, say why, stop."""
        self._step_down()
        self.totals.backend_up = False
        log.error(
            "storage failed, stepping down and exiting with status %d: %s", exc.exit_status, exc
        )
        self._emit(BackendDown(self.status()))

    def _backend_recovered(self) -> None:
        was_down = self._backoff.failing
        self._backoff.succeeded()
        self.totals.backend_up = True
        if was_down:
            log.info("backend %s reachable again", self.backend.url)
            self._emit(BackendUp(self.status()))


def run_for(scheduler: Scheduler, seconds: float) -> None:
    """Drive the loop for a span of (possibly fake) time; used by tests and benchmarks."""
    end = scheduler.clock.monotonic() + seconds
    while scheduler.clock.monotonic() < end:
        delay = scheduler.step()
        scheduler.clock.sleep(min(delay, end - scheduler.clock.monotonic()), scheduler.wake)
        scheduler.wake.clear()
