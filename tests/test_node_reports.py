"""Node records written by the loop (beatd.node_reports): at every renewal or standby attempt,
kept 3 x TTL by the backend's clock; the leader flags another node's timezone database as it
flags configuration drift. Two schedulers on one SQLite file, driven by a FakeClock."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from beatd.backends.base import Backend
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.node_reports import NodeIdentity
from beatd.nodes import NodeRecord, NodeRole, TzDatabase
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = 3.0
TICK = Entry(name="tick", task="t.tick", schedule=IntervalSchedule(timedelta(seconds=1)))
CONFIG = Config({"tick": TICK})


def identity(tz: str, source: str = "system", api: str | None = None) -> NodeIdentity:
    return NodeIdentity("9.9.9", TzDatabase(tz, source, ""), api)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_db(tmp_path: Path, clock: FakeClock) -> Callable[[], SQLiteBackend]:
    return lambda: SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())


def node(backend: Backend, clock: FakeClock, name: str, who: NodeIdentity) -> Scheduler:
    settings = SchedulerSettings(node=name, lease_ttl=TTL)
    return Scheduler(backend, lambda: CONFIG, clock, settings, identity=who)


def test_each_node_writes_its_record_with_its_role(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    leader = node(open_db(), clock, "a", identity("2025b", api="127.0.0.1:9479"))
    standby = node(open_db(), clock, "b", identity("2025b", "tzdata"))
    leader.step()
    standby.step()
    records = open_db().nodes()
    assert [r.last_seen for r in records] == [T0, T0]
    fingerprint = CONFIG.fingerprint
    assert [dataclasses.replace(r, last_seen=None) for r in records] == [
        NodeRecord("a", NodeRole.LEADER, "9.9.9", fingerprint, "2025b", "system", "127.0.0.1:9479"),
        NodeRecord("b", NodeRole.STANDBY, "9.9.9", fingerprint, "2025b", "tzdata", None),
    ]


def test_the_leader_flags_a_node_with_another_timezone_database_once_per_change(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="beatd.scheduler")
    leader = node(open_db(), clock, "a", identity("2025b"))
    standby = node(open_db(), clock, "b", identity("2026a", "tzdata"))
    leader.step()
    standby.step()
    run_for(leader, TTL)  # its renewals read the standby's record
    assert leader.totals.tz_drift and not standby.totals.tz_drift
    drift = (
        "timezone database drift: leader node=a has tz=2025b (system), other nodes have "
        "b=2026a; nodes with other tz data compute other slots for local-time entries: update "
        "tzdata on every node together and restart them"
    )
    assert [r.getMessage() for r in caplog.records].count(drift) == 1
    # the standby stops: its record outlives it by 3 x TTL, then the drift is over
    run_for(leader, 3 * TTL + TTL)
    assert [r.node for r in open_db().nodes()] == ["a"]
    assert not leader.totals.tz_drift
    assert "timezone database drift over: every node has tz=2025b" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_record_that_cannot_be_written_is_counted_and_leading_goes_on(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    plan = FaultPlan()
    plan.inject("write_node", Fault.FAIL_BEFORE_WRITE, times=2)
    backend = cast(Backend, FaultyBackend(open_db(), plan))
    leader = node(backend, clock, "a", identity("2025b"))
    run_for(leader, TTL)
    assert leader.is_leader and leader.totals.node_records_failed == 2
    assert leader.totals.backend_up
    said = [r.getMessage() for r in caplog.records if "node record" in r.getMessage()]
    assert said == [
        "cannot write the node record node=a (leading goes on): injected fault: write_node "
        "failed before writing; nothing was written"
    ]
    assert [r.node for r in open_db().nodes()] == ["a"]  # the third renewal wrote it
    assert dict(leader.counts.items())["tick"][1] >= 1  # published all along
