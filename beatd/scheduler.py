"""The daemon loop: composes leadership, adoption and publishing around a clock.

`Scheduler.step()` does one round (reload, the runtime entries' feed, leadership, adopt,
publish) and says how long to sleep: until the next due time, the next lease renewal or standby
attempt, the next read of the runtime entries' change feed (`RuntimeView`, every 0.2 s) or half
the watchdog interval, whichever is first. Signals and schedule-file changes wake it early. What
happens is told to the observers (beatd.events) given to the constructor.

What the leader plans is the files' entries and the runtime entries (`entries`). A runtime
entry's change touches that entry in the planner (`Planner.put`, `drop`); the leader reads the
feed again right before publishing, so a removal acknowledged before the round that would
publish the entry's slot publishes nothing. A file entry whose name a runtime entry has is a
configuration error naming both: the reload is refused (at start: exit 2).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from beatd.adoption import Adoption
from beatd.backends.base import Backend, Lease, StorageFailed
from beatd.clock import Clock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.core import Planner, RunCounts, pause_in_force
from beatd.dataloss import DataLossRecovery
from beatd.deadlines import Deadlines
from beatd.entry_feed import (
    POLL_INTERVAL,
    PlannedEntries,
    RuntimeView,
)
from beatd.errors import BackendError, ConfigError, LeaseLost
from beatd.events import (
    Adopted,
    BackendDown,
    BackendUp,
    BecameLeader,
    EntriesChanged,
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
from beatd.following import FeedFollower
from beatd.holding import HeldEnds
from beatd.leadership import Leadership, LeadershipSettings, Role
from beatd.node_reports import NodeIdentity, NodeReports, this_process
from beatd.outage import BackendOutage
from beatd.publisher import Publisher
from beatd.staging import Done, Stages
from beatd.steering import Steering
from beatd.turns import LoopTurns

log = logging.getLogger(__name__)

__all__ = ["Scheduler", "SchedulerSettings", "Totals", "run_for"]


RELOAD_REFUSED = "reload refused, keeping the last good configuration (%d entries):\n%s"


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
    entry_poll: float = POLL_INTERVAL  # seconds between reads of the runtime entries' feed

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
        self.runtime = RuntimeView(backend, clock, settings.entry_poll)
        self.planned = PlannedEntries(self.runtime, self.config.entries)
        self._good: Config | None = None  # the last configuration clear of runtime entries' names
        self.deadlines = Deadlines(backend, clock)
        self.health = EntryHealth(backend, clock)
        self.steering = Steering(backend, backend, clock, settings.node)
        parts = (self.deadlines, self.health, self.steering)
        self.observers: tuple[Observer, ...] = (*parts, *observers)
        self.totals = Totals()
        self.planner = Planner(settings.tick_budget)
        self.wake = threading.Event()
        self.turns = LoopTurns()  # the API's threads wait for a gap in this loop's rounds
        data_loss = DataLossRecovery(backend, settings.lease_ttl)
        self.leadership = Leadership(backend, clock, settings.leadership, self.totals, data_loss)
        identity = identity or this_process(api_addr=None)  # `node_reports.serving` sets it
        self.node_reports = NodeReports(
            backend, settings.node, identity, settings.lease_ttl, self.totals
        )
        self.publisher = Publisher(backend, clock, settings.node, settings.batch_size, self._emit)
        self.publisher.controls = self.steering.controls
        self.held_ends = HeldEnds(backend, self.publisher.counts)
        self.publisher.keep_alive = keep = self.leadership.keep_alive  # within work on every entry
        grace = settings.removed_grace
        self.adoption = Adoption(backend, clock, self.publisher, data_loss, grace, keep)
        self.stages = Stages(self.adoption, self.runtime, data_loss)
        self.following = FeedFollower(
            self.runtime, self.planned, self.adoption, clock, self.stages, keep
        )
        self.outage = BackendOutage(clock, backend.url, self.totals, settings.max_backoff)
        self._reload_requested = False
        self._adopted = False
        self._files_before: Mapping[str, Entry] | None = None  # the files adopted, at a reload

    @property
    def lease(self) -> Lease | None:
        return self.leadership.lease

    @property
    def is_leader(self) -> bool:
        return self.leadership.lease is not None

    @property
    def counts(self) -> RunCounts:
        return self.publisher.counts

    def paused_entries(self, names: Iterable[str] | None = None) -> list[str]:
        """The entries a pause covers now, as the leader knows (empty on a standby); only among
        `names`, if given (a scrape showing a few entries of a million)."""
        now, planner = self.clock.now(), self.planner
        if not self.is_leader or names is None:
            return planner.paused(now) if self.is_leader else []
        return [n for n in names if (c := planner.control(n)) and pause_in_force(c.pause, now)]

    @property
    def busy_marks_dropped(self) -> Mapping[str, int]:
        return self.publisher.busy_marks_dropped + self.steering.dropped

    @property
    def commands_counted(self) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Runs triggered and backfilled, counted from the audit log while leading, per entry."""
        return self.steering.triggered, self.steering.backfilled

    def status(self) -> Status:
        return Status(
            self.totals.backend_up, self.is_leader, len(self.planned.entries), self.backend.url
        )

    def request_reload(self) -> None:
        """Reload the schedule files at the next step (SIGHUP, a changed file)."""
        self._reload_requested = True
        self.wake.set()

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set; raises StorageFailed (after stepping down) when the storage
        is gone or damaged."""
        try:
            while not stop.is_set():
                self.turns.awake()
                delay = self.step()
                self._emit(Stepped(self.status()))
                self.turns.sleeping(delay)
                self.clock.sleep(delay, self.wake)
                self.wake.clear()
        finally:
            self.turns.stopped()  # raising too (StorageFailed): nothing waits for it any more
        self.shutdown()

    def shutdown(self) -> None:
        self.leadership.release()
        self._emit(Stopped())

    def step(self) -> float:
        """One round; returns the seconds to sleep before the next."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if self.clock.monotonic() >= self.outage.retry_at:
            try:
                if self._lead():
                    self._backend_recovered()
            except StorageFailed as exc:
                self._storage_failed(exc)
                raise
            except BackendError as exc:
                self._backend_failed(exc)
        return _delay(self)

    def _lead(self) -> bool:
        """Leadership, then (leading) adoption and publishing; True when the backend was
        asked."""
        followed = self.runtime.due() and self._follow_feed()  # may read every entry: long
        poll = self.leadership.poll(self.clock.monotonic(), self.config.fingerprint, self.planner)
        if poll.role is Role.BECAME_LEADER:
            self._became_leader()
        elif poll.role is Role.STEPPED_DOWN:
            self._stepped_down()
        if poll.asked:  # a renewal or a standby attempt: say who we are
            self.node_reports.report(self.is_leader, self.config.fingerprint)
        lease, asked = self.lease, poll.asked  # not the feed's reads: writes may still fail
        if lease is not None and (not self._adopted or self.publisher.readopt):
            self._adopt(lease)
            asked = True
        if self.lease is not None and self._adopted:
            asked |= self.adoption.forget_expired(self.lease)
            asked |= self.steering.refresh(self.planner)
        under = self._adopted or self.stages.staging is not None  # a removal is read first
        if not followed and under and self.is_leader and _due(self.planner, self.clock):
            self._follow_feed()
        if self.lease is not None:
            asked |= self._publish(self.lease)
        if self.lease is not None and self._adopted:
            asked |= self.held_ends.count(self.planner)
            asked |= self.deadlines.mark_passed(self.clock.now())
            asked |= self.health.refresh(self.planned.entries)
            summaries = self.health.summaries
            asked |= self.steering.pause_failing(self.planned.entries, summaries, self.planner)
        return asked

    def _publish(self, lease: Lease) -> bool:
        done = self.publisher.publish(self.planner, lease)
        if done.lease_lost is not None:
            log.warning("%s; now standby", done.lease_lost)
            self._step_down()
        self.publisher.log_round(self.planner, done.counts_before)
        return done.asked

    def _adopt(self, lease: Lease) -> None:
        if self.stages.stale:
            self._unstage()  # every entry read again meanwhile: begin again
        stages = self.stages.staging is not None
        wanted = self.stages.wanted(self.planner, self._files_before)
        if not stages and not self.runtime.loaded and not wanted:
            return  # the runtime entries first: a plan without them would be adopted twice
        try:
            if not self.leadership.announce(self.config.fingerprint, self.planner):
                self._stepped_down()
                return
            if not stages:
                clash = self.following.register(lease, self.config.entries)
                if clash is not None:
                    return self._refuse(clash)
            before, self._files_before = self._files_before, None
            done = self.stages.adopt(self.planner, lease, self.planned, before)
            if done is Done.NOT_YET:
                return
            if done is Done.EVERY_ENTRY:
                self.deadlines.adopt(self.planned.entries)
            self.leadership.keep_alive(now=True)  # a whole lease for its observers' long work
        except LeaseLost as exc:
            log.warning("%s; now standby", exc)
            self._step_down()
            return
        self._adopted = True
        self._good = self.config
        self._emit(Adopted(self.config, self.planned.entries))  # then renewed when due, as ever

    def _unstage(self) -> None:
        """Let a staging under way go, with what it planned."""
        if self.stages.staging is not None:
            self.stages.stop()
            self.planner = Planner(self.settings.tick_budget)

    def _emit(self, event: Event) -> None:
        for observer in self.observers:
            observer.notify(event)

    # --- configuration -------------------------------------------------------------------

    def reload(self) -> bool:
        self._emit(Reloading())
        try:
            config = self._load_config()
            if (clash := self.planned.clash(config.entries)) is not None:
                raise clash
        except ConfigError as exc:
            self._reload_refused(exc)
            return False
        self._files_before = self.config.entries if self._adopted else self._files_before
        self._unstage()  # staged with the files before: begin again
        self.config = config
        self.planned.use(config.entries)
        self.publisher.forget()
        self.totals.reloaded(ok=True)
        self._adopted = False
        log.info("reloaded %d entries config=%s", len(config.entries), config.fingerprint)
        self._emit(Reloaded(self.status()))
        return True

    def _reload_refused(self, exc: ConfigError) -> None:
        self.totals.reloaded(ok=False)
        log.error(RELOAD_REFUSED, len(self.config.entries), exc)
        self._emit(ReloadFailed(self.status()))

    def _refuse(self, clash: ConfigError) -> None:
        """Files naming runtime entries: keep the last good configuration (none: stop, raise)."""
        if (good := self._good) is None or good is self.config:
            self.shutdown()  # the lease given back: a standby takes over at once
            raise clash
        self._reload_refused(clash)
        self.config = good
        self.planned.use(good.entries)
        self.publisher.forget()

    def _follow_feed(self) -> bool:
        under = self._adopted or self.stages.staging is not None
        lease, files = self.lease if under else None, self.config.entries
        try:
            if self.following.follow(self.planner, lease, files, self._good is not None):
                self._adopted, self._files_before = False, None
            if taken := self.following.taken():
                self._emit(EntriesChanged(taken))
            if self.runtime.loaded:  # checked against every runtime entry
                self._good = self._good or self.config
        except LeaseLost as exc:
            log.warning("%s; now standby", exc)
            self._step_down()
        return True

    # --- leadership changes and backend health -------------------------------------------

    def _became_leader(self) -> None:
        lease = self.leadership.lease
        assert lease is not None
        self.planner = Planner(self.settings.tick_budget)
        self._adopted, self._files_before = False, None
        self.stages.stop()
        self._emit(BecameLeader(self.status(), lease.node, lease.epoch))

    def _step_down(self) -> None:
        self.leadership.step_down(self.planner)
        self._stepped_down()

    def _stepped_down(self) -> None:
        self.publisher.in_doubt.clear()  # outcomes unknown for good: neither repeated nor counted
        self.planner = Planner(self.settings.tick_budget)
        self.stages.stop()
        self._emit(SteppedDown(self.status()))

    def _backend_failed(self, exc: BackendError) -> None:
        if self.outage.failed(exc):
            self._emit(BackendDown(self.status()))

    def _storage_failed(self, exc: StorageFailed) -> None:
        """Gone or damaged storage is no outage to wait out: stop leading, say why, stop."""
        self._step_down()
        self.outage.storage_failed(exc)
        self._emit(BackendDown(self.status()))

    def _backend_recovered(self) -> None:
        if self.outage.recovered():
            self._emit(BackendUp(self.status()))


