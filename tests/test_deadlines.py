"""Deadlines and failing entries, judged by the leader on a fake clock against the in-memory
backend's history: nothing sleeps, no worker runs unless the test claims and settles itself."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beatd.assemble import build_scheduler
from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry, MissedPolicy
from beatd.entry_series import EntryFilter, EntrySeries
from beatd.history import Ending, RunStatus
from beatd.message import run_id
from beatd.outcomes import Outcome
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
MINUTE = datetime(2026, 3, 1, 12, 1, tzinfo=UTC)  # the first slot of an every-minute entry


def every(name: str, seconds: int, **kw: object) -> Entry:
    schedule = IntervalSchedule(timedelta(seconds=seconds))
    return Entry(name=name, task="t.task", schedule=schedule, **kw)  # type: ignore[arg-type]


class Cluster:
    """Schedulers sharing one `memory://` store, on one fake clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clock = FakeClock(T0)

    def backend(self) -> MemoryBackend:
        return MemoryBackend(self.name, wall_clock=lambda: self.clock.now().timestamp())

    def scheduler(self, node: str, *entries: Entry, ttl: float = 10) -> Scheduler:
        config = Config({e.name: e for e in entries})
        settings = SchedulerSettings(node=node, lease_ttl=ttl)
        return Scheduler(self.backend(), lambda: config, self.clock, settings)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster(f"deadlines-{uuid.uuid4().hex}")
    yield made
    discard(made.name)


def overdue_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "overdue" in r.getMessage()]


