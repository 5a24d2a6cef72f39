"""The daemon loop on a fake clock against real SQLite files: nothing sleeps."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.backends.base import StateWrite, StorageFailed, to_micros
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.config import Config, ConfigError
from beatd.config.model import Entry, MissedPolicy
from beatd.errors import LeaseLost, NotApplied, Problem, TransientBackendError
from beatd.events import Event, Stepped
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import CronSchedule, IntervalSchedule
from beatd.state import EntryState

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


def every(name: str, seconds: int, **kw: object) -> Entry:
    schedule = IntervalSchedule(timedelta(seconds=seconds))
    return Entry(name=name, task="t.task", schedule=schedule, **kw)  # type: ignore[arg-type]


def config(*entries: Entry) -> Config:
    return Config({e.name: e for e in entries})


def published(backend: SQLiteBackend) -> list[dict]:
    db = backend._connection()
    return [json.loads(body) for (body,) in db.execute("SELECT body FROM message ORDER BY seq")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def open_db(tmp_path: Path, clock: FakeClock) -> Callable[[], SQLiteBackend]:
    return lambda: SQLiteBackend(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())


def scheduler(
    backend: SQLiteBackend, clock: FakeClock, cfg: Config, node: str = "a", ttl: float = 10
) -> Scheduler:
    return Scheduler(backend, lambda: cfg, clock, SchedulerSettings(node=node, lease_ttl=ttl))


def test_publishes_each_slot_once_with_the_documented_message(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    backend = open_db()
    entry = every("tick", 10, kwargs={"n": 1}, priority=7, expires=timedelta(seconds=30))
    beat = scheduler(backend, clock, config(entry))
    run_for(beat, 35)
    messages = published(backend)
    assert [m["id"] for m in messages] == [
        "tick@2026-03-01T12:00:10Z",
        "tick@2026-03-01T12:00:20Z",
        "tick@2026-03-01T12:00:30Z",
    ]
    first = messages[0]
    assert first == {
        "v": 1,
        "id": "tick@2026-03-01T12:00:10Z",
        "task": "t.task",
        "args": [],
        "kwargs": {"n": 1},
        "entry": "tick",
        "scheduled_for": "2026-03-01T12:00:10Z",
        "published_at": "2026-03-01T12:00:10.000Z",
        "expires_at": "2026-03-01T12:00:40.000Z",
        "queue": "default",
        "priority": 7,
        "headers": {},
        "attempt": 1,
        "kind": "scheduled",
    }
    assert beat.counts.get("tick") == {
        "due": 3,
        "published": 3,
        "late": 0,
        "missed_skipped": 0,
        "missed_beyond_catch_up": 0,
        "missed_disabled": 0,
        "missed_state_lost": 0,
        "missed_paused": 0,
        "missed_overlap": 0,
    }


def test_sleeps_until_the_next_due_time_or_lease_renewal(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    def beat(node: str, cfg: Config) -> Scheduler:  # the runtime entries' feed read rarely
        settings = SchedulerSettings(node=node, lease_ttl=30, entry_poll=60)
        return Scheduler(open_db(), lambda: cfg, clock, settings)

    assert beat("a", config(every("hourly", 3600))).step() == pytest.approx(10.0)  # renew
    quiet = beat("b", config(every("fast", 2)))
    quiet.step()  # standby: the lease is held by the first
    assert quiet.step() == pytest.approx(1.0)  # standbys try once a second
    clock.advance(1)
    feed = scheduler(open_db(), clock, config(every("hourly", 3600)), node="c", ttl=30)
    assert feed.step() == pytest.approx(0.2)  # the runtime entries' feed, read 5 times a second


def test_standby_takes_over_when_the_leader_stops_without_loss_or_repeat(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    cfg = config(every("tick", 1, missed=MissedPolicy.CATCH_UP, misfire_grace=timedelta(seconds=1)))
    leader = scheduler(open_db(), clock, cfg, "a", ttl=5)
    standby = scheduler(open_db(), clock, cfg, "b", ttl=5)
    for _ in range(10):  # both run side by side for 10 s
        leader.step()
        standby.step()
        clock.advance(1)
    assert leader.is_leader and not standby.is_leader
    # the leader dies (is never stepped again); the standby keeps trying once a second
    for _ in range(8):
        standby.step()
        clock.advance(1)
    assert standby.is_leader
    ids = [m["id"] for m in published(open_db())]
    assert len(ids) == len(set(ids)), "a slot was published twice"
    slots = sorted(datetime.fromisoformat(i.split("@")[1]) for i in ids)
    expected = [T0.replace(microsecond=0) + timedelta(seconds=k) for k in range(1, 18)]
    assert slots == expected
    # the lease lapsed at 12:00:13.5: the slots 10-12 of the gap came late, not lost
    assert standby.counts.get("tick") == {
        "due": 8,
        "published": 8,
        "late": 3,
        "missed_skipped": 0,
        "missed_beyond_catch_up": 0,
        "missed_disabled": 0,
        "missed_state_lost": 0,
        "missed_paused": 0,
        "missed_overlap": 0,
    }


def test_deposed_leader_publishes_nothing(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    cfg = config(every("tick", 1))
    paused = scheduler(open_db(), clock, cfg, "a", ttl=3)
    paused.step()
    assert paused.is_leader
    clock.advance(4)  # paused past its lease, say by SIGSTOP
    other = scheduler(open_db(), clock, cfg, "b", ttl=3)
    other.step()
    assert other.is_leader
    before = len(published(open_db()))
    # Wakes up believing it leads: its monotonic deadline has passed, so it steps down.
    paused.step()
    assert not paused.is_leader
    assert len(published(open_db())) == before


def test_broken_reload_keeps_the_last_good_config(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    good = config(every("tick", 10))
    loads: list[Config | ConfigError] = [good]

    def load() -> Config:
        result = loads[-1]
        if isinstance(result, ConfigError):
            raise result
        return result

    beat = Scheduler(open_db(), load, clock, SchedulerSettings(node="a"))
    run_for(beat, 15)
    loads.append(ConfigError([Problem("s.yaml", 3, 5, "bad", "tick", "every")]))
    beat.request_reload()
    run_for(beat, 10)
    assert beat.totals.reloads_failed == 1
    assert beat.config is good
    assert len(published(open_db())) == 2


def test_reload_adds_and_removes_entries(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    cfgs = [config(every("a", 10))]
    settings = SchedulerSettings(node="n", removed_grace=0)  # removed is forgotten at once
    beat = Scheduler(open_db(), lambda: cfgs[-1], clock, settings)
    run_for(beat, 15)
    cfgs.append(config(every("b", 10)))
    beat.request_reload()
    run_for(beat, 20)
    ids = [m["id"] for m in published(open_db())]
    assert ids == ["a@2026-03-01T12:00:10Z", "b@2026-03-01T12:00:20Z", "b@2026-03-01T12:00:30Z"]
    assert set(open_db().load_states()) == {"b"}


def reloading(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, first: Config, **settings: object
) -> tuple[Scheduler, Callable[[Config], None]]:
    """A scheduler and a function that reloads it with another configuration."""
    cfgs = [first]
    beat = Scheduler(
        open_db(),
        lambda: cfgs[-1],
        clock,
        SchedulerSettings(node="n", **settings),  # type: ignore[arg-type]
    )

    def reload(cfg: Config) -> None:
        cfgs.append(cfg)
        beat.request_reload()

    return beat, reload


CAUGHT_UP = ("0:30", "0:40", "0:50", "1:00")


def test_a_removal_undone_within_the_grace_resumes_under_its_missed_policy(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    tick = every("tick", 10, missed=MissedPolicy.CATCH_UP, misfire_grace=timedelta(seconds=1))
    other = every("other", 3600)
    beat, reload = reloading(open_db, clock, config(tick, other))
    run_for(beat, 25)  # 12:00:10 and 12:00:20 published
    reload(config(other))  # say, a file half written
    run_for(beat, 40)
    assert set(open_db().load_states()) == {"tick", "other"}  # kept for the grace
    reload(config(tick, other))
    run_for(beat, 1)
    ids = [m["id"] for m in published(open_db())]
    # caught up: the four slots that passed while it was removed, not only those from now on
    assert ids == [f"tick@2026-03-01T12:0{slot}Z" for slot in ("0:10", "0:20", *CAUGHT_UP)]
    assert beat.counts.get("tick")["published"] == 6


def test_a_removed_entry_is_forgotten_once_the_grace_is_over(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="beatd.scheduler")
    tick, other = every("tick", 10), every("other", 3600)
    beat, reload = reloading(open_db, clock, config(tick, other), removed_grace=60, entry_poll=3600)
    run_for(beat, 15)
    reload(config(other))
    run_for(beat, 59.5)  # removed at 12:00:15.5
    assert set(open_db().load_states()) == {"tick", "other"}
    delay = beat.step()
    assert delay == pytest.approx(
        0.5, abs=0.01
    )  # it wakes for the end of the grace, with no reload
    run_for(beat, 1)
    assert set(open_db().load_states()) == {"other"}
    assert [r.getMessage() for r in caplog.records if "removed" in r.getMessage()] == [
        "keeping the state of 1 entries removed from the configuration for 1m "
        "(--removed-grace): re-added in time, each resumes where it was: entries=tick",
        "forgot 1 entries removed from the configuration for 1m: entries=tick",
    ]
    reload(config(tick, other))  # too late: starts from now, history is not replayed
    run_for(beat, 10)
    assert [m["id"] for m in published(open_db())] == [
        "tick@2026-03-01T12:00:10Z",
        "tick@2026-03-01T12:01:20Z",
    ]


def test_a_new_leader_starts_the_grace_at_its_adoption(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    tick, other = every("tick", 10), every("other", 3600)
    first = Scheduler(
        open_db(), lambda: config(other), clock, SchedulerSettings("a", 5, removed_grace=60)
    )
    backend = open_db()
    lease = backend.acquire_lease("old", 5, "")
    assert lease is not None
    backend.commit(lease, [StateWrite(EntryState("tick", T0, T0, tick.identity), None)], [])
    clock.advance(5)  # the old leader's lease runs out
    run_for(first, 50)
    first.shutdown()
    second = Scheduler(
        open_db(), lambda: config(other), clock, SchedulerSettings("b", 5, removed_grace=60)
    )
    run_for(second, 30)  # 80 s since "a" first saw it absent, 30 s since "b" did
    assert set(open_db().load_states()) == {"tick", "other"}
    run_for(second, 31)
    assert set(open_db().load_states()) == {"other"}


class OpensReadOnly(SQLiteBackend):
    """A real SQLite backend whose connections, while `read_only_file` is set, open as they
    would on a file that cannot be written: every write fails."""

    read_only_file = False

    def _open(self) -> sqlite3.Connection:
        db = super()._open()
        if self.read_only_file:
            db.execute("PRAGMA query_only = 1")
        return db


def test_backend_errors_are_survived_and_retried(
    tmp_path: Path, open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    backend = OpensReadOnly(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, config(every("tick", 1, misfire_grace=timedelta(seconds=1))))
    run_for(beat, 3)
    backend.read_only_file = True
    backend.close()  # opened again, read-only
    run_for(beat, 5)
    assert beat.is_leader and not beat.totals.backend_up
    backend.read_only_file = False  # the file's mode fixed: the next attempt opens it again
    run_for(beat, 5)
    assert beat.totals.backend_up
    ids = [m["id"] for m in published(open_db())]
    # run_once: the slots 4-9 of the outage were missed, the newest (10) published late, at
    # the first retry after writes work again (12:00:11.133 on the backoff's schedule)
    assert [i.removeprefix("tick@2026-03-01T12:00:") for i in ids] == [
        *("01Z", "02Z", "03Z", "10Z", "11Z", "12Z", "13Z")
    ]
    assert beat.counts.get("tick") == {
        "due": 13,
        "published": 7,
        "late": 1,
        "missed_skipped": 6,
        "missed_beyond_catch_up": 0,
        "missed_disabled": 0,
        "missed_state_lost": 0,
        "missed_paused": 0,
        "missed_overlap": 0,
    }


def test_a_node_whose_clock_is_off_refuses_leadership(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The backend's clock runs an hour behind ours: leading would publish an hour early.
    backend = SQLiteBackend(
        tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp() - 3600
    )
    beat = scheduler(backend, clock, config(every("tick", 1)))
    run_for(beat, 5)
    assert not beat.is_leader
    assert beat.totals.clock_skew == pytest.approx(3600)
    assert published(backend) == []
    refusals = [r for r in caplog.records if "refusing leadership" in r.message]
    assert len(refusals) == 1, "said once, not once a second"
    assert (
        refusals[0]
        .getMessage()
        .startswith(
            "refusing leadership: this node's clock is +3600.000 s off the backend's (limit 1.0 s)"
        )
    )


def test_standby_reports_config_drift(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = config(every("tick", 10)), config(every("tick", 20))
    leader = scheduler(open_db(), clock, theirs, "a")
    standby = scheduler(open_db(), clock, ours, "b")
    leader.step()
    standby.step()
    assert standby.totals.config_drift
    assert f"leader node=a runs config={theirs.fingerprint}" in caplog.text
    # the leader reloads the same files as the standby: the drift is gone
    leader._load_config = lambda: ours
    leader.request_reload()
    leader.step()
    clock.advance(1)
    standby.step()
    assert not standby.totals.config_drift


def test_a_second_process_with_the_same_node_name_waits_as_a_standby(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(every("tick", 1))
    first = scheduler(open_db(), clock, cfg, "same")
    second = scheduler(open_db(), clock, cfg, "same")
    for _ in range(5):
        first.step()
        second.step()
        clock.advance(1)
    assert first.is_leader and not second.is_leader
    # the leader re-announces a reloaded configuration under its own token, and keeps leading
    first.request_reload()
    first.step()
    assert first.is_leader
    ids = [m["id"] for m in published(open_db())]
    assert len(ids) == len(set(ids)) == 5
    taken = [r.getMessage() for r in caplog.records if "name is taken" in r.getMessage()]
    assert taken == [
        "node name is taken: another process holds the lease as node=same epoch=1; this one "
        "waits as a standby (give each `beatd run` its own --node; a lease left by a process "
        "that died expires after its TTL)"
    ]


class FailsFirstCommit(SQLiteBackend):
    """A real SQLite backend whose first commit fails as a full disk would."""

    failures = 1

    def commit(self, lease, writes, messages):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise TransientBackendError("database or disk is full")
        return super().commit(lease, writes, messages)


def test_new_entries_survive_a_failed_baseline_write(tmp_path: Path, clock: FakeClock) -> None:
    backend = FailsFirstCommit(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, config(every("tick", 10)))
    run_for(beat, 65)
    assert [m["id"] for m in published(backend)] == [
        f"tick@2026-03-01T12:00:{s}Z" for s in ("10", "20", "30", "40", "50")
    ] + ["tick@2026-03-01T12:01:00Z"]


def test_catching_up_many_cron_entries_is_done_in_bounded_ticks(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    entries = [
        Entry(
            name=f"c{i}",
            task="t.task",
            schedule=CronSchedule.parse("* * * * *"),
            missed=MissedPolicy.RUN_ONCE,
        )
        for i in range(50)
    ]
    cfg = Config({e.name: e for e in entries})
    first = scheduler(open_db(), clock, cfg)
    first.step()
    first.shutdown()
    clock.advance(86400)  # a day down: 1,440 missed slots per entry, 72,000 in all
    settings = SchedulerSettings(node="b", tick_budget=10_000)
    beat = Scheduler(open_db(), lambda: cfg, clock, settings)
    ticks = 0
    while beat.counts.total("due") < 50 * 1440:
        before = beat.planner.next_fire_computations
        beat.step()
        assert beat.is_leader
        assert beat.planner.next_fire_computations - before <= 10_000 + 1440
        ticks += 1
        clock.advance(0.001)
    assert ticks > 5  # the work was spread over several steps, each renewing the lease
    # run_once: 11:59 is the newest missed slot (late); 12:00 is within the grace (on time)
    assert beat.counts.total("published") == 100 and beat.counts.total("late") == 50
    assert beat.counts.total("missed_skipped") == 50 * 1438
    ids = sorted(m["id"].split("@")[1] for m in published(open_db()))
    assert ids == ["2026-03-02T11:59:00Z"] * 50 + ["2026-03-02T12:00:00Z"] * 50


def test_an_entry_whose_state_vanished_is_adopted_again(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    backend = open_db()
    beat = scheduler(backend, clock, config(every("tick", 10)))
    run_for(beat, 15)
    backend._connection().execute("DELETE FROM entry_state")  # lost behind the leader's back
    run_for(beat, 20)
    ids = [m["id"] for m in published(backend)]
    # 12:00:20 is rejected (no state to compare with) and re-decided from a new baseline
    assert ids[0] == "tick@2026-03-01T12:00:10Z" and ids[-1] == "tick@2026-03-01T12:00:30Z"
    assert len(ids) == len(set(ids)) and backend.load_states()["tick"].last_slot.second == 30


class RecordsCommits(SQLiteBackend):
    """A real SQLite backend that notes how far the planner had decided at each send and wait,
    and can fail one commit's outcome as a lost connection would."""

    beat: Scheduler
    fail_wait: int | None = None

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, int]] = []

    def send_commit(self, lease, writes, messages):  # type: ignore[no-untyped-def]
        self.events.append(("send", self.beat.planner.next_fire_computations))
        outcome = super().send_commit(lease, writes, messages)
        number = len(self.events)

        def wait() -> set[str]:
            self.events.append(("wait", self.beat.planner.next_fire_computations))
            if self.fail_wait == number:
                raise TransientBackendError("connection reset by peer")
            return outcome()

        return wait