def _delay(scheduler: Scheduler) -> float:
    """Seconds the loop sleeps: until the next due time, lease renewal or standby attempt,
    read of the feed, removed entry's expiry, deadline or history read (half the watchdog
    interval at most); none while an adoption in stages goes on or the backend is retried."""
    mono = scheduler.clock.monotonic()
    if scheduler.outage.retry_at > mono:
        return scheduler.outage.retry_at - mono
    deadlines = [scheduler.leadership.wake_at, scheduler.runtime.next_at]
    if scheduler.lease is not None and scheduler.stages.staging is not None:
        deadlines.append(mono)  # the next stage at once, due slots published in between
    if scheduler.lease is not None:
        for wake in (
            scheduler.planner.next_wake(),
            scheduler.adoption.removed.next_expiry(),
            scheduler.deadlines.next_at(),
        ):
            if wake is not None:
                deadlines.append(mono + (wake - scheduler.clock.now()).total_seconds())
        if (read := scheduler.health.next_read()) is not None:
            deadlines.append(read)
    if scheduler.settings.watchdog_interval:
        deadlines.append(mono + scheduler.settings.watchdog_interval / 2)
    return max(0.0, min(deadlines) - mono)


def _due(planner: Planner, clock: Clock) -> bool:
    """Whether a run is due: the feed is read again first, so that a removal acknowledged
    before this round publishes nothing."""
    wake = planner.next_wake()
    return wake is not None and wake <= clock.now()


def run_for(scheduler: Scheduler, seconds: float) -> None:
    """Drive the loop for a span of (possibly fake) time; used by tests and benchmarks."""
    end = scheduler.clock.monotonic() + seconds
    while scheduler.clock.monotonic() < end:
        delay = scheduler.step()
        scheduler.clock.sleep(min(delay, end - scheduler.clock.monotonic()), scheduler.wake)
        scheduler.wake.clear()
