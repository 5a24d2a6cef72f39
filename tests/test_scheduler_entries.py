"""Runtime entries in the loop (issue 18), on the memory backend and a fake clock: written
through the backend's `RuntimeEntries` role, as the CLI, the client and the API will, and
planned by the leader (and held by the standbys) through the change feed."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from beatd.amqp_link import AmqpLink
from beatd.amqp_relay import AmqpRelay
from beatd.amqp_relaying import AmqpRelaying
from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.memory import MemoryBackend, discard
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.celery_listener import CeleryEventListener, CeleryEvents
from beatd.clock import FakeClock
from beatd.config import Config, ConfigError
from beatd.config.model import Entry
from beatd.events import Adopted, Event, Observer, Status, Stepped
from beatd.history import HistoryQuery
from beatd.metrics import register_scheduler
from beatd.runtime_entries import resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.in_process import memory_backend
from tests.test_celery_listener import Heard
from tests.test_metrics import scrape, value

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
NAME = "scheduler-entries"
BY = "ops@host"


def file_entry(name: str, line: int = 3) -> Entry:
    schedule = IntervalSchedule(M)
    return Entry(name=name, task="t.file", schedule=schedule, source=f"/etc/beatd/app.yaml:{line}")


def config(*entries: Entry) -> Config:
    return Config({e.name: e for e in entries})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend(NAME, clock)


def scheduler(
    backend: MemoryBackend,
    clock: FakeClock,
    cfg: Config,
    node: str = "a",
    observers: Sequence[Observer] = (),
    **kw: Any,
) -> tuple[Scheduler, list[Config]]:
    """A scheduler and the configurations its reloads read (the last one)."""
    configs = [cfg]
    settings = SchedulerSettings(node=node, lease_ttl=10, max_clock_skew=3600, **kw)
    beat = Scheduler(backend, lambda: configs[-1], clock, settings, observers=observers)
    return beat, configs


def put(backend: MemoryBackend, clock: FakeClock, name: str, **fields: Any) -> None:
    raw = {"task": "t.runtime", "every": "1m", **fields}
    backend.put_entry(resolve_entry(name, raw, now=clock.now()), BY)


def published(backend: MemoryBackend, entry: str) -> list[str]:
    runs = backend.runs(HistoryQuery(entry=entry))
    return sorted(r.slot.strftime("%H:%M:%S") for r in runs if r.slot is not None)


def test_an_entry_added_at_runtime_is_published_from_the_next_slot(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat, _ = scheduler(backend, clock, config(file_entry("files")))
    run_for(beat, 90)
    put(backend, clock, "tenant-1")
    run_for(beat, 95)  # to 12:03:05
    assert published(backend, "tenant-1") == ["12:02:00", "12:03:00"]
    assert published(backend, "files") == ["12:01:00", "12:02:00", "12:03:00"]
    assert beat.planner.entries["tenant-1"].source == "api"


def test_a_removal_10_ms_before_the_slot_publishes_nothing(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    # the feed is read every 5 s here: only the read before publishing can see the removal
    beat, _ = scheduler(backend, clock, config(), entry_poll=5)
    put(backend, clock, "tenant-1")
    run_for(beat, 119.99)  # 12:01:00 published, 12:02:00 due in 10 ms
    backend.remove_entry("tenant-1", BY)
    run_for(beat, 120)
    assert published(backend, "tenant-1") == ["12:01:00"]
    assert "tenant-1" not in beat.planner.entries


def test_a_rescheduled_entry_starts_from_now(backend: MemoryBackend, clock: FakeClock) -> None:
    beat, _ = scheduler(backend, clock, config())
    put(backend, clock, "tenant-1", every="1h")
    run_for(beat, 150)  # 12:02:30: nothing due yet
    put(backend, clock, "tenant-1", every="1m")
    run_for(beat, 60)
    assert published(backend, "tenant-1") == ["12:03:00"]  # not 12:01 nor 12:02: from now


def test_a_changed_definition_with_the_same_schedule_keeps_the_position(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat, _ = scheduler(backend, clock, config())
    put(backend, clock, "tenant-1")
    run_for(beat, 70)
    put(backend, clock, "tenant-1", queue="reports")
    run_for(beat, 60)
    claimed = [backend.claim([queue], "w1", 3600) for queue in ("default", "reports")]
    assert [(d.id, d.queue) for d in claimed if d is not None] == [
        ("tenant-1@2026-03-01T12:01:00Z", "default"),
        ("tenant-1@2026-03-01T12:02:00Z", "reports"),
    ]


def test_one_change_touches_one_entry_in_the_plan(backend: MemoryBackend, clock: FakeClock) -> None:
    for i in range(500):
        put(backend, clock, f"tenant-{i:03}")
    beat, _ = scheduler(backend, clock, config(file_entry("files")))
    run_for(beat, 30)
    assert len(beat.planner) == 501
    computations = beat.planner.next_fire_computations
    put(backend, clock, "tenant-new")
    backend.remove_entry("tenant-007", BY)
    run_for(beat, 1)  # nothing due: only the two changes
    assert beat.planner.next_fire_computations - computations == 1
    assert len(beat.planner) == 501 and "tenant-007" not in beat.planner.entries


def test_a_bulk_import_is_applied_a_page_a_step_with_the_due_slots_published_between(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """review18: a 10,000-entry batch applied in one step held the loop for seconds (slots
    late, the lease at risk). The leader takes one page of the feed (250 changes) a step, the
    next step due at once."""
    beat, _ = scheduler(backend, clock, config(file_entry("files")))
    run_for(beat, 59.95)  # leading and adopted
    now = clock.now()
    bulk = [
        resolve_entry(f"bulk-{i:04}", {"task": "t", "every": "1h"}, now=now) for i in range(1000)
    ]
    backend.put_entries(bulk, BY, create_only=True)
    clock.advance(0.05)  # 12:01:00 is due
    assert beat.step() == 0  # more of the feed waits: the next step at once
    assert len(beat.planner) == 1 + 250
    assert published(backend, "files") == ["12:01:00"]  # published in the same step
    for taken in (500, 750, 1000):
        beat.step()
        assert len(beat.planner) == 1 + taken
    assert beat.step() > 0  # the feed read to its head: the next read after the poll interval


def test_a_file_reload_keeps_every_runtime_entry(backend: MemoryBackend, clock: FakeClock) -> None:
    beat, configs = scheduler(backend, clock, config(file_entry("a"), file_entry("b")))
    put(backend, clock, "tenant-1")
    run_for(beat, 30)
    configs.append(config(file_entry("a")))
    beat.request_reload()
    run_for(beat, 40)
    assert sorted(beat.planner.entries) == ["a", "tenant-1"]
    assert published(backend, "tenant-1") == ["12:01:00"]
    assert backend.file_entries() == {"a": "/etc/beatd/app.yaml"}


def test_a_file_bringing_a_runtime_entrys_name_is_refused_and_the_old_one_kept(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    beat, configs = scheduler(backend, clock, config(file_entry("a")))
    put(backend, clock, "tenant-1")
    run_for(beat, 30)
    configs.append(config(file_entry("a"), file_entry("tenant-1", line=9)))
    caplog.set_level(logging.ERROR, logger="beatd.scheduler")
    beat.request_reload()
    run_for(beat, 40)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "reload refused, keeping the last good configuration (1 entries):\n"
        "/etc/beatd/app.yaml:9:1: entry tenant-1: the name is taken by a runtime entry (source "
        "api); names are unique across schedule files and runtime entries: rename the entry in "
        "this file, or remove the runtime entry first"
    ]
    assert beat.config is configs[0] and beat.totals.reloads_failed == 1
    assert beat.planner.entries["tenant-1"].source == "api"
    assert published(backend, "tenant-1") == ["12:01:00"]


def test_at_start_a_file_entry_named_like_a_runtime_entry_is_a_configuration_error(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    put(backend, clock, "tenant-1")
    beat, _ = scheduler(backend, clock, config(file_entry("tenant-1", line=7)))
    with pytest.raises(ConfigError) as refused:
        beat.step()
    assert str(refused.value) == (
        "/etc/beatd/app.yaml:7:1: entry tenant-1: the name is taken by a runtime entry (source "
        "api); names are unique across schedule files and runtime entries: rename the entry in "
        "this file, or remove the runtime entry first"
    )
    assert backend.leader() is None  # refused before leading


def test_a_standby_holds_the_runtime_entries_and_takes_over_within_the_ttl(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    leader, _ = scheduler(backend, clock, config(), node="a")
    standby, _ = scheduler(backend, clock, config(), node="b")
    put(backend, clock, "tenant-1")
    for _ in range(20):  # both step for 10 s
        leader.step()
        standby.step()
        clock.advance(0.5)
    put(backend, clock, "tenant-2")
    standby.step()
    assert sorted(standby.runtime.entries) == ["tenant-1", "tenant-2"] and not standby.is_leader
    # 12:00:10: the leader is gone (no step, no release)
    run_for(standby, 11)  # lease TTL 10 s + 1 s
    assert standby.is_leader
    run_for(standby, 45)
    assert published(backend, "tenant-1") == ["12:01:00"]
    assert published(backend, "tenant-2") == ["12:01:00"]


def test_a_follower_behind_the_feed_reads_every_entry_again(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    backend.feed_retention = 3
    beat, _ = scheduler(backend, clock, config(), entry_poll=30)
    put(backend, clock, "gone")
    run_for(beat, 1)
    for i in range(5):  # more changes than the feed keeps, before the next read
        put(backend, clock, f"tenant-{i}")
    backend.remove_entry("gone", BY)
    run_for(beat, 60)
    assert sorted(beat.planner.entries) == [f"tenant-{i}" for i in range(5)]
    assert published(backend, "tenant-4") == ["12:01:00"]


def test_the_runtime_entries_and_the_feeds_lag_are_exported(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    beat, _ = scheduler(backend, clock, config(file_entry("files")))
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    run_for(beat, 10)
    assert math.isnan(value(scrape(registry), "beatd_entry_changes_lag_seconds"))
    put(backend, clock, "tenant-1")
    clock.advance(0.15)  # the write is 150 ms old when the next read applies it
    run_for(beat, 1)
    samples = scrape(registry)
    assert value(samples, "beatd_runtime_entries") == 1
    assert value(samples, "beatd_entries") == 1  # the files'
    assert value(samples, "beatd_entry_changes_applied_total") == 1
    assert 0.15 <= value(samples, "beatd_entry_changes_lag_seconds") < 0.2
    due = (T0 + M).timestamp()
    assert value(samples, "beatd_next_due_timestamp_seconds", entry="tenant-1") == due


def test_a_reload_while_leading_touches_only_the_file_entries_that_changed(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(300):
        put(backend, clock, f"tenant-{i:03}", every="1h")
    slow = Entry(name="b", task="t.file", schedule=IntervalSchedule(M * 10), source="/f.yaml:5")
    beat, configs = scheduler(backend, clock, config(file_entry("a"), slow, file_entry("c")))
    run_for(beat, 90)
    computations = beat.planner.next_fire_computations
    caplog.set_level(logging.INFO, logger="beatd.scheduler")
    configs.append(config(file_entry("a"), file_entry("b", line=5)))  # b rescheduled, c gone
    beat.request_reload()
    beat.step()
    assert beat.planner.next_fire_computations - computations == 1  # b's next slot, from now
    assert sorted(n for n in beat.planner.entries if not n.startswith("tenant-")) == ["a", "b"]
    assert len(beat.planner) == 302
    rescheduled = EntryState("b", T0 + timedelta(seconds=90), None, file_entry("b").identity)
    assert beat.planner.state("b") == rescheduled
    assert (
        "keeping the state of 1 entries removed from the configuration for 1h (--removed-grace): "
        "re-added in time, each resumes where it was: entries=c"
    ) in [r.getMessage() for r in caplog.records]
    run_for(beat, 60)
    assert published(backend, "b") == ["12:02:00"]
    assert published(backend, "c") == ["12:01:00"]


def test_a_standby_behind_the_feed_leaves_out_a_runtime_entry_its_files_name(
    backend: MemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend.feed_retention = 2
    leader, _ = scheduler(backend, clock, config(), node="a")
    standby, _ = scheduler(backend, clock, config(file_entry("mine")), node="b", entry_poll=5)
    leader.step()
    standby.step()  # standby, its files checked against the runtime entries (none)
    for name in ("x", "y", "mine"):  # the leader's files do not name `mine`: the API takes it
        put(backend, clock, name)
    caplog.set_level(logging.ERROR, logger="beatd.scheduler")
    run_for(standby, 6)  # reads every entry again: no configuration error mid-run
    assert sorted(standby.planned.entries) == ["mine", "x", "y"]
    assert standby.planned.entries["mine"].source == "/etc/beatd/app.yaml:3"


def test_a_node_whose_files_name_a_runtime_entry_stops_at_its_takeover_and_gives_the_lease_back(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    leader, _ = scheduler(backend, clock, config(), node="a")
    standby, _ = scheduler(backend, clock, config(file_entry("mine")), node="b")
    leader.step()
    standby.step()
    put(backend, clock, "mine")
    leader.shutdown()
    with pytest.raises(ConfigError) as refused:
        run_for(standby, 2)
    assert str(refused.value) == (
        "/etc/beatd/app.yaml:3:1: entry mine: the name is taken by a runtime entry (source api); "
        "names are unique across schedule files and runtime entries: rename the entry in this "
        "file, or remove the runtime entry first"
    )
    assert backend.leader() is None


class Relay(AmqpRelay):
    """The relay without its thread: what the observer asked of it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(lambda: discard_outbox(), lambda url: resolve(url), clock)
        self.relaying: dict[str, set[tuple[str, str]]] | None = None
        self.drains = 0  # starts to relay the runs left in the outbox, leading none

    def start(self, targets: dict[str, set[tuple[str, str]]], *, drain: bool = False) -> None:
        if drain:
            self.drains += 1
            self.relaying = None
            return
        self.relaying = {broker: set(pairs) for broker, pairs in targets.items()}

    def stop(self, wait: float = 0.0) -> None:
        self.relaying = None