def test_a_run_no_worker_started_is_marked_overdue_at_its_deadline(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    beat = cluster.scheduler("a", every("tick", 60, deadline=timedelta(seconds=30)))
    caplog.set_level(logging.WARNING, "beatd.scheduler")
    run_for(beat, 89.4)  # to 12:01:29.9: the run of 12:01 is published, its deadline not passed
    first = run_id("tick", MINUTE)
    record = beat.backend.run(first)
    assert record is not None and record.status == RunStatus.QUEUED
    run_for(beat, 0.2)  # the loop wakes at the deadline, 12:01:30
    record = beat.backend.run(first)
    assert record is not None and record.status == RunStatus.OVERDUE
    assert record.overdue_at == MINUTE + timedelta(seconds=30)
    assert beat.deadlines.overdue == {"tick": 1}
    assert overdue_lines(caplog) == [
        "run overdue entry=tick slot=2026-03-01T12:01:00Z deadline=2026-03-01T12:01:30+00:00: "
        "not finished by its deadline"
    ]


def test_a_run_finished_in_time_is_not_marked(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    beat = cluster.scheduler("a", every("tick", 60, deadline=timedelta(seconds=30)))
    caplog.set_level(logging.WARNING, "beatd.scheduler")
    run_for(beat, 61)  # 12:01:01.5: published
    worker = cluster.backend()
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == run_id("tick", MINUTE)
    worker.ack(delivery)
    run_for(beat, 60)  # past its deadline
    record = beat.backend.run(delivery.id)
    assert record is not None and record.status == Outcome.SUCCEEDED
    assert record.overdue_at is None
    assert beat.deadlines.overdue == {} and overdue_lines(caplog) == []


def test_a_run_started_but_not_finished_is_marked(cluster: Cluster) -> None:
    beat = cluster.scheduler("a", every("tick", 60, deadline=timedelta(seconds=30)))
    run_for(beat, 61)
    delivery = cluster.backend().claim(["default"], "w", 300)
    assert delivery is not None
    run_for(beat, 30)  # 12:01:31.5
    record = beat.backend.run(delivery.id)
    assert record is not None and record.overdue_at == MINUTE + timedelta(seconds=30)
    assert record.status == RunStatus.OVERDUE


def test_no_leader_at_the_deadline_the_next_marks_it_at_adoption_with_the_original_time(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    entry = every("tick", 60, deadline=timedelta(seconds=30), missed=MissedPolicy.SKIP)
    a = cluster.scheduler("a", entry)
    run_for(a, 61)  # 12:01:01.5: a publishes the run of 12:01, then stops stepping (killed)
    cluster.clock.advance(120)  # nobody leads at 12:01:30; a's lease lapses
    b = cluster.scheduler("b", entry)
    caplog.set_level(logging.WARNING, "beatd.scheduler")
    b.step()  # 12:03:01.5: b leads, adopts, marks
    assert b.is_leader
    record = b.backend.run(run_id("tick", MINUTE))
    assert record is not None and record.overdue_at == MINUTE + timedelta(seconds=30)
    assert overdue_lines(caplog)[0] == (
        "run overdue entry=tick slot=2026-03-01T12:01:00Z deadline=2026-03-01T12:01:30+00:00: "
        "not finished by its deadline"
    )


def test_a_run_finished_late_while_no_leader_ran_is_marked_by_the_next_leader(
    cluster: Cluster,
) -> None:
    # the issue: "If no leader ran at the deadline, the next leader marks it at adoption with
    # the original time" -- a run that finished after its deadline is one not finished by it
    entry = every("tick", 60, deadline=timedelta(seconds=30), missed=MissedPolicy.SKIP)
    a = cluster.scheduler("a", entry)
    run_for(a, 61)  # 12:01:01.5: a publishes the run of 12:01, then stops stepping (killed)
    cluster.clock.advance(40)  # 12:01:41.5: no leader marked its deadline of 12:01:30
    worker = cluster.backend()
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None and delivery.id == run_id("tick", MINUTE)
    worker.ack(delivery)  # finished 11.5 s after its deadline
    cluster.clock.advance(80)
    b = cluster.scheduler("b", entry)
    b.step()  # 12:03:01.5: b leads, adopts
    assert b.is_leader
    record = b.backend.run(delivery.id)
    assert record is not None and record.status == Outcome.SUCCEEDED
    assert record.overdue_at == MINUTE + timedelta(seconds=30)


def test_a_new_leader_watches_the_unfinished_runs_whose_deadline_is_ahead(
    cluster: Cluster,
) -> None:
    entry = every("tick", 60, deadline=timedelta(minutes=5))
    a = cluster.scheduler("a", entry)
    run_for(a, 61)
    cluster.clock.advance(15)  # a's lease lapses; the deadline, 12:06, is ahead
    b = cluster.scheduler("b", entry)
    b.step()
    assert b.is_leader
    first = run_id("tick", MINUTE)
    assert b.deadlines.next_at() == MINUTE + timedelta(minutes=5)
    record = b.backend.run(first)
    assert record is not None and record.overdue_at is None
    run_for(b, 300)
    record = b.backend.run(first)
    assert record is not None and record.overdue_at == MINUTE + timedelta(minutes=5)


def test_missed_slots_are_marked_at_the_first_slots_deadline_unless_disabled(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    late = timedelta(seconds=30)
    skip = every("skip", 60, deadline=late, missed=MissedPolicy.SKIP)
    off = every("off", 60, deadline=late, enabled=False)
    a = cluster.scheduler("a", skip, off, ttl=3600)
    run_for(a, 30)  # leads and adopts at 12:00:00.5
    cluster.clock.advance(300)  # a stalls (no step) over five slots, keeping nothing
    caplog.set_level(logging.WARNING, "beatd.scheduler")
    run_for(a, 1)  # 12:05:31.5: the slots of 12:01 to 12:04 were missed, skipped
    (missed,) = a.backend.missed("skip")
    assert (missed.slots.first, missed.slots.total) == (MINUTE, 4)
    assert missed.overdue_at == MINUTE + late
    (disabled,) = a.backend.missed("off")
    assert disabled.overdue_at is None
    # and the run of 12:05, published at 12:05:30.5, is past its deadline when published
    assert a.deadlines.overdue == {"skip": 2}
    assert overdue_lines(caplog) == [
        "missed slots overdue entry=skip slot=2026-03-01T12:01:00Z "
        "deadline=2026-03-01T12:01:30+00:00 reason=skipped count=4: no run by the first "
        "slot's deadline",
        "run overdue entry=skip slot=2026-03-01T12:05:00Z deadline=2026-03-01T12:05:30+00:00: "
        "not finished by its deadline",
    ]


def test_entries_without_a_deadline_are_not_watched(cluster: Cluster) -> None:
    beat = cluster.scheduler("a", every("tick", 60))
    run_for(beat, 600)
    assert len(beat.deadlines) == 0 and beat.deadlines.overdue == {}
    record = beat.backend.run(run_id("tick", MINUTE))
    assert record is not None and record.overdue_at is None


def settle(backend: MemoryBackend, ending: Ending | None) -> None:
    """Claim the next run and end it: acknowledged with `ending`, or dead-lettered."""
    delivery = backend.claim(["default"], "w", 30)
    assert delivery is not None
    if ending is None:
        backend.dead_letter(delivery, "no more tries")
    else:
        backend.ack(delivery, ending)


FAILED = Ending.failure(Outcome.FAILED, "ValueError", "bad input")


def test_an_entry_is_failing_after_n_final_failures_until_a_run_succeeds(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    beat = cluster.scheduler("a", every("tick", 60, alert_after_failures=2))
    worker = cluster.backend()
    caplog.set_level(logging.INFO, "beatd.scheduler")
    run_for(beat, 61)
    settle(worker, FAILED)
    run_for(beat, 60)
    assert beat.health.failing == frozenset()
    settle(worker, None)  # dead-lettered: the second final failure in a row
    run_for(beat, 60)  # a read every 15 s
    assert beat.health.failing == {"tick"}
    assert beat.health.summaries["tick"].consecutive_failures == 2
    settle(worker, Ending(Outcome.SUCCEEDED))
    run_for(beat, 16)
    assert beat.health.failing == frozenset()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("entry ")]
    assert lines == [
        "entry failing entry=tick failures=2 last_status=dead_lettered "
        "last_finished=2026-03-01T12:02:01Z: that many runs in a row ended failed or "
        "dead-lettered (alert_after_failures: 2); reported until a run succeeds",
        "entry recovered entry=tick last_status=succeeded: no longer failing",
    ]


def test_retried_and_expired_runs_do_not_make_an_entry_failing(cluster: Cluster) -> None:
    beat = cluster.scheduler("a", every("tick", 60, alert_after_failures=1))
    worker = cluster.backend()
    run_for(beat, 61)
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None
    worker.retry(delivery, delivery.body, 0.0)  # retried: the run goes on
    settle(worker, Ending(Outcome.EXPIRED))
    run_for(beat, 30)
    assert beat.health.failing == frozenset()
    assert beat.health.summaries["tick"].consecutive_failures == 0


def test_only_the_leader_reads_the_summaries(cluster: Cluster) -> None:
    entry = every("tick", 60, alert_after_failures=1)
    a = cluster.scheduler("a", entry)
    b = cluster.scheduler("b", entry)
    run_for(a, 61)
    settle(cluster.backend(), FAILED)
    run_for(a, 16)
    b.step()  # a's lease holds: b stands by
    assert a.health.failing == {"tick"} and b.health.failing == frozenset()
    assert b.health.summaries == {}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def entry_series(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {name for name, labels in samples if any(key == "entry" for key, _ in labels)}


def built(
    cluster: Cluster, entries: list[Config], series: EntrySeries = EntrySeries.ALL
) -> tuple[Scheduler, CollectorRegistry]:
    """A scheduler as `beatd run` builds it; a reload reads the last of `entries`."""
    registry = CollectorRegistry()
    beat = build_scheduler(
        cluster.backend(),
        entries[0],
        lambda: entries[-1],
        cluster.clock,
        SchedulerSettings(node="a", lease_ttl=10),
        registry=registry,
        metrics_entries=series,
    )
    return beat, registry


def test_the_leader_exports_failing_overdue_and_last_run_gauges(cluster: Cluster) -> None:
    judged = every("judged", 60, alert_after_failures=1)
    late = every("late", 60, deadline=timedelta(seconds=30), queue="other")
    beat, registry = built(cluster, [Config({"judged": judged, "late": late})])
    run_for(beat, 61)
    worker = cluster.backend()
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None
    cluster.clock.advance(2)  # the attempt takes 2 s
    worker.ack(delivery, FAILED)
    run_for(beat, 30)  # 12:01:33.5: the late run's deadline passed, the summaries were read
    samples = scrape(registry)
    failed_at = (MINUTE + timedelta(seconds=3.5)).timestamp()
    assert value(samples, "beatd_entry_failing", entry="judged") == 1
    assert ("beatd_entry_failing", (("entry", "late"),)) not in samples  # no threshold
    assert value(samples, "beatd_runs_overdue_total", entry="late") == 1
    assert value(samples, "beatd_entry_last_duration_seconds", entry="judged") == 2
    assert value(
        samples, "beatd_entry_last_failed_timestamp_seconds", entry="judged"
    ) == pytest.approx(failed_at, abs=0.001)
    assert ("beatd_entry_last_succeeded_timestamp_seconds", (("entry", "judged"),)) not in samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_entries_none_leaves_no_per_entry_series_but_still_judges(
    cluster: Cluster,
) -> None:
    judged = every("judged", 60, alert_after_failures=1)
    beat, registry = built(cluster, [Config({"judged": judged})], EntrySeries.NONE)
    run_for(beat, 61)
    worker = cluster.backend()
    delivery = worker.claim(["default"], "w", 30)
    assert delivery is not None
    worker.ack(delivery, FAILED)
    run_for(beat, 16)
    samples = scrape(registry)
    assert entry_series(samples) == set()
    assert value(samples, "beatd_entries") == 1
    assert beat.health.failing == {"judged"}


@pytest.mark.parametrize(
    ("series", "shown"),
    [(EntrySeries.ALL, {"kept", "removed"}), (EntrySeries.FILE, {"kept"})],
    ids=["all_keeps_removed_entries", "file_shows_the_loaded_ones"],
)
def test_metrics_entries_all_or_file(
    cluster: Cluster, series: EntrySeries, shown: set[str]
) -> None:
    kept, removed = every("kept", 60), every("removed", 60)
    configs = [Config({"kept": kept, "removed": removed})]
    beat, registry = built(cluster, configs, series)
    run_for(beat, 61)
    configs.append(Config({"kept": kept}))
    beat.request_reload()
    run_for(beat, 1)
    samples = scrape(registry)
    published = {
        dict(labels)["entry"] for name, labels in samples if name == "beatd_runs_published_total"
    }
    assert published == shown


def test_metrics_entries_all_beyond_its_bound_is_file_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = Config({"a": every("a", 60), "b": every("b", 60)})
    bounded = EntryFilter(EntrySeries.ALL, limit=1)
    caplog.set_level(logging.WARNING, "beatd.metrics")
    for _ in range(2):
        shown = bounded.shown(config)
        assert (shown("a"), shown("gone")) == (True, False)
    assert [r.getMessage() for r in caplog.records] == [
        "metrics: 2 entries are more than 1: per-entry series only for the schedule files' "
        "entries (--metrics-entries file); --metrics-entries none leaves only the totals"
    ]


def test_a_reload_keeps_the_watch(cluster: Cluster) -> None:
    entry = every("tick", 60, deadline=timedelta(minutes=5))
    beat = cluster.scheduler("a", entry)
    run_for(beat, 61)
    beat.request_reload()
    run_for(beat, 1)
    assert beat.deadlines.next_at() == MINUTE + timedelta(minutes=5)
    run_for(beat, 300)
    record = beat.backend.run(run_id("tick", MINUTE))
    assert record is not None and record.overdue_at == MINUTE + timedelta(minutes=5)


def test_a_new_leader_watches_the_missed_ranges_its_predecessor_wrote(cluster: Cluster) -> None:
    entry = every("skip", 60, deadline=timedelta(minutes=5), missed=MissedPolicy.SKIP)
    a = cluster.scheduler("a", entry)
    run_for(a, 30)
    cluster.clock.advance(300)  # a stalls over five slots
    run_for(a, 5)  # 12:05:35.5: a leads again and writes the range 12:01-12:04, then dies
    (missed,) = a.backend.missed("skip")
    assert missed.overdue_at is None  # its deadline, 12:06, is ahead
    cluster.clock.advance(15)  # a's lease lapses
    b = cluster.scheduler("b", entry)
    b.step()
    assert b.is_leader
    run_for(b, 20)  # past 12:06
    (missed,) = b.backend.missed("skip")
    assert missed.overdue_at == MINUTE + timedelta(minutes=5)
    assert b.deadlines.overdue == {"skip": 1}


def test_without_history_nothing_is_marked(cluster: Cluster) -> None:
    config = Config({"tick": every("tick", 60, deadline=timedelta(seconds=30))})
    backend = MemoryBackend(
        cluster.name, wall_clock=lambda: cluster.clock.now().timestamp(), history=False
    )
    beat = Scheduler(backend, lambda: config, cluster.clock, SchedulerSettings(node="a"))
    run_for(beat, 120)
    assert beat.backend.run(run_id("tick", MINUTE)) is None
    assert beat.deadlines.overdue == {} and beat.health.summaries == {}


def test_a_backlog_of_deadlines_is_marked_over_several_steps(cluster: Cluster) -> None:
    late = timedelta(seconds=30)
    beat = cluster.scheduler("a", *(every(n, 60, deadline=late) for n in ("a", "b", "c")))
    beat.deadlines.budget = 2
    run_for(beat, 89.4)  # 12:01:29.9: three runs published, none past its deadline
    cluster.clock.advance(1)
    delay = beat.step()
    assert sum(beat.deadlines.overdue.values()) == 2
    assert delay == 0  # the third is still due: the loop does not sleep
    beat.step()
    assert sum(beat.deadlines.overdue.values()) == 3


def test_a_new_leader_reads_the_history_a_few_entries_a_step(cluster: Cluster) -> None:
    entries = [every(n, 60, deadline=timedelta(seconds=30)) for n in ("a", "b", "c")]
    first = cluster.scheduler("first", *entries)
    run_for(first, 61)  # three runs published; first dies
    cluster.clock.advance(60)  # their deadlines pass with no leader
    second = cluster.scheduler("second", *entries)
    second.deadlines.read_budget = 2
    delay = second.step()
    assert second.is_leader and sum(second.deadlines.overdue.values()) == 2
    assert delay == 0  # one entry is still to read
    second.step()
    assert second.deadlines.overdue == {"a": 1, "b": 1, "c": 1}


def test_the_summaries_are_read_a_chunk_a_step(cluster: Cluster) -> None:
    entries = [every(n, 60, alert_after_failures=1) for n in ("a", "b", "c")]
    beat = cluster.scheduler("a", *entries, ttl=3600)  # it leads on when the test moves time
    beat.health.chunk = 2
    run_for(beat, 61)
    worker = cluster.backend()
    for _ in entries:
        delivery = worker.claim(["default"], "w", 30)
        assert delivery is not None
        worker.ack(delivery, FAILED)
    cluster.clock.advance(15)
    delay = beat.step()  # reads the summaries of a and b
    assert beat.health.failing == frozenset() and delay == 0
    beat.step()  # and of c: the read is complete
    assert beat.health.failing == {"a", "b", "c"}
