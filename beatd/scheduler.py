"""The daemon loop: wires the clock, the leader lease, the backend and the pure core.

`Scheduler.step()` does one round (reload, leadership, publish) and says how long to sleep: until
the next due time, the next lease renewal or standby attempt, or half the watchdog interval,
whichever is first. Signals and schedule-file changes wake it early. There is no polling.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import TypeVar

from beatd import celery_protocol
from beatd.backends.base import (
    Backend,
    BeatdQueue,
    CeleryQueue,
    Lease,
    Outgoing,
    StateWrite,
    StorageFailed,
)
from beatd.clock import Clock
from beatd.config import Config, Entry
from beatd.core import Decision, Planner, RemovedEntries, RunCounts
from beatd.dataloss import DataLossRecovery
from beatd.durations import format_duration
from beatd.errors import BackendError, ConfigError, LeaseLost, NotApplied
from beatd.message import RunMessage, RunTemplate, format_slot, format_time, run_id
from beatd.state import EntryState

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        return self.lease_ttl / 3

    @property
    def standby_interval(self) -> float:
        return min(1.0, self.lease_ttl / 3)


@dataclass
class Totals:
    """Running counts since start, for `beatd status` and metrics (runs: see `RunCounts`)."""

    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload_ok: bool = True
    leader_changes: int = 0
    backend_up: bool = True
    clock_skew: float = 0.0  # our clock minus the backend's, at the last check
    config_drift: bool = False  # the leader runs a configuration that differs from ours
    data_lost: int = 0  # times the backend was found to have lost beatd's data


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        load_config: Callable[[], Config],
        clock: Clock,
        settings: SchedulerSettings | None = None,
        *,
        config: Config | None = None,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.settings = settings or SchedulerSettings()
        self._load_config = load_config
        self.config = config if config is not None else load_config()
        self.planner = Planner(self.settings.tick_budget)
        self.removed = RemovedEntries(timedelta(seconds=self.settings.removed_grace))
        self.lease: Lease | None = None
        # the highest fencing epoch this node has seen: a take never starts at or below it, even
        # when the backend lost its data (Redis restarted empty)
        self.epoch_seen = 0
        self.totals = Totals()
        self.counts = RunCounts()
        self.observe_delay: Callable[[float], None] = lambda _seconds: None
        self.wake = threading.Event()
        self._reload_requested = False
        self._lease_deadline = 0.0  # monotonic: stop publishing past this without a renewal
        self._renew_at = 0.0
        self._acquire_at = 0.0
        self._retry_at = 0.0  # monotonic: backoff after a backend error
        self._backoff = 0.0
        self._backend_down = False
        self._adopted = False
        self._announced = ""
        self._name_taken = False  # the leader runs under our node name: said once
        self._templates: dict[str, tuple[Entry, RunTemplate]] = {}
        # decisions whose commit's outcome was lost (a timeout after sending): counted once the
        # persisted state shows whether they were applied
        self._in_doubt: dict[str, tuple[Decision, datetime]] = {}
        self.on_event: Callable[[str], None] = lambda _event: None
        self.data_loss = DataLossRecovery(backend, self.settings.lease_ttl)

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

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
            self.on_event("step")
            self.clock.sleep(delay, self.wake)
            self.wake.clear()
        self.shutdown()

    def shutdown(self) -> None:
        if self.lease is not None:
            try:
                self.backend.release_lease(self.lease)
                log.info("released the lease node=%s epoch=%d", self.lease.node, self.lease.epoch)
            except BackendError as exc:
                log.warning("could not release the lease (it will expire): %s", exc)
            self.lease = None

    def step(self) -> float:
        """One round; returns the seconds to sleep before the next."""
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        mono = self.clock.monotonic()
        if mono >= self._retry_at:
            try:
                used_backend = self._lead(mono)
                if self.lease is not None and not self._adopted:
                    try:
                        self._adopt()
                    except LeaseLost as exc:
                        log.warning("%s; now standby", exc)
                        self._step_down()
                    used_backend = True
                if self.lease is not None and self._adopted:
                    used_backend |= self._forget_expired_removals()
                if self.lease is not None:
                    used_backend |= self._publish()
                if used_backend:
                    self._backend_recovered()
            except StorageFailed as exc:
                self._storage_failed(exc)
                raise
            except BackendError as exc:
                self._backend_failed(exc)
        return self._delay()

    def _delay(self) -> float:
        mono = self.clock.monotonic()
        if self._retry_at > mono:
            return self._retry_at - mono
        deadlines = []
        if self.lease is not None:
            deadlines.append(self._renew_at)
            for wake in (self.planner.next_wake(), self.removed.next_expiry()):
                if wake is not None:
                    deadlines.append(mono + (wake - self.clock.now()).total_seconds())
        else:
            deadlines.append(self._acquire_at)
        if self.settings.watchdog_interval:
            deadlines.append(mono + self.settings.watchdog_interval / 2)
        return max(0.0, min(deadlines) - mono)

    # --- configuration -------------------------------------------------------------------

    def reload(self) -> bool:
        self.on_event("reloading")
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
            self.on_event("reload_failed")
            return False
        self.config = config
        self._templates.clear()
        self.totals.reloads_ok += 1
        self.totals.last_reload_ok = True
        self._adopted = False
        log.info("reloaded %d entries config=%s", len(config.entries), config.fingerprint)
        self.on_event("reloaded")
        return True

    def _adopt(self) -> None:
        """Bring the planner in line with the configuration and the persisted state.

        Entries new to the backend, or whose schedule changed, start from now; entries no
        longer configured are forgotten once removed for the grace (`RemovedEntries`). Retried
        at the next step if the backend fails.
        """
        assert self.lease is not None
        if self._announced != self.config.fingerprint:  # reloaded: tell standbys what we run
            held = self.backend.acquire_lease(
                self.settings.node,
                self.settings.lease_ttl,
                self.config.fingerprint,
                held=self.lease,
            )
            if held != self.lease:
                log.warning("lost the lease epoch=%d; now standby", self.lease.epoch)
                self._step_down()
                return
            self._announced = self.config.fingerprint
        states = self.backend.load_states()
        now = self.clock.now()
        if self.data_loss.pending:
            states = self._recover(states, now)
        baselines, _ = self.planner.load(self.config.entries, states, now)
        self._forget_removed([name for name in states if name not in self.config.entries], now)
        for batch in _chunks(iter(baselines), self.settings.batch_size):
            writes = [StateWrite(state, _horizon(states.get(state.entry))) for state in batch]
            rejected = self.backend.commit(self.lease, writes, [])
            if rejected:
                self._resync(rejected)
        self._resolve_doubts(states, list(self._in_doubt))
        self._adopted = True
        self.on_event("adopted")

    def _forget_removed(self, absent: list[str], now: datetime) -> None:
        """Forget the state of the entries in `absent` (persisted, not configured) that were
        removed at least the grace ago; keep the others' for now."""
        assert self.lease is not None
        kept_before = set(self.removed.absent)
        expired = self.removed.expired(absent, now, self.lease.epoch)
        grace = format_duration(self.removed.grace)
        if expired:
            self.backend.forget(self.lease, expired)
            self.removed.forgotten(expired)
            log.info(
                "forgot %d entries removed from the configuration for %s: %s",
                len(expired),
                grace,
                _some(expired),
            )
        newly = [name for name in self.removed.absent if name not in kept_before]
        if newly:
            log.info(
                "keeping the state of %d entries removed from the configuration for %s "
                "(--removed-grace): re-added in time, each resumes where it was: %s",
                len(newly),
                grace,
                _some(newly),
            )

    def _forget_expired_removals(self) -> bool:
        """Forget removed entries whose grace ran out since the adoption; True when the backend
        was asked."""
        expiry = self.removed.next_expiry()
        now = self.clock.now()
        if expiry is None or expiry > now:
            return False
        self._forget_removed(self.removed.absent, now)
        return True

    # --- leadership ----------------------------------------------------------------------

    def _lead(self, mono: float) -> bool:
        """Renew, acquire or give up the lease; True when the backend was asked."""
        ttl = self.settings.lease_ttl
        if self.lease is not None:
            if mono >= self._lease_deadline:
                log.warning(
                    "no lease renewal in time; stepping down node=%s epoch=%d",
                    self.lease.node,
                    self.lease.epoch,
                )
                self._step_down()
                return False
            if mono >= self._renew_at:
                if not self._clock_agrees():
                    self._step_down()
                    return True
                if self.backend.renew_lease(self.lease, ttl):
                    self.data_loss.seen_whole(self.clock.now(), mono)
                    self._lease_deadline = mono + ttl * 0.9
                    self._renew_at = mono + self.settings.renew_interval
                else:
                    log.warning("lost the lease epoch=%d; now standby", self.lease.epoch)
                    self._step_down()
                    self._check_data(mono)  # gone with the rest of Redis's data?
                return True
            return False
        if mono < self._acquire_at:
            return False
        self._acquire_at = mono + self.settings.standby_interval
        if not self._clock_agrees():
            return True
        if self._check_data(mono):  # before the take, which writes beatd's marker again
            return True
        lease = self.backend.acquire_lease(
            self.settings.node, ttl, self.config.fingerprint, min_epoch=self.epoch_seen
        )
        if lease is None:
            self._check_drift()
            return True
        self.epoch_seen = max(self.epoch_seen, lease.epoch)
        self.lease = lease
        self._announced = self.config.fingerprint
        self._lease_deadline = mono + ttl * 0.9
        self._renew_at = mono + self.settings.renew_interval
        self.totals.leader_changes += 1
        self.totals.config_drift = False
        log.info("became leader node=%s epoch=%d", lease.node, lease.epoch)
        self.planner = Planner(self.settings.tick_budget)
        self._adopted = False
        self.on_event("leader")
        return True

    def _check_data(self, mono: float) -> bool:
        """Did the backend lose its data? True when this node should leave the lease for now
        (it holds no positions to restore)."""
        leave = self.data_loss.check(self.epoch_seen, mono)
        self.totals.data_lost = self.data_loss.losses
        if leave:
            self._acquire_at = mono + self.settings.lease_ttl
        return leave

    def _recover(self, states: dict[str, EntryState], now: datetime) -> dict[str, EntryState]:
        """After a data loss: write back the positions this node holds; count the lost slots of
        the entries nobody held (see DataLossRecovery.recover)."""
        assert self.lease is not None
        entries, limit = self.config.entries, self.planner.walk_limit
        restore, lost = self.data_loss.recover(states, entries, now, limit)
        for batch in _chunks(iter(restore), self.settings.batch_size):
            self.backend.commit(self.lease, [StateWrite(p, None) for p in batch], [])
        for decision in lost:
            self._account(decision, now)
        return {**states, **{p.entry: p for p in restore}}

    def _clock_agrees(self) -> bool:
        """Compare our wall clock with the backend's; a node far off must not lead."""
        before = self.clock.now().timestamp()
        server = self.backend.server_time()
        after = self.clock.now().timestamp()
        skew = (before + after) / 2 - server
        was_ok = abs(self.totals.clock_skew) <= self.settings.max_clock_skew
        self.totals.clock_skew = skew
        if abs(skew) <= self.settings.max_clock_skew:
            if not was_ok:
                log.info("clock agrees with the backend again (skew %.3f s)", skew)
            return True
        if was_ok:
            log.error(
                "refusing leadership: this node's clock is %+.3f s off the backend's (limit "
                "%.1f s); a leader with a wrong clock would publish runs at the wrong time. "
                "Fix time synchronisation (chrony, systemd-timesyncd) on node=%s",
                skew,
                self.settings.max_clock_skew,
                self.settings.node,
            )
        return False

    def _check_drift(self) -> None:
        """A standby whose configuration differs from the leader's says so, once per change;
        one whose node name the leader uses says that once."""
        leader = self.backend.leader()
        if leader is not None:
            log.debug(
                "standby node=%s: lease held by node=%s epoch=%d",
                self.settings.node,
                leader.node,
                leader.epoch,
            )
            self.epoch_seen = max(self.epoch_seen, leader.epoch)
            self.data_loss.seen_whole(self.clock.now(), self.clock.monotonic())
        name_taken = leader is not None and leader.node == self.settings.node
        if name_taken and not self._name_taken and leader is not None:
            log.warning(
                "node name is taken: another process holds the lease as node=%s epoch=%d; this "
                "one waits as a standby (give each `beatd run` its own --node; a lease left by "
                "a process that died expires after its TTL)",
                leader.node,
                leader.epoch,
            )
        self._name_taken = name_taken
        drift = bool(
            leader and leader.config_hash and leader.config_hash != self.config.fingerprint
        )
        if drift and not self.totals.config_drift and leader is not None:
            log.warning(
                "configuration drift: leader node=%s runs config=%s, this standby has config=%s; "
                "deploy the same schedule files to every node",
                leader.node,
                leader.config_hash,
                self.config.fingerprint,
            )
        self.totals.config_drift = drift

    def _step_down(self) -> None:
        if self.lease is not None:
            self.data_loss.keep(self.planner, self.clock.monotonic())
        self.lease = None
        self._in_doubt.clear()  # outcomes unknown for good: runs neither repeated nor counted
        self.planner = Planner(self.settings.tick_budget)
        self._acquire_at = self.clock.monotonic() + self.settings.standby_interval
        self.on_event("standby")

    # --- publishing ----------------------------------------------------------------------

    def _publish(self) -> bool:
        """Publish what is due, a batch at a time, with one batch's commit in flight: the next
        batch is decided while the backend works on the last, and the first runs of a burst go
        out before the rest is decided. True when the backend was asked."""
        assert self.lease is not None
        lease = self.lease
        before = self.counts.totals()
        sent: _Sent | None = None  # committed, outcome not yet read
        batch: list[Decision] = []  # decided, not yet sent
        asked = False
        try:
            for batch in _chunks(
                self.planner.decide_due(self.clock.now()), self.settings.batch_size
            ):
                asked = True
                published_at = self.clock.now()
                writes = [StateWrite(d.state, _horizon(d.previous)) for d in batch]
                messages = self._messages(batch, published_at)
                if sent is not None:
                    last, sent = sent, None
                    self._conclude(last)
                sent = _Sent(batch, published_at, self.backend.send_commit(lease, writes, messages))
                batch = []
            if sent is not None:
                last, sent = sent, None
                self._conclude(last)
        except BackendError as exc:
            self.planner.release(batch)
            if not isinstance(exc, LeaseLost):
                raise
            log.warning("%s; now standby", exc)
            self._step_down()
        except BaseException:
            if sent is not None:  # a fault of ours while deciding: still read what was sent
                with suppress(BackendError):
                    self._conclude(sent)
            raise
        self._log_step(before)
        return asked

    def _conclude(self, sent: _Sent) -> None:
        """Wait for a batch's commit, then move its entries on (or resync the rejected)."""
        try:
            rejected = sent.outcome()
        except (LeaseLost, NotApplied):
            self.planner.release(sent.batch)  # refused: nothing was written
            raise
        except BackendError:
            # Maybe applied, maybe not: the same slots are decided again, and the backend's
            # compare-and-set refuses them if the lost commit was applied after all.
            for decision in sent.batch:
                self._in_doubt[decision.entry.name] = (decision, sent.published_at)
            self.planner.release(sent.batch)
            raise
        done = [d for d in sent.batch if d.entry.name not in rejected] if rejected else sent.batch
        self.planner.settle(done)
        for decision in done:
            self._account(decision, sent.published_at)
        if self._in_doubt:
            for decision in done:
                self._in_doubt.pop(decision.entry.name, None)
        if rejected:
            try:
                self._resync(rejected)
            except BackendError:
                self._adopted = False  # the rejected entries are read again when adopting
                raise

    def _log_step(self, before: dict[str, int]) -> None:
        after = self.counts.totals()
        if after["due"] == before["due"]:
            return
        nxt = self.planner.next_wake()
        summary = {
            "published": after["published"] - before["published"],
            "late": after["late"] - before["late"],
            "missed": after["due"] - after["published"] - before["due"] + before["published"],
            "next_due": format_slot(nxt) if nxt else "never",
        }
        log.info(
            "published=%(published)d late=%(late)d missed=%(missed)d next_due=%(next_due)s",
            summary,
            extra=summary,  # as fields of their own, for --log-format json
        )

    def _messages(self, batch: list[Decision], published_at: datetime) -> list[Outgoing]:
        stamp = format_time(published_at)
        messages: list[Outgoing] = []
        for decision in batch:
            entry = decision.entry
            if not decision.runs:
                continue
            if entry.protocol == "celery":
                messages += self._celery_messages(decision, published_at)
                continue
            template = self._template(entry)
            expires = format_time(published_at + entry.expires) if entry.expires else None
            destination = _beatd_queue(entry.queue, entry.priority)
            for run in decision.runs:
                slot = format_slot(run.slot)
                body = template.render(slot, stamp, expires)
                messages.append(
                    Outgoing(entry.name, run_id(entry.name, run.slot), destination, body)
                )
        return messages

    def _template(self, entry: Entry) -> RunTemplate:
        """The entry's message template, made at its first run and kept while it is loaded."""
        known = self._templates.get(entry.name)
        if known is None or known[0] is not entry:
            template = RunTemplate(
                entry.name,
                entry.task,
                entry.queue,
                entry.args,
                entry.kwargs,
                entry.priority,
                entry.headers,
            )
            known = self._templates[entry.name] = (entry, template)
        return known[1]

    def _celery_messages(self, decision: Decision, published_at: datetime) -> Iterator[Outgoing]:
        entry = decision.entry
        destination = _celery_queue(entry.queue, entry.priority)
        for run in decision.runs:
            message = RunMessage(
                id=run_id(entry.name, run.slot),
                task=entry.task,
                entry=entry.name,
                scheduled_for=run.slot,
                published_at=published_at,
                queue=entry.queue,
                args=entry.args,
                kwargs=entry.kwargs,
                expires_at=published_at + entry.expires if entry.expires else None,
                priority=entry.priority,
                headers=entry.headers,
            )
            body = celery_protocol.encode(message, origin=f"beatd@{self.settings.node}")
            yield Outgoing(entry.name, message.id, destination, body)

    def _account(self, decision: Decision, published_at: datetime) -> None:
        self.counts.add(decision)
        for run in decision.runs:
            self.observe_delay((published_at - run.due).total_seconds())
        if not log.isEnabledFor(logging.DEBUG):
            return
        for run in decision.runs:
            fields = {
                "entry": run.entry.name,
                "slot": format_slot(run.slot),
                "due": run.due.isoformat(),
                "late": run.late,
            }
            log.debug(
                "publish entry=%(entry)s slot=%(slot)s due=%(due)s late=%(late)s",
                fields,
                extra=fields,
            )
        for reason, count in decision.missed.items():
            fields = {"entry": decision.entry.name, "reason": str(reason), "count": count}
            log.debug(
                "missed entry=%(entry)s reason=%(reason)s count=%(count)d", fields, extra=fields
            )

    def _resync(self, names: set[str]) -> None:
        """Entries whose persisted state was not what a decision expected: continue from the
        backend's state, or adopt the configuration again where there is none to continue."""
        states = self.backend.load_states()
        ours = {name for name in names if name in self._in_doubt}  # a lost commit of our own
        self._resolve_doubts(states, names)
        for name in sorted(names):
            if name not in ours:
                log.warning("entry=%s: persisted state differs from ours; resyncing", name)
            if not self.planner.resync(states.get(name), name):
                self._adopted = False

    def _resolve_doubts(self, states: Mapping[str, EntryState], names: Iterable[str]) -> None:
        """Count the runs of a lost commit that the backend shows applied; forget the rest."""
        for name in names:
            doubt = self._in_doubt.pop(name, None)
            if doubt is not None and states.get(name) == doubt[0].state:
                self._account(*doubt)

    # --- backend health ------------------------------------------------------------------

    def _backend_failed(self, exc: BackendError) -> None:
        self._backoff = min(max(self._backoff * 2, 0.1), self.settings.max_backoff)
        self._retry_at = self.clock.monotonic() + self._backoff
        self.totals.backend_up = False
        if not self._backend_down:
            log.error("backend %s unavailable, retrying with backoff: %s", self.backend.url, exc)
            self._backend_down = True
            self.on_event("backend_down")
        else:
            log.debug(
                "backend %s still unavailable; next try in %.1f s", self.backend.url, self._backoff
            )

    def _storage_failed(self, exc: StorageFailed) -> None:
        """Gone or damaged storage is no outage to wait out: stop leading, say why, stop."""
        self._step_down()
        self.totals.backend_up = False
        log.error(
            "storage failed, stepping down and exiting with status %d: %s", exc.exit_status, exc
        )
        self.on_event("backend_down")

    def _backend_recovered(self) -> None:
        self._backoff = 0.0
        self.totals.backend_up = True
        if self._backend_down:
            log.info("backend %s reachable again", self.backend.url)
            self._backend_down = False
            self.on_event("backend_up")


@dataclass(frozen=True, slots=True)
class _Sent:
    batch: list[Decision]
    published_at: datetime
    outcome: Callable[[], set[str]]


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(items, size)):
        yield batch


def _some(names: list[str], shown: int = 5) -> str:
    """The first few of many names, for a log line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "entries=" + ",".join(names[:shown]) + more


def _horizon(state: EntryState | None) -> datetime | None:
    return state.last_slot if state is not None else None


# one destination per queue and priority, made once: a frozen dataclass costs about a microsecond
# to create, which a burst of many entries would pay per entry
_beatd_queue = lru_cache(maxsize=4096)(BeatdQueue)
_celery_queue = lru_cache(maxsize=4096)(CeleryQueue)


def run_for(scheduler: Scheduler, seconds: float) -> None:
    """Drive the loop for a span of (possibly fake) time; used by tests and benchmarks."""
    end = scheduler.clock.monotonic() + seconds
    while scheduler.clock.monotonic() < end:
        delay = scheduler.step()
        scheduler.clock.sleep(min(delay, end - scheduler.clock.monotonic()), scheduler.wake)
        scheduler.wake.clear()
