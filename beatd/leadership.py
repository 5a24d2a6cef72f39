"""Whether this node leads: acquire, renew and give up the lease, and refuse it when unsafe.

`Leadership.poll(mono)` is asked at every step and answers with a `Role`: keep leading, stay
standby, or the change that just happened. It is asked again no later than `wake_at`. A node
refuses to lead while its clock is off the backend's by more than the limit, and leaves the
lease for a TTL when the backend lost beatd's data and this node holds no positions to restore.
A standby says once when the leader runs another configuration or uses its node name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from beatd.backends.base import Lease, LeaseStore
from beatd.clock import Clock
from beatd.core import Planner
from beatd.dataloss import DataLossRecovery
from beatd.errors import BackendError, LeaseLost
from beatd.events import Totals

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")


class Role(Enum):
    LEADER = "leader"  # held, and renewed when due: publish
    STANDBY = "standby"  # not held: nothing to publish
    BECAME_LEADER = "became_leader"  # taken at this poll: adopt, then publish
    STEPPED_DOWN = "stepped_down"  # given up at this poll: forget what was planned


@dataclass(frozen=True, slots=True)
class LeadershipSettings:
    node: str
    lease_ttl: float
    max_clock_skew: float

    @property
    def renew_interval(self) -> float:
        return self.lease_ttl / 3

    @property
    def standby_interval(self) -> float:
        return min(1.0, self.lease_ttl / 3)


@dataclass(frozen=True, slots=True)
class Poll:
    role: Role
    asked: bool  # the backend was asked (and answered): it is up


class Leadership:
    def __init__(
        self,
        leases: LeaseStore,
        clock: Clock,
        settings: LeadershipSettings,
        totals: Totals,
        data_loss: DataLossRecovery,
    ) -> None:
        self.leases = leases
        self.clock = clock
        self.settings = settings
        self.totals = totals
        self.data_loss = data_loss
        self.lease: Lease | None = None
        # the highest fencing epoch this node has seen: a take never starts at or below it, even
        # when the backend lost its data (Redis restarted empty)
        self.epoch_seen = 0
        self._deadline = 0.0  # monotonic: stop publishing past this without a renewal
        self._renew_at = 0.0
        self._acquire_at = 0.0
        self._announced = ""  # the configuration the lease says this leader runs
        self._name_taken = False  # the leader runs under our node name: said once

    @property
    def wake_at(self) -> float:
        """The monotonic time of the next renewal (leader) or attempt to take (standby)."""
        return self._renew_at if self.lease is not None else self._acquire_at

    def poll(self, mono: float, fingerprint: str, planner: Planner) -> Poll:
        """Renew, acquire or give up the lease. `fingerprint` is the configuration this node
        runs; `planner` holds the positions kept on stepping down, in case the backend lost
        them."""
        if self.lease is not None:
            return self._poll_leader(mono, planner)
        if mono < self._acquire_at:
            return Poll(Role.STANDBY, asked=False)
        self._acquire_at = mono + self.settings.standby_interval
        if not self._clock_agrees():
            return Poll(Role.STANDBY, asked=True)
        if self._check_data(mono):  # before the take, which writes beatd's marker again
            return Poll(Role.STANDBY, asked=True)
        lease = self.leases.acquire_lease(
            self.settings.node, self.settings.lease_ttl, fingerprint, min_epoch=self.epoch_seen
        )
        if lease is None:
            self._check_drift(fingerprint)
            return Poll(Role.STANDBY, asked=True)
        self.epoch_seen = max(self.epoch_seen, lease.epoch)
        self.lease = lease
        self._announced = fingerprint
        self._held_until_renewal(mono)
        self.totals.leader_changes += 1
        self.totals.config_drift = False
        log.info("became leader node=%s epoch=%d", lease.node, lease.epoch)
        return Poll(Role.BECAME_LEADER, asked=True)

    def _poll_leader(self, mono: float, planner: Planner) -> Poll:
        assert self.lease is not None
        if mono >= self._deadline:
            log.warning(
                "no lease renewal in time; stepping down node=%s epoch=%d",
                self.lease.node,
                self.lease.epoch,
            )
            self.step_down(planner)
            return Poll(Role.STEPPED_DOWN, asked=False)
        if mono < self._renew_at:
            return Poll(Role.LEADER, asked=False)
        if not self._clock_agrees():
            self.step_down(planner)
            return Poll(Role.STEPPED_DOWN, asked=True)
        if self.leases.renew_lease(self.lease, self.settings.lease_ttl):
            self.data_loss.seen_whole(self.clock.now(), mono)
            self._held_until_renewal(mono)
            return Poll(Role.LEADER, asked=True)
        log.warning("lost the lease epoch=%d; now standby", self.lease.epoch)
        self.step_down(planner)
        self._check_data(mono)  # gone with the rest of Redis's data?
        return Poll(Role.STEPPED_DOWN, asked=True)

    def keep_alive(self, *, now: bool = False) -> None:
        """Renew the lease if a renewal is due (or `now`: before work that may take long and
        cannot renew within, such as the collector's pass after an adoption), from within a
        long step (adopting or reading a great many entries), so that it does not expire under
        work in proportion to the entries; LeaseLost when it is gone (the caller steps down)."""
        lease = self.lease
        mono = self.clock.monotonic()
        if lease is None or (mono < self._renew_at and not now):
            return
        if mono >= self._deadline or not self.leases.renew_lease(lease, self.settings.lease_ttl):
            raise LeaseLost(
                f"lease epoch {lease.epoch} of {lease.node} could not be renewed in time during "
                "work in proportion to the entries (adopting or reading them)"
            )
        self.data_loss.seen_whole(self.clock.now(), mono)
        self._held_until_renewal(mono)

    def _held_until_renewal(self, mono: float) -> None:
        self._deadline = mono + self.settings.lease_ttl * 0.9
        self._renew_at = mono + self.settings.renew_interval

    def announce(self, fingerprint: str, planner: Planner) -> bool:
        """Say in the lease which configuration this leader now runs (after a reload), so that
        standbys can compare; False when the lease turned out lost (stepped down)."""
        assert self.lease is not None
        if self._announced == fingerprint:
            return True
        held = self.leases.acquire_lease(
            self.settings.node, self.settings.lease_ttl, fingerprint, held=self.lease
        )
        if held != self.lease:
            log.warning("lost the lease epoch=%d; now standby", self.lease.epoch)
            self.step_down(planner)
            return False
        self._announced = fingerprint
        return True

    def step_down(self, planner: Planner) -> None:
        """Stop leading at once (the lease is left to expire); try again after a while."""
        if self.lease is not None:
            self.data_loss.keep(planner, self.clock.monotonic())
        self.lease = None
        self._acquire_at = self.clock.monotonic() + self.settings.standby_interval

    def release(self) -> None:
        """Give the lease back (stopping), so that a standby takes over at once."""
        if self.lease is None:
            return
        try:
            self.leases.release_lease(self.lease)
            log.info("released the lease node=%s epoch=%d", self.lease.node, self.lease.epoch)
        except BackendError as exc:
            log.warning("could not release the lease (it will expire): %s", exc)
        self.lease = None

    def _check_data(self, mono: float) -> bool:
        """Did the backend lose its data? True when this node should leave the lease for now
        (it holds no positions to restore)."""
        leave = self.data_loss.check(self.epoch_seen, mono)
        self.totals.data_lost = self.data_loss.losses
        if leave:
            self._acquire_at = mono + self.settings.lease_ttl
        return leave

    def _clock_agrees(self) -> bool:
        """Compare our wall clock with the backend's; a node far off must not lead."""
        before = self.clock.now().timestamp()
        server = self.leases.server_time()
        after = self.clock.now().timestamp()
        skew = (before + after) / 2 - server
        limit = self.settings.max_clock_skew
        was_ok = abs(self.totals.clock_skew) <= limit
        self.totals.clock_skew = skew
        if abs(skew) <= limit:
            if not was_ok:
                log.info("clock agrees with the backend again (skew %.3f s)", skew)
            return True
        if was_ok:
            log.error(
                "refusing leadership: this node's clock is %+.3f s off the backend's (limit "
                "%.1f s); a leader with a wrong clock would publish runs at the wrong time. "
                "Fix time synchronisation (chrony, systemd-timesyncd) on node=%s",
                skew,
                limit,
                self.settings.node,
            )
        return False

    def _check_drift(self, fingerprint: str) -> None:
        """A standby whose configuration differs from the leader's says so, once per change;
        one whose node name the leader uses says that once."""
        leader = self.leases.leader()
        node = self.settings.node
        if leader is None:
            self._name_taken = False
            self.totals.config_drift = False
            return
        log.debug(
            "standby node=%s: lease held by node=%s epoch=%d", node, leader.node, leader.epoch
        )
        self.epoch_seen = max(self.epoch_seen, leader.epoch)
        self.data_loss.seen_whole(self.clock.now(), self.clock.monotonic())
        name_taken = leader.node == node
        if name_taken and not self._name_taken:
            log.warning(
                "node name is taken: another process holds the lease as node=%s epoch=%d; this "
                "one waits as a standby (give each `beatd run` its own --node; a lease left by "
                "a process that died expires after its TTL)",
                leader.node,
                leader.epoch,
            )
        self._name_taken = name_taken
        drift = bool(leader.config_hash and leader.config_hash != fingerprint)
        if drift and not self.totals.config_drift:
            log.warning(
                "configuration drift: leader node=%s runs config=%s, this standby has config=%s; "
                "deploy the same schedule files to every node",
                leader.node,
                leader.config_hash,
                fingerprint,
            )
        self.totals.config_drift = drift
