"""`Publisher` on its own: a real SQLite file, a fake clock, and commits that fail on purpose."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.backends.base import BeatdQueue, CeleryQueue, Lease, Outgoing, StateWrite
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry, MissedPolicy
from beatd.core import MissReason, Planner
from beatd.errors import NotApplied, OutcomeUnknown
from beatd.events import Event, Published
from beatd.history import MissedSlots, RunKind
from beatd.publisher import Publisher
from beatd.schedules import IntervalSchedule

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


def every(name: str, seconds: int, **kw: object) -> Entry:
    schedule = IntervalSchedule(timedelta(seconds=seconds))
    return Entry(name=name, task="t.task", schedule=schedule, **kw)  # type: ignore[arg-type]


class FailingOnce(SQLiteBackend):
    """SQLite whose next commit of runs fails: before writing (NotApplied) or after it wrote
    (OutcomeUnknown, a reply lost)."""

    fault: type[Exception] | None = None
    sent: list[tuple[Sequence[StateWrite], Sequence[Outgoing]]]

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        self.sent = [*getattr(self, "sent", []), (writes, messages)]
        fault, self.fault = self.fault, None
        if fault is NotApplied:
            raise NotApplied("injected: refused before writing")
        outcome = super().send_commit(lease, writes, messages)
        if fault is OutcomeUnknown:
            outcome()

            def lost() -> set[str]:
                raise OutcomeUnknown("injected: applied, reply lost")

            return lost
        return outcome


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(tmp_path: Path, clock: FakeClock) -> FailingOnce:
    return FailingOnce(tmp_path / "beatd.db", wall_clock=lambda: clock.now().timestamp())


class Setup:
    def __init__(self, backend: FailingOnce, clock: FakeClock, *entries: Entry) -> None:
        self.backend, self.clock, self.events = backend, clock, list[Event]()
        self.publisher = Publisher(backend, clock, "n", 2, self.events.append)
        lease = backend.acquire_lease("n", 60.0)
        assert lease is not None
        self.lease = lease
        self.planner = Planner()
        baselines, _ = self.planner.load(Config({e.name: e for e in entries}).entries, {}, T0)
        backend.commit(lease, [StateWrite(s, None) for s in baselines], [])

    def publish(self) -> bool:
        done = self.publisher.publish(self.planner, self.lease)
        assert done.lease_lost is None
        return done.asked

    def ids(self) -> list[str]:
        rows = self.backend._connection().execute("SELECT body FROM message ORDER BY seq")
        return [json.loads(body)["id"] for (body,) in rows]


def test_due_runs_go_out_in_batches_each_told_once(backend: FailingOnce, clock: FakeClock) -> None:
    setup = Setup(backend, clock, *(every(f"e{i}", 10) for i in range(5)))
    assert not setup.publish()  # nothing due: the backend is not asked
    clock.advance(10)
    assert setup.publish()
    assert setup.ids() == [f"e{i}@2026-03-01T12:00:10Z" for i in range(5)]
    published = [e for e in setup.events if isinstance(e, Published)]
    assert [[d.entry.name for d in e.decisions] for e in published] == [
        ["e0", "e1"],
        ["e2", "e3"],
        ["e4"],
    ]
    assert {e.published_at for e in published} == {clock.now()}
    assert setup.publisher.counts.total("published") == 5


def test_each_destination_gets_its_own_encoding(backend: FailingOnce, clock: FakeClock) -> None:
    setup = Setup(backend, clock, every("ours", 10), every("theirs", 10, protocol="celery"))
    clock.advance(10)
    batch = list(setup.planner.decide_due(clock.now()))
    ours, theirs = setup.publisher.messages(batch, clock.now())
    assert ours.destination == BeatdQueue("default")
    assert json.loads(ours.body)["scheduled_for"] == "2026-03-01T12:00:10Z"
    assert json.loads(ours.body)["kind"] == "scheduled"
    assert theirs.destination == CeleryQueue("default")
    envelope = json.loads(theirs.body)
    assert envelope["headers"]["id"] == theirs.id == "theirs@2026-03-01T12:00:10Z"
    assert envelope["headers"]["origin"] == "beatd@n"
    assert envelope["headers"]["beatd_kind"] == "scheduled"


def test_each_run_carries_its_slot_due_time_and_kind_for_the_history(
    backend: FailingOnce, clock: FakeClock
) -> None:
    jitter = timedelta(seconds=5)
    ours, theirs = every("ours", 10, jitter=jitter), every("theirs", 10, protocol="celery")
    setup = Setup(backend, clock, ours, theirs)
    clock.advance(15)
    batch = list(setup.planner.decide_due(clock.now()))
    slot = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    messages = setup.publisher.messages(batch, clock.now())
    assert sorted((m.entry, m.slot, m.due, m.kind) for m in messages) == [
        ("ours", slot, slot + ours.jitter_for(slot), RunKind.SCHEDULED),
        ("theirs", slot, slot, RunKind.SCHEDULED),
    ]
    assert timedelta(0) < ours.jitter_for(slot) < jitter  # the due time is not the slot's


def test_a_run_kept_by_the_missed_policy_is_caught_up_and_the_rest_are_one_missed_range(
    backend: FailingOnce, clock: FakeClock
) -> None:
    policy = {"missed": MissedPolicy.RUN_ONCE, "misfire_grace": timedelta(seconds=1)}
    setup = Setup(backend, clock, every("tick", 10, **policy))
    clock.advance(30)
    assert backend.renew_lease(setup.lease, 60.0)
    clock.advance(35)  # stalled: 12:00:10 ... 12:01:00 are all more than the grace late
    setup.publish()
    ((writes, messages),) = backend.sent
    assert [(m.id, m.kind) for m in messages] == [("tick@2026-03-01T12:01:00Z", RunKind.CAUGHT_UP)]
    assert json.loads(messages[0].body)["kind"] == "caught_up"  # the message says so too
    first, last = (datetime(2026, 3, 1, 12, 0, s, tzinfo=UTC) for s in (10, 50))
    assert [w.missed for w in writes] == [
        (MissedSlots("tick", MissReason.SKIPPED, first, last, 5),)
    ]
    # Celery's encoder says so too
    backend.release_lease(setup.lease)
    celery = Setup(backend, clock, every("theirs", 10, protocol="celery", **policy))
    batch = list(celery.planner.decide_due(clock.now()))
    (message,) = celery.publisher.messages(batch, clock.now())
    assert (message.id, message.kind) == ("theirs@2026-03-01T12:01:00Z", RunKind.CAUGHT_UP)
    assert json.loads(message.body)["headers"]["beatd_kind"] == "caught_up"


def test_a_refused_commit_counts_nothing_and_is_decided_again(
    backend: FailingOnce, clock: FakeClock
) -> None:
    setup = Setup(backend, clock, every("tick", 10))
    clock.advance(10)
    backend.fault = NotApplied
    with pytest.raises(NotApplied):
        setup.publish()
    assert setup.ids() == []
    assert setup.publisher.counts.total("published") == 0
    assert setup.publisher.in_doubt == {}
    setup.publish()
    assert setup.ids() == ["tick@2026-03-01T12:00:10Z"]
    assert setup.publisher.counts.total("published") == 1


def test_a_lost_lease_ends_the_round_with_nothing_counted(
    backend: FailingOnce, clock: FakeClock
) -> None:
    setup = Setup(backend, clock, every("tick", 10))
    clock.advance(10)
    backend.release_lease(setup.lease)
    done = setup.publisher.publish(setup.planner, setup.lease)
    assert done.asked
    assert str(done.lease_lost) == "lease epoch 1 of n is no longer held"
    assert setup.ids() == []
    assert setup.publisher.counts.totals() == done.counts_before


def test_a_lost_reply_holds_the_runs_in_doubt_until_the_state_shows_them_applied(
    backend: FailingOnce, clock: FakeClock
) -> None:
    setup = Setup(backend, clock, every("tick", 10))
    clock.advance(10)
    backend.fault = OutcomeUnknown
    with pytest.raises(OutcomeUnknown):
        setup.publish()
    assert set(setup.publisher.in_doubt) == {"tick"}
    assert setup.publisher.counts.total("published") == 0  # not counted while in doubt
    setup.publish()  # decided again: the compare-and-set refuses it, the state shows it applied
    assert setup.ids() == ["tick@2026-03-01T12:00:10Z"]  # once
    assert setup.publisher.in_doubt == {}
    assert setup.publisher.counts.total("published") == 1
    assert not setup.publisher.readopt
