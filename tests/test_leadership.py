"""`Leadership` on its own: a fake clock and a tiny lease store that says what it was asked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from beatd.backends.base import LeaderInfo, Lease
from beatd.clock import FakeClock
from beatd.core import Planner
from beatd.dataloss import DataLossRecovery
from beatd.events import Totals
from beatd.leadership import Leadership, LeadershipSettings, Poll, Role

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class Leases:
    """One lease, held by `holder` (None: free), on a clock `skew` seconds off ours."""

    url = "fake://"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.skew = 0.0
        self.holder: LeaderInfo | None = None
        self.renews = True
        self.asked: list[str] = []
        self.min_epochs: list[int] = []

    def server_time(self) -> float:
        self.asked.append("server_time")
        return self.clock.now().timestamp() - self.skew

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        self.asked.append("acquire_lease")
        if held is not None:
            return held if self.renews else None
        self.min_epochs.append(min_epoch)
        if self.holder is not None:
            return None
        return Lease(node, "token", max(min_epoch, 0) + 1)

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        self.asked.append("renew_lease")
        return self.renews

    def release_lease(self, lease: Lease) -> None:
        self.asked.append("release_lease")

    def leader(self) -> LeaderInfo | None:
        self.asked.append("leader")
        return self.holder


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def leases(clock: FakeClock) -> Leases:
    return Leases(clock)


def leadership(leases: Leases, clock: FakeClock, node: str = "a") -> Leadership:
    settings = LeadershipSettings(node=node, lease_ttl=9.0, max_clock_skew=1.0)
    data_loss = DataLossRecovery(leases, settings.lease_ttl)  # type: ignore[arg-type]
    return Leadership(leases, clock, settings, Totals(), data_loss)


def poll(lead: Leadership, clock: FakeClock) -> Poll:
    return lead.poll(clock.monotonic(), "config-1", Planner())


def test_a_free_lease_is_taken_then_renewed_every_third_of_its_ttl(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock)
    assert poll(lead, clock) == Poll(Role.BECAME_LEADER, asked=True)
    assert lead.lease == Lease("a", "token", 1)
    assert lead.wake_at == clock.monotonic() + 3.0
    clock.advance(2.9)
    leases.asked.clear()
    assert poll(lead, clock) == Poll(Role.LEADER, asked=False)  # not yet due: nothing asked
    assert leases.asked == []
    clock.advance(0.1)
    assert poll(lead, clock) == Poll(Role.LEADER, asked=True)
    assert leases.asked == ["server_time", "renew_lease"]
    assert lead.totals.leader_changes == 1


def test_a_refused_renewal_steps_down_and_waits_before_trying_again(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock)
    poll(lead, clock)
    clock.advance(3)
    leases.renews = False
    assert poll(lead, clock) == Poll(Role.STEPPED_DOWN, asked=True)
    assert lead.lease is None
    assert lead.wake_at == clock.monotonic() + 1.0  # standbys try once a second
    assert poll(lead, clock) == Poll(Role.STANDBY, asked=False)


def test_no_renewal_in_time_steps_down_without_asking_the_backend(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock)
    poll(lead, clock)
    clock.advance(9 * 0.9)  # the renewals in between failed (a backend outage)
    leases.asked.clear()
    assert poll(lead, clock) == Poll(Role.STEPPED_DOWN, asked=False)
    assert leases.asked == []


def test_a_clock_off_the_backends_refuses_leadership_until_it_agrees(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock)
    leases.skew = 5.0
    assert poll(lead, clock) == Poll(Role.STANDBY, asked=True)
    assert lead.totals.clock_skew == 5.0
    assert "acquire_lease" not in leases.asked
    leases.skew = 0.5
    clock.advance(1)
    assert poll(lead, clock) == Poll(Role.BECAME_LEADER, asked=True)


def test_a_standby_never_takes_an_epoch_at_or_below_the_highest_it_saw(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock, node="b")
    leases.holder = LeaderInfo("a", 7, 9.0, "config-2")
    assert poll(lead, clock) == Poll(Role.STANDBY, asked=True)
    assert lead.epoch_seen == 7
    assert lead.totals.config_drift  # the leader runs another configuration
    leases.holder = None  # the backend restarted empty: its epochs start over
    clock.advance(1)
    assert poll(lead, clock) == Poll(Role.BECAME_LEADER, asked=True)
    assert leases.min_epochs == [0, 7]
    assert lead.lease == Lease("b", "token", 8)
    assert not lead.totals.config_drift


def test_announcing_a_new_configuration_to_a_lost_lease_steps_down(
    leases: Leases, clock: FakeClock
) -> None:
    lead = leadership(leases, clock)
    poll(lead, clock)
    assert lead.announce("config-1", Planner())  # unchanged: nothing to say
    assert leases.asked.count("acquire_lease") == 1
    leases.renews = False
    assert not lead.announce("config-2", Planner())
    assert lead.lease is None


def test_release_gives_the_lease_back_once(leases: Leases, clock: FakeClock) -> None:
    lead = leadership(leases, clock)
    poll(lead, clock)
    lead.release()
    lead.release()
    assert leases.asked.count("release_lease") == 1
    assert lead.lease is None