def discard_outbox() -> MemoryBackend:
    raise AssertionError("the stand-in relay opens no outbox")


def resolve(url: str) -> AmqpLink:
    raise AssertionError(f"the stand-in relay logs in nowhere: {url}")


RABBIT = "amqp://guest@127.0.0.1:5672//"
RELAYING = {"amqp://guest@127.0.0.1:5672/%2F": {("reports", "reports")}}  # RABBIT's queue


@pytest.fixture
def ear(backend: MemoryBackend, clock: FakeClock) -> Iterator[CeleryEventListener]:
    """The Celery event listener on the backend, stopped after the test."""
    listening = CeleryEventListener(Heard(), backend, clock, poll=0.01)
    yield listening
    listening.stop(wait=5)


def test_celery_entries_added_at_runtime_start_the_event_listener_and_the_relay(
    backend: MemoryBackend, clock: FakeClock, ear: CeleryEventListener
) -> None:
    relay = Relay(clock)
    observers = [CeleryEvents(ear), AmqpRelaying(relay)]
    beat, _ = scheduler(backend, clock, config(), observers=observers)
    run_for(beat, 5)
    assert not ear.running and relay.relaying is None  # leading no Celery entry
    # (due at midnight: the memory backend holds no Celery queue to publish to)
    put(backend, clock, "tenant-c", protocol="celery", queue="celery", every="1d")
    run_for(beat, 5)
    assert ear.running and relay.relaying is None
    put(backend, clock, "tenant-r", protocol="celery", queue="reports", amqp={"url": RABBIT})
    run_for(beat, 5)
    assert relay.relaying == RELAYING
    backend.remove_entry("tenant-r", BY)
    run_for(beat, 5)
    assert relay.relaying is None and ear.running
    backend.remove_entry("tenant-c", BY)
    run_for(beat, 5)
    assert not ear.running  # no Celery entry led any more