def burst(tmp_path: Path, clock: FakeClock, count: int) -> tuple[RecordsCommits, Scheduler]:
    backend = RecordsCommits(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    hourly = IntervalSchedule(
        timedelta(hours=1), anchor=T0.replace(microsecond=0) + timedelta(seconds=2)
    )
    entries = (Entry(name=f"e{i:04d}", task="t.task", schedule=hourly) for i in range(count))
    cfg = config(*entries)
    beat = Scheduler(backend, lambda: cfg, clock, SchedulerSettings(node="a", batch_size=1000))
    backend.beat = beat
    beat.step()  # leader, baseline states
    backend.events.clear()
    clock.advance(2)  # onto the shared slot
    return backend, beat


def test_a_burst_goes_out_a_batch_at_a_time_deciding_the_next_meanwhile(
    tmp_path: Path, clock: FakeClock
) -> None:
    backend, beat = burst(tmp_path, clock, 2500)
    start = beat.planner.next_fire_computations
    beat.step()
    assert [(what, n - start) for what, n in backend.events] == [
        ("send", 1000),
        ("wait", 2000),  # the second batch was decided while the first was committed
        ("send", 2000),
        ("wait", 2500),
        ("send", 2500),
        ("wait", 2500),
    ]
    assert len(published(backend)) == 2500


class FaultyCommits(SQLiteBackend):
    """SQLite whose commit is applied at wait time, as Redis applies it while the caller waits,
    with a fault injected at one chosen commit: before sending, at wait before the write, or at
    wait after the write (an outcome lost on the way back); and reads that can fail."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fault: tuple[int, str, type[Exception]] = (0, "", Exception)
        self.failing_reads = 0
        self.whole_reads = 0  # reads of every state at once

    def send_commit(self, lease, writes, messages):  # type: ignore[no-untyped-def]
        self.calls += 1
        call, where, error = self.fault
        where = where if call == self.calls else ""
        if where == "send":
            raise error("injected at send")

        def wait() -> set[str]:
            if where == "wait-before":
                raise error("injected at wait, nothing written")
            rejected = self.commit(lease, writes, messages)
            if where == "wait-after":
                raise error("injected at wait, written")
            return rejected

        return wait

    def load_states(self, pace=None):  # type: ignore[no-untyped-def]
        self.whole_reads += 1
        if self.failing_reads:
            self.failing_reads -= 1
            raise TransientBackendError("injected at load_states")
        return super().load_states(pace)

    def states_of(self, names):  # type: ignore[no-untyped-def]
        if self.failing_reads:
            self.failing_reads -= 1
            raise TransientBackendError("injected at states_of")
        return super().states_of(names)


def faulty_burst(tmp_path: Path, clock: FakeClock, count: int) -> tuple[FaultyCommits, Scheduler]:
    backend = FaultyCommits(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    hourly = IntervalSchedule(
        timedelta(hours=1), anchor=T0.replace(microsecond=0) + timedelta(seconds=2)
    )
    cfg = config(*(Entry(name=f"e{i:04d}", task="t.task", schedule=hourly) for i in range(count)))
    beat = Scheduler(backend, lambda: cfg, clock, SchedulerSettings(node="a", batch_size=1000))
    beat.step()  # leader, baseline states
    backend.calls = 0
    clock.advance(2)  # onto the shared slot
    return backend, beat


FAULTS = [
    (call, where, error)
    for call in (1, 2, 3)  # the first, middle and last batch of 2,500 runs
    for where in ("send", "wait-before", "wait-after")
    for error in (TransientBackendError, LeaseLost)
    if (where, error) != ("wait-after", LeaseLost)  # LeaseLost means nothing was written
]


@pytest.mark.parametrize(
    ("call", "where", "error"), FAULTS, ids=[f"{c}-{w}-{e.__name__}" for c, w, e in FAULTS]
)
def test_a_fault_mid_burst_repeats_loses_and_miscounts_nothing(
    tmp_path: Path, clock: FakeClock, call: int, where: str, error: type[Exception]
) -> None:
    backend, beat = faulty_burst(tmp_path, clock, 2500)
    backend.fault = (call, where, error)
    run_for(beat, 30)  # within the slot's grace; a leader that lost its lease takes it again
    ids = [m["id"] for m in published(backend)]
    assert len(ids) == len(set(ids)) == 2500
    assert beat.counts.total("published") == 2500  # a lost outcome's runs are counted once known


def test_a_failed_resync_read_loses_no_entry_and_no_count(tmp_path: Path, clock: FakeClock) -> None:
    backend, beat = faulty_burst(tmp_path, clock, 2500)
    # another writer moved e0003 on (a deposed leader's late commit): its compare-and-set fails
    backend._connection().execute(
        "UPDATE entry_state SET last_slot_us = last_slot_us - 1000000 WHERE entry = 'e0003'"
    )
    backend.failing_reads = 1  # and reading the state to resync it fails once
    run_for(beat, 3 * 3600)  # three more hourly slots
    runs = Counter(m["entry"] for m in published(backend))
    assert runs["e0000"] == 4 and runs["e0003"] == 4
    assert beat.counts.total("published") == sum(runs.values())


def test_a_resync_reads_the_states_of_the_refused_entries_only(
    tmp_path: Path, clock: FakeClock
) -> None:
    """At 1,000,000 entries a read of every state takes seconds and 200 MiB: one refused
    commit must not cost that."""
    backend, beat = faulty_burst(tmp_path, clock, 2500)
    backend._connection().execute(
        "UPDATE entry_state SET last_slot_us = last_slot_us - 1000000 WHERE entry = 'e0003'"
    )
    backend.whole_reads = 0
    run_for(beat, 3600)
    runs = Counter(m["entry"] for m in published(backend))
    assert runs["e0003"] == 2 and backend.whole_reads == 0


class RefusesOneCommit(SQLiteBackend):
    """SQLite whose first commit of runs is refused before writing (NotApplied), while another
    writer (a deposed leader's late commit) moves its first entry to the very state that commit
    would have written."""

    refused = False

    def send_commit(self, lease, writes, messages):  # type: ignore[no-untyped-def]
        if self.refused or not messages:
            return super().send_commit(lease, writes, messages)
        self.refused = True
        moved = writes[0].state
        self._connection().execute(
            "UPDATE entry_state SET last_slot_us = ?, last_published_us = ? WHERE entry = ?",
            (to_micros(moved.last_slot), to_micros(moved.last_published), moved.entry),
        )

        def wait() -> set[str]:
            raise NotApplied("injected: refused before writing")

        return wait


def test_runs_of_a_commit_known_not_applied_are_never_counted_as_published(
    tmp_path: Path, clock: FakeClock
) -> None:
    backend = RefusesOneCommit(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    beat = scheduler(backend, clock, config(every("a", 60), every("b", 60), every("c", 60)))
    run_for(beat, 65)  # past the first slot, with time to retry
    # the refused commit held nothing in doubt, so the entry another writer moved is not ours
    assert sorted(m["entry"] for m in published(backend)) == ["b", "c"]
    assert beat.counts.total("published") == 2


def test_while_the_loop_works_a_round_other_threads_wait_and_none_once_it_stops(
    open_db: Callable[[], SQLiteBackend], clock: FakeClock
) -> None:
    stop = threading.Event()
    seen: list[bool] = []

    class MidRound:
        def notify(self, event: Event) -> None:
            if not isinstance(event, Stepped) or stop.is_set():
                return
            waiter = threading.Thread(target=lambda: beat.turns.wait_gap(0.05, 30.0))
            waiter.start()
            waiter.join(0.3)
            seen.append(waiter.is_alive())  # the round is not over: background work waits
            stop.set()

    cfg = config(every("tick", 10))
    settings = SchedulerSettings(node="a")
    beat = Scheduler(open_db(), lambda: cfg, clock, settings, observers=[MidRound()])
    beat.run(stop)
    assert seen == [True]
    assert beat.turns.wait_gap(0.05, 30.0) < 1.0  # stopped: nothing to wait for


class StorageGone(SQLiteBackend):
    """SQLite whose file was replaced under it: the lease cannot be asked for."""

    def acquire_lease(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise StorageFailed("the database file was replaced")


def test_a_loop_stopped_by_gone_storage_keeps_no_other_thread_waiting(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The API's threads wait for the loop's gaps (beatd.turns): a loop that ended by raising
    must say it stopped, or each of their waits would last its whole limit."""
    backend = StorageGone(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())
    beat = Scheduler(backend, lambda: Config({}), clock, SchedulerSettings(node="a"))
    with pytest.raises(StorageFailed):
        beat.run(threading.Event())
    began = time.monotonic()
    beat.turns.wait_gap(need=0.05, limit=5.0)
    assert time.monotonic() - began < 1.0
