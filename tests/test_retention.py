"""The leader's trimming of the run history, under a FakeClock, on the in-memory backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from beatd.assemble import build_scheduler
from beatd.backends.base import BeatdQueue, Outgoing, StateWrite
from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.controls import IDEMPOTENCY_KEY_TTL, AuditRecord, Trigger, new_audit_id
from beatd.errors import TransientBackendError
from beatd.events import Event, Status, Stepped, SteppedDown
from beatd.history import HistoryQuery, MissedSlots, Retention
from beatd.metrics import register_history
from beatd.retention import HistoryRetention, HistoryStats, TrimSettings
from beatd.scheduler import SchedulerSettings
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEADING = Stepped(Status(True, True, 1, "memory://retention"))
STANDBY = Stepped(Status(True, False, 1, "memory://retention"))
DOWN = Stepped(Status(False, True, 1, "memory://retention"))
BY = "ops@host"
KEEP_5_FOR_1H = Retention(per_entry=5, max_age=timedelta(hours=1), max_records=1000)


class Refusing(MemoryBackend):
    """The in-memory backend whose next `refusals` trims fail as an outage would."""

    refusals = 0

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        if self.refusals:
            self.refusals -= 1
            raise TransientBackendError("memory://retention: connection reset (injected)")
        return super().trim(retention, limit)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[Refusing]:
    discard("retention")
    yield Refusing("retention", wall_clock=lambda: clock.now().timestamp())
    discard("retention")


def publish(backend: MemoryBackend, entry: str, count: int, clock: FakeClock) -> None:
    """`count` runs of `entry`, one a minute, each committed as a leader does and run by a
    worker (the caps trim only finished runs)."""
    lease = backend.acquire_lease("leader", 1e9)
    assert lease is not None
    for _ in range(count):
        clock.advance(60)
        slot = clock.now()
        body = f'{{"id": "{entry}@{slot:%H%M}"}}'
        run = Outgoing(entry, f"{entry}@{slot:%H%M}", BeatdQueue("default"), body, slot, slot)
        backend.commit(lease, [], [run])
        finish(backend)
    backend.release_lease(lease)


def finish(backend: MemoryBackend) -> None:
    """A worker runs every queued run."""
    while (delivery := backend.claim(["default"], "w", 60)) is not None:
        backend.ack(delivery)


def kept(backend: MemoryBackend, entry: str | None = None) -> list[str]:
    return sorted(r.id for r in backend.runs(HistoryQuery(entry=entry, limit=10_000)))


def test_the_leader_keeps_each_entrys_newest_runs_and_trims_every_minute(
    backend: Refusing, clock: FakeClock
) -> None:
    publish(backend, "a", 8, clock)  # 12:01 ... 12:08
    publish(backend, "b", 3, clock)  # 12:09 ... 12:11
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    retention.notify(STANDBY)
    retention.notify(DOWN)
    assert len(kept(backend)) == 11  # a standby never trims, nor a leader whose backend is down
    retention.notify(LEADING)
    assert kept(backend, "a") == [f"a@120{m}" for m in range(4, 9)]
    assert kept(backend, "b") == ["b@1209", "b@1210", "b@1211"]
    assert (retention.stats.runs, retention.stats.missed, retention.stats.trimmed) == (8, 0, 3)
    publish(backend, "a", 2, clock)  # 12:12, 12:13: a has 7 again
    retention.notify(LEADING)  # two minutes after the last trim: due again
    assert kept(backend, "a") == ["a@1206", "a@1207", "a@1208", "a@1212", "a@1213"]
    publish(backend, "a", 1, clock)
    clock.advance(-30)  # not a minute since the last trim: nothing is asked
    retention.notify(LEADING)
    assert len(kept(backend, "a")) == 6
    clock.advance(30)
    retention.notify(LEADING)
    assert len(kept(backend, "a")) == 5


def test_unfinished_runs_outlive_the_caps_and_expire_by_age(
    backend: Refusing, clock: FakeClock
) -> None:
    # workers down: the backlog's records stay, so their outcomes still reach the summary
    lease = backend.acquire_lease("leader", 1e9)
    assert lease is not None
    for minute in range(1, 8):
        slot = T0 + timedelta(minutes=minute)
        body = f'{{"id": "q@{slot:%H%M}"}}'
        run = Outgoing("q", f"q@{slot:%H%M}", BeatdQueue("default"), body, slot, slot)
        backend.commit(lease, [], [run])
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    retention.notify(LEADING)
    assert len(kept(backend, "q")) == 7
    clock.advance(3601)  # stuck over an hour: the age takes them
    retention.notify(LEADING)
    assert kept(backend, "q") == []


def test_records_older_than_the_maximum_age_go_also_for_removed_entries(
    backend: Refusing, clock: FakeClock
) -> None:
    publish(backend, "gone", 2, clock)  # an entry no longer configured: expires by age
    lease = backend.acquire_lease("leader", 1e9)
    assert lease is not None
    first = clock.now() - timedelta(minutes=30)
    missed = MissedSlots("a", "skipped", first, clock.now(), 30)
    backend.commit(
        lease, [StateWrite(EntryState("a", clock.now(), None, "i"), None, (missed,))], []
    )
    backend.release_lease(lease)
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    retention.notify(LEADING)
    assert (retention.stats.runs, retention.stats.missed) == (2, 1)
    clock.advance(3600)  # the first run is over an hour old; the second and the range an hour
    retention.notify(LEADING)
    assert (kept(backend), retention.stats.missed) == (["gone@1202"], 1)
    clock.advance(60)
    retention.notify(LEADING)
    assert (retention.stats.runs, retention.stats.missed, retention.stats.trimmed) == (0, 0, 3)


def test_a_large_trim_is_spread_over_steps_within_the_budget(
    backend: Refusing, clock: FakeClock
) -> None:
    publish(backend, "a", 12, clock)
    settings = TrimSettings(interval=60, batch=2, batches=2)
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H, settings)
    retention.notify(LEADING)
    assert retention.stats.trimmed == 4  # two calls of two: the step's share
    retention.notify(LEADING)  # the next step goes on at once, not a minute later
    assert retention.stats.trimmed == 7  # the third call removed one: nothing left
    retention.notify(LEADING)
    assert (retention.stats.trimmed, len(kept(backend))) == (7, 5)


def test_a_trim_stops_when_its_time_budget_is_spent(backend: Refusing, clock: FakeClock) -> None:
    publish(backend, "a", 12, clock)
    settings = TrimSettings(batch=1, batches=100, budget=0.5)

    class Slow(Refusing):
        def trim(self, retention: Retention, limit: int = 10_000) -> int:
            clock.advance(0.2)  # each call takes 200 ms
            return super().trim(retention, limit)

    retention = HistoryRetention(Slow("retention"), clock, KEEP_5_FOR_1H, settings)
    retention.notify(LEADING)
    assert retention.stats.trimmed == 3  # 0.2, 0.4, 0.6 s: the third call ends the step


def test_a_refused_trim_is_counted_logged_and_tried_again_a_minute_later(
    backend: Refusing, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    publish(backend, "a", 7, clock)
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    backend.refusals = 1
    with caplog.at_level("WARNING", logger="beatd.scheduler"):
        retention.notify(LEADING)
    assert [r.getMessage() for r in caplog.records] == [
        "history not trimmed, trying again in 60s: memory://retention: connection reset (injected)"
    ]
    assert (retention.stats.write_errors, retention.stats.runs, len(kept(backend))) == (1, None, 7)
    clock.advance(59)
    retention.notify(LEADING)
    assert len(kept(backend)) == 7
    clock.advance(1)
    retention.notify(LEADING)
    assert (retention.stats.write_errors, len(kept(backend))) == (1, 5)


def test_a_node_that_steps_down_stops_counting_and_trims_at_once_when_it_leads_again(
    backend: Refusing, clock: FakeClock
) -> None:
    publish(backend, "a", 6, clock)
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    retention.notify(LEADING)
    assert retention.stats.runs == 5
    retention.notify(SteppedDown(STANDBY.status))
    assert (retention.stats.runs, retention.stats.missed) == (None, None)
    publish(backend, "a", 1, clock)
    retention.notify(LEADING)
    assert (retention.stats.runs, retention.stats.trimmed) == (5, 2)


def test_the_history_metrics(clock: FakeClock, backend: Refusing) -> None:
    publish(backend, "a", 7, clock)
    stats = HistoryStats()
    registry = CollectorRegistry()
    register_history(registry, stats)
    assert "beatd_history_records{" not in generate_latest(registry).decode()  # not leading
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H, stats=stats)
    backend.refusals = 1
    retention.notify(LEADING)
    clock.advance(60)
    retention.notify(LEADING)
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("beatd_history") and not line.startswith("beatd_history_trimmed_c")
    ]
    assert [line for line in lines if "_created" not in line] == [
        'beatd_history_records{kind="run"} 5.0',
        'beatd_history_records{kind="missed"} 0.0',
        "beatd_history_trimmed_total 2.0",
        "beatd_history_write_errors_total 1.0",
    ]


def test_the_scheduler_trims_while_it_leads_n5_max_age_1h(clock: FakeClock) -> None:
    """End to end: `beatd run`'s scheduler publishing every 10 minutes for three hours keeps
    at most the newest 5 runs, none older than an hour (as of the last trim, a minute ago at
    most)."""
    discard("retention-e2e")
    backend = MemoryBackend("retention-e2e", wall_clock=lambda: clock.now().timestamp())
    schedule = IntervalSchedule(timedelta(minutes=10))
    config = Config({"tick": Entry(name="tick", task="t.task", schedule=schedule)})
    registry = CollectorRegistry()
    retention = Retention(per_entry=5, max_age=timedelta(hours=1), max_records=1000)
    scheduler = build_scheduler(
        backend,
        config,
        lambda: config,
        clock,
        SchedulerSettings(node="n1"),
        registry=registry,
        retention=retention,
        audit_retention=timedelta(hours=1),
    )
    kept_audit = AuditRecord(
        new_audit_id(), T0 + timedelta(hours=2, minutes=30), "requeue", None, BY, {}
    )
    backend.record_audit(AuditRecord(new_audit_id(), T0, "requeue", None, BY, {}))
    backend.record_audit(kept_audit)
    stop = threading.Event()
    published: list[int] = []

    class Until:
        def notify(self, event: Event) -> None:
            if isinstance(event, Stepped):
                finish(backend)
                published.append(len(kept(backend)))
                if clock.now() >= T0 + timedelta(hours=3, minutes=1):
                    stop.set()

    scheduler.observers = (*scheduler.observers, Until())
    scheduler.run(stop)
    runs = backend.runs(HistoryQuery(limit=100))
    assert [r.slot for r in runs] == [
        T0 + timedelta(hours=3) - timedelta(minutes=10 * k) for k in range(5)
    ]
    assert max(published) == 6  # a sixth run lives until the next trim, a minute at most
    assert 'beatd_history_records{kind="run"} 5.0' in generate_latest(registry).decode()
    assert backend.audit() == [kept_audit]  # the audit log kept to its hour too
    discard("retention-e2e")


def test_the_leader_trims_the_audit_log_and_old_trigger_keys_past_their_retention(
    backend: Refusing, clock: FakeClock
) -> None:
    retention = HistoryRetention(
        backend, clock, KEEP_5_FOR_1H, controls=backend, audit_max_age=timedelta(days=2)
    )
    backend.pause(["e"], "maintenance", None, BY)
    clock.advance(timedelta(days=1).total_seconds())
    (resumed,) = backend.resume(["e"], BY)
    result = backend.trigger(Trigger("e", "e@m", "default", False, None, "{}", "r1", BY, None))
    clock.advance(timedelta(days=1, seconds=1).total_seconds())
    retention.notify(STANDBY)
    assert len(backend.audit()) == 3  # a standby trims nothing
    retention.notify(LEADING)
    assert {r.id for r in backend.audit()} == {result.audit_id, resumed.id}
    assert retention.stats.audit_trimmed == 1
    clock.advance(IDEMPOTENCY_KEY_TTL.total_seconds())
    assert backend.trigger_keys() != []
    retention.notify(LEADING)  # a minute has passed
    assert (backend.audit(), backend.trigger_keys()) == ([], [])
    assert retention.stats.audit_trimmed == 4  # three audit records, and request r1's id


def test_without_controls_the_audit_log_is_not_trimmed(backend: Refusing, clock: FakeClock) -> None:
    retention = HistoryRetention(backend, clock, KEEP_5_FOR_1H)
    backend.pause(["e"], "maintenance", None, BY)
    clock.advance(timedelta(days=400).total_seconds())
    retention.notify(LEADING)
    assert len(backend.audit()) == 1