def test_leading_no_amqp_entry_the_relay_drains_the_outbox_at_adoption_and_every_minute(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """Runs left in the outbox (a trigger's, those of entries since removed) are relayed by a
    leader that leads no AMQP entry: it looks at adoption, when the last such entry leaves,
    and every 60 s while leading (each look one claim; the relay stops once it is empty)."""
    relay = Relay(clock)
    relaying = AmqpRelaying(relay)
    beat, _ = scheduler(backend, clock, config(), observers=[relaying])
    run_for(beat, 5)
    assert (relay.relaying, relay.drains) == (None, 1)  # at adoption
    put(backend, clock, "tenant-r", protocol="celery", queue="reports", amqp={"url": RABBIT})
    run_for(beat, 5)
    assert relay.relaying == RELAYING
    backend.remove_entry("tenant-r", BY)
    run_for(beat, 5)
    assert (relay.relaying, relay.drains) == (None, 2)  # its runs left behind go too
    leading, following = Status(True, True, 0, "memory://"), Status(True, False, 0, "memory://")
    relaying.notify(Stepped(leading))
    assert relay.drains == 2  # looked less than 60 s ago
    clock.advance(60)
    relaying.notify(Stepped(following))
    assert relay.drains == 2  # a follower relays nothing
    relaying.notify(Stepped(leading))
    relaying.notify(Stepped(leading))
    assert relay.drains == 3


def test_given_the_backend_the_relay_starts_only_when_the_outbox_holds_runs(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """A leader that never used RabbitMQ opens no relay handle: the outbox is looked at on the
    scheduler's own backend first."""
    relay = Relay(clock)
    relaying = AmqpRelaying(relay, backend)
    beat, _ = scheduler(backend, clock, config(), observers=[relaying])
    run_for(beat, 5)
    assert relay.drains == 0  # the outbox is empty
    backend.enqueue([Outgoing("gone", "gone@1", BeatdQueue(OUTBOX_QUEUE), "{}")])
    clock.advance(60)
    relaying.notify(Stepped(Status(True, True, 0, "memory://")))
    assert relay.drains == 1


def test_a_new_leader_hears_the_runtime_celery_entries_at_adoption(
    backend: MemoryBackend, clock: FakeClock, ear: CeleryEventListener
) -> None:
    put(backend, clock, "tenant-c", protocol="celery", queue="celery", every="1d")
    put(backend, clock, "tenant-r", protocol="celery", queue="reports", amqp={"url": RABBIT})
    relay = Relay(clock)
    beat, _ = scheduler(
        backend, clock, config(), observers=[CeleryEvents(ear), AmqpRelaying(relay)]
    )
    run_for(beat, 5)
    assert ear.running
    assert relay.relaying == RELAYING


class Slow(MemoryBackend):
    """The memory backend `NAME` whose calls a subclass names each take `seconds` of the fake
    clock, as a loaded machine's did (issue 18: a leader lost its lease right after adopting
    1,000,000 entries, or publishing, or reading them)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__(NAME, wall_clock=lambda: clock.now().timestamp())
        self.clock, self.seconds = clock, seconds

    def take(self) -> None:
        self.clock.advance(self.seconds)


class SlowCommits(Slow):
    """Writes that each take `seconds` (issue 18's 8.8 s change: an adoption longer than the
    lease)."""

    def commit(self, lease: Any, writes: Any, messages: Any) -> set[str]:
        self.take()
        return super().commit(lease, writes, messages)


class SlowStates(Slow):
    """States read in `pages`, each taking `seconds`, calling `pace` between them as Redis's and
    PostgreSQL's pages do."""

    pages = 1

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        for _ in range(self.pages):
            self.take()
            if pace is not None:
                pace()
        return super().load_states()


class SlowReads(Slow):
    """Pages of entries that each take `seconds`."""

    def list_entries(self, after: str = "", limit: int = 1000) -> list[Any]:
        self.take()
        return super().list_entries(after, limit)


class SlowCollector:
    """An observer whose pass after an adoption takes `seconds` of the fake clock, as the
    collector's full pass over 1,000,000 entries took 14.5 s of wall time on a loaded machine
    (issue 18: a leader lost its lease right after adopting them)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def notify(self, event: Event) -> None:
        if isinstance(event, Adopted):
            self.clock.advance(self.seconds)


@pytest.fixture
def slow_store() -> Iterator[None]:
    """The store `NAME` the slow backends open: empty before the test, discarded after it."""
    discard(NAME)
    yield
    discard(NAME)


def lease_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the scheduler logged of losing its lease: a renewal late, or a node a standby."""
    said = [r.getMessage() for r in caplog.records]
    return [m for m in said if "stepping down" in m or "standby" in m]


@pytest.mark.usefixtures("slow_store")
def test_an_adoption_longer_than_the_lease_keeps_the_lease_and_a_change_waits_no_longer(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slow = SlowCommits(clock, 1.0)
    for i in range(3_000):
        put(slow, clock, f"tenant-{i:04d}")
    # 30 baseline writes of 100 entries, a second each: three times the lease's 10 s
    beat, _ = scheduler(slow, clock, config(file_entry("files")), batch_size=100)
    with caplog.at_level(logging.WARNING):
        beat.step()  # reads the entries, takes the lease, adopts them all
        assert beat.is_leader and beat.lease is not None and beat.lease.epoch == 1
        put(slow, clock, "late-change", every="1s")
        clock.advance(1)
        run_for(beat, 3)
    assert lease_warnings(caplog) == []
    assert beat.is_leader and beat.totals.leader_changes == 1
    assert "late-change" in beat.planned.entries
    assert published(slow, "late-change")  # within the seconds after its write


@pytest.mark.usefixtures("slow_store")
def test_a_long_pass_of_the_observers_after_an_adoption_keeps_the_lease(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slow = SlowCommits(clock, 1.0)
    for i in range(250):
        put(slow, clock, f"tenant-{i:03d}")
    # 3 baseline writes of 100 (3 s, no renewal due yet), then 8 s of the observers: 11 s
    # from the lease's last renewal, past its 9 s; a renewal right before them gives 9 s again
    cfg = config(file_entry("files"))
    observers = [SlowCollector(clock, 8.0)]
    beat, _ = scheduler(slow, clock, cfg, batch_size=100, observers=observers)
    with caplog.at_level(logging.WARNING):
        beat.step()
        assert beat.is_leader
        run_for(beat, 5)
    assert lease_warnings(caplog) == []
    assert beat.is_leader and beat.totals.leader_changes == 1


@pytest.mark.usefixtures("slow_store")
def test_a_round_publishing_longer_than_the_lease_keeps_it(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader restarting with 1,000,000 entries had tens of thousands due at once (the slots
    missed while it was down) and lost its lease within the round publishing them: the round
    renews it between its batches, as the adoption does."""
    slow = SlowCommits(clock, 0.0)
    for i in range(2_000):
        put(slow, clock, f"tenant-{i:04d}")
    beat, _ = scheduler(slow, clock, config(file_entry("files")), batch_size=100)
    beat.step()  # adopts them, each due at the next minute
    assert beat.is_leader
    slow.seconds = 0.5  # 20 batches of 100 at the minute: 10 s, past the 9 s of a renewal
    with caplog.at_level(logging.WARNING):
        run_for(beat, 90)
    assert lease_warnings(caplog) == []
    assert beat.is_leader and beat.totals.leader_changes == 1
    assert len(published(slow, "tenant-1999")) >= 1


@pytest.mark.usefixtures("slow_store")
def test_reading_the_states_for_longer_than_the_lease_keeps_it(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A leader restarting with 1,000,000 entries on Redis read their states for 18-30 s on a
    loaded machine, past its 10 s lease, and lost it at the first renewal after: taken again,
    it read them again and lost it again. The lease is renewed between the pages."""
    slow = SlowStates(clock, 3.0)
    slow.pages = 5  # 15 s of reading
    put(slow, clock, "tenant-1")
    beat, _ = scheduler(slow, clock, config(file_entry("files")))
    with caplog.at_level(logging.WARNING):
        beat.step()
        run_for(beat, 5)
    assert lease_warnings(caplog) == []
    assert beat.is_leader and beat.totals.leader_changes == 1


@pytest.mark.usefixtures("slow_store")
def test_a_lease_taken_after_a_long_read_of_the_entries_is_timed_from_its_taking(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slow = SlowReads(clock, 4.0)
    for i in range(3_000):
        put(slow, clock, f"tenant-{i:04d}")
    # the first step reads 4 pages of 1,000 (16 s, beyond the 10 s lease), then takes the lease
    beat, _ = scheduler(slow, clock, config(file_entry("files")))
    with caplog.at_level(logging.WARNING):
        beat.step()
        assert beat.is_leader
        clock.advance(2)
        beat.step()  # the lease was taken 2 s ago: no renewal is late
        run_for(beat, 30)
    assert lease_warnings(caplog) == []
    assert beat.is_leader and beat.totals.leader_changes == 1
