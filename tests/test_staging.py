"""A new leader adopts in stages (beatd.staging, issue 18's start-up at a million entries), on
the memory backend and a fake clock: pages of 10 runtime entries read a step, stages of 10, so
that a hundred entries take a dozen steps with the due slots published in between."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

from beatd.backends.memory import MemoryBackend, discard
from beatd.clock import FakeClock
from beatd.config import Config, ConfigError
from beatd.errors import TransientBackendError
from beatd.history import HistoryQuery
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.state import EntryState
from tests.test_scheduler_entries import BY, T0, config, file_entry, put

NAME = "staging"
RUNTIME = 100


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + timedelta(seconds=50))  # 12:00:50: the minute's slot in 10 s


class Counting(MemoryBackend):
    """Counts the reads of every state at once, which a staged adoption never makes; fails the
    next read of states naming `fail_for` (a transient error), once."""

    whole_reads = 0
    fail_for: str | None = None

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        Counting.whole_reads += 1
        return super().load_states(pace)

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        if Counting.fail_for is not None and Counting.fail_for in names:
            Counting.fail_for = None
            raise TransientBackendError("injected at states_of")
        return super().states_of(names)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[Counting]:
    discard(NAME)
    Counting.whole_reads, Counting.fail_for = 0, None
    yield Counting(NAME, wall_clock=lambda: clock.now().timestamp())
    discard(NAME)


def staged(
    backend: MemoryBackend, clock: FakeClock, cfg: Config, node: str = "a", **kw: Any
) -> Scheduler:
    """A scheduler reading 10 runtime entries a page, adopting 10 a stage and passing over 10
    states a round."""
    settings = SchedulerSettings(node=node, lease_ttl=10, max_clock_skew=3600, **kw)
    beat = Scheduler(backend, lambda: cfg, clock, settings)
    beat.runtime.page = 10
    beat.stages.stage = beat.stages.state_page = 10
    beat.stages.staged_above = 50
    return beat


def restarted(
    backend: MemoryBackend, clock: FakeClock, count: int = RUNTIME, **kw: Any
) -> Scheduler:
    """`count` entries adopted and published at 12:01:00 by a leader that then stopped; a new
    leader (not stepped yet) that reads them all in its first step, then stages them."""
    tenants(backend, clock, count)
    first = staged(backend, clock, config())
    run_for(first, 15)  # 12:01:05
    first.shutdown()
    again = staged(backend, clock, config(), node="b", **kw)
    again.runtime.page = 1000
    return again


def staging_before_the_minute(backend: MemoryBackend, clock: FakeClock, name: str) -> Scheduler:
    """A restarted leader staging at 12:01:59.98, entry `name` staged already."""
    again = restarted(backend, clock)
    clock.advance(54.98)
    again.step()
    assert again.stages.staging is not None and name in again.planner.entries
    return again


def queued_ids(backend: MemoryBackend) -> list[str]:
    """Every run id in the queue (each claimed once: a run published twice is two)."""
    ids = []
    while (delivery := backend.claim(["default"], "w", 3600)) is not None:
        ids.append(delivery.id)
    return ids


def tenants(backend: MemoryBackend, clock: FakeClock, count: int = RUNTIME, **kw: Any) -> None:
    for i in range(count):
        put(backend, clock, f"tenant-{i:03}", **kw)


def slots(backend: MemoryBackend, entry: str | None = None) -> list[tuple[str, str]]:
    runs = backend.runs(HistoryQuery(entry=entry, limit=10_000))
    return sorted((r.entry, r.slot.strftime("%H:%M:%S")) for r in runs if r.slot is not None)


def steps_until_adopted(beat: Scheduler, limit: int = 100) -> int:
    for step in range(1, limit + 1):
        beat.step()
        if beat._adopted:
            return step
    raise AssertionError(f"not adopted after {limit} steps")


def test_a_new_leader_publishes_a_file_entry_while_it_reads_and_stages_the_runtime_entries(
    backend: Counting, clock: FakeClock
) -> None:
    tenants(backend, clock)
    beat = staged(backend, clock, config(file_entry("files")))
    beat.step()
    assert beat.is_leader and beat.runtime.reading and not beat._adopted
    assert sorted(beat.planner.entries)[:2] == ["files", "tenant-000"]
    assert len(beat.planner) == 1 + 10  # the files, then one page read and staged
    for _ in range(5):
        clock.advance(2)  # to 12:01:00: due while six of the ten pages are staged
        beat.step()
    assert not beat._adopted and len(beat.planner) == 1 + 60
    # new to the backend, each starts from when it is staged: those staged at 12:01:00 itself
    # (the last ten) from after that slot
    assert slots(backend) == [("files", "12:01:00")] + [
        (f"tenant-{i:03}", "12:01:00") for i in range(50)
    ]
    assert steps_until_adopted(beat) > 3
    assert len(beat.planner) == 1 + RUNTIME and not beat.runtime.reading
    assert Counting.whole_reads == 0  # states read by name, a stage at a time


def test_a_restarted_leader_adopting_in_stages_publishes_each_slot_once(
    backend: Counting, clock: FakeClock
) -> None:
    """The slots that passed while the leader was down, and those that pass while it stages,
    are each published once: late for the entries staged after their slot (run_once)."""
    tenants(backend, clock)
    first = staged(backend, clock, config(file_entry("files")))
    run_for(first, 15)  # 12:01:05: every entry's 12:01:00 published
    first.shutdown()  # the lease given back
    clock.advance(115)  # down over 12:02:00 and 12:03:00
    second = staged(backend, clock, config(file_entry("files")), node="b")
    while not second._adopted:
        second.step()
        clock.advance(2)  # the stages span the 12:03:10 ... 12:03:30 of the fake clock
    run_for(second, 60)  # to about 12:04:30
    published = slots(backend)
    ids = queued_ids(backend)
    assert len(ids) == len(set(ids)) == len(published)
    for name in ["files", *(f"tenant-{i:03}" for i in range(RUNTIME))]:
        mine = [slot for entry, slot in published if entry == name]
        assert mine[0] == "12:01:00" and mine[-1] == "12:04:00", (name, mine)
        assert "12:03:00" in mine  # the downtime's slots: one run (run_once), not none


def test_changes_during_the_staging_reach_the_plan(backend: Counting, clock: FakeClock) -> None:
    tenants(backend, clock)
    beat = staged(backend, clock, config())
    run_for(beat, 15)  # read, staged, adopted in one step each: a restart follows
    beat.shutdown()
    clock.advance(30)
    again = staged(backend, clock, config(), node="b")
    again.runtime.page = 100  # the view reads them all at once: then 10 stages of 10
    again.stages.staged_above = 50
    again.step()
    assert again.stages.staging is not None and len(again.planner) == 10
    backend.remove_entry("tenant-001", BY)  # staged
    put(backend, clock, "tenant-099", every="1h")  # not yet staged
    put(backend, clock, "tenant-new")  # new
    steps_until_adopted(again)
    entries = again.planner.entries
    assert "tenant-001" not in entries and "tenant-new" in entries
    assert str(entries["tenant-099"].schedule) == str(again.runtime.entries["tenant-099"].schedule)
    assert len(entries) == RUNTIME
    assert again.adoption.removed.absent == ["tenant-001"]  # its state kept for the grace
    run_for(again, 60)
    assert slots(backend, "tenant-001") == [("tenant-001", "12:01:00")]


def test_a_state_whose_entry_left_while_no_leader_ran_is_found_by_the_last_pass(
    backend: Counting, clock: FakeClock
) -> None:
    again = restarted(backend, clock, 60)
    backend.remove_entry("tenant-042", BY)  # no leader to see it go
    steps_until_adopted(again)
    assert again.adoption.removed.absent == ["tenant-042"]
    assert set(again.adoption.kept) == {"tenant-042"}
    assert Counting.whole_reads == 0


def test_a_leader_that_loses_its_lease_while_staging_stops_staging(
    backend: Counting, clock: FakeClock
) -> None:
    tenants(backend, clock)
    beat = staged(backend, clock, config(file_entry("files")))
    beat.step()
    assert beat.stages.staging is not None
    backend.release_lease(beat.lease)  # type: ignore[arg-type]
    intruder = backend.acquire_lease("b", 60)
    assert intruder is not None
    run_for(beat, 10)
    assert not beat.is_leader and beat.stages.staging is None and len(beat.planner) == 0


def test_a_few_runtime_entries_held_are_adopted_in_one_step(
    backend: Counting, clock: FakeClock
) -> None:
    tenants(backend, clock, 20)
    beat = staged(backend, clock, config(file_entry("files")))
    beat.runtime.page = 100  # read whole in the first step: under `staged_above`
    beat.step()
    assert beat._adopted and beat.stages.staging is None and len(beat.planner) == 21
    assert Counting.whole_reads == 1


def test_a_reload_during_the_staging_begins_it_again_with_the_new_files(
    backend: Counting, clock: FakeClock
) -> None:
    tenants(backend, clock)
    configs = [config(file_entry("files"))]
    settings = SchedulerSettings(node="a", lease_ttl=10, max_clock_skew=3600)
    beat = Scheduler(backend, lambda: configs[-1], clock, settings)
    beat.runtime.page, beat.stages.stage = 10, 10
    for _ in range(3):
        beat.step()
    assert beat.stages.staging is not None and "files" in beat.planner.entries
    configs.append(config(file_entry("other")))
    beat.request_reload()
    beat.step()
    assert "files" not in beat.planner.entries and "other" in beat.planner.entries
    steps_until_adopted(beat)
    assert sorted(beat.planner.entries)[:1] == ["other"] and len(beat.planner) == 1 + RUNTIME
    assert backend.file_entries() == {"other": "/etc/beatd/app.yaml"}


def test_an_entry_removed_and_added_again_during_the_staging_is_not_forgotten(
    backend: Counting, clock: FakeClock
) -> None:
    again = restarted(backend, clock, 60)
    again.step()
    assert "tenant-001" in again.planner.entries  # staged in the first stage
    backend.remove_entry("tenant-001", BY)
    clock.advance(0.3)  # the feed's next read
    again.step()
    assert "tenant-001" not in again.planner.entries and again.stages.staging is not None
    put(backend, clock, "tenant-001")  # back within the grace, the same schedule
    clock.advance(0.3)
    again.step()
    assert again.stages.staging is not None  # read while staging: into a later stage
    steps_until_adopted(again)
    assert "tenant-001" in again.planner.entries and again.adoption.removed.absent == []
    run_for(again, 3700)  # past the grace: nothing of a live entry is forgotten
    assert backend.states_of(["tenant-001"]) != {}
    assert slots(backend, "tenant-001")[-1] == ("tenant-001", "13:02:00")


def test_a_removal_10_ms_before_the_slot_publishes_nothing_during_the_staging(
    backend: Counting, clock: FakeClock
) -> None:
    again = staging_before_the_minute(backend, clock, "tenant-001")
    clock.advance(0.01)
    backend.remove_entry("tenant-001", BY)  # acknowledged 10 ms before its slot
    clock.advance(0.01)  # 12:02:00.00
    again.step()
    assert slots(backend, "tenant-001") == [("tenant-001", "12:01:00")]
    assert again.stages.staging is not None


def test_a_refused_commit_whose_resync_fails_during_the_staging_loses_no_entry(
    backend: Counting, clock: FakeClock
) -> None:
    again = staging_before_the_minute(backend, clock, "tenant-005")
    moved = backend.states_of(["tenant-005"])["tenant-005"]
    with backend._store.lock:  # another writer moved it: its commit will be refused
        backend._store.states["tenant-005"] = moved._replace(
            last_slot=moved.last_slot - timedelta(seconds=1)
        )
    Counting.fail_for = "tenant-005"  # and the resync's read fails
    clock.advance(0.02)  # 12:02:00
    again.step()
    assert again.publisher.readopt  # it waits for an adoption of every entry
    run_for(again, 160)  # to about 12:04:40
    published = [slot for _, slot in slots(backend, "tenant-005")]
    assert {"12:03:00", "12:04:00"} <= set(published), published


def test_at_start_a_standby_whose_file_names_a_runtime_entry_read_later_stops(
    backend: Counting, clock: FakeClock
) -> None:
    tenants(backend, clock, 30)
    assert backend.acquire_lease("leader", 60) is not None  # another node leads
    standby = staged(backend, clock, config(file_entry("tenant-025")), node="b")
    with pytest.raises(ConfigError):
        for _ in range(10):  # three pages of 10, then the feed
            standby.step()


def test_an_entry_added_again_during_the_last_pass_keeps_its_state(
    backend: Counting, clock: FakeClock
) -> None:
    again = restarted(backend, clock, 60, removed_grace=60)
    again.runtime.page = 10  # a page a step: the pass over the states begins later
    backend.remove_entry("tenant-042", BY)  # no leader sees it go: its state stays
    for _ in range(50):
        again.step()
        staging = again.stages.staging
        if staging is not None and "tenant-042" in staging._absent:  # its page was read
            break
    assert again.stages.staging is not None and again.stages.staging._cursor  # more pages
    put(backend, clock, "tenant-042")  # added again while the pass goes on
    clock.advance(0.5)
    steps_until_adopted(again)
    assert "tenant-042" in again.planner.entries and again.adoption.removed.absent == []
    run_for(again, 180)  # past the grace
    assert "tenant-042" in backend.states_of(["tenant-042"])
    published = [slot for _, slot in slots(backend, "tenant-042")]
    assert {"12:02:00", "12:03:00", "12:04:00"} <= set(published), published


def test_an_entry_added_during_the_staging_reaches_the_plan_within_a_second(
    backend: Counting, clock: FakeClock
) -> None:
    again = restarted(backend, clock)
    again.step()
    assert again.stages.staging is not None and len(again.planner) == 10
    put(backend, clock, "tenant-new")
    for _ in range(4):  # 1 s of rounds
        clock.advance(0.25)
        again.step()
    assert "tenant-new" in again.planner.entries and again.stages.staging is not None


def test_a_stage_that_fails_loses_no_entry(backend: Counting, clock: FakeClock) -> None:
    again = restarted(backend, clock, 60)
    for _ in range(50):
        again.step()
        staging = again.stages.staging
        assert staging is not None
        if staging._cursor:  # the pass over the states has begun: every entry swept
            break
    put(backend, clock, "tenant-new")  # staged after the sweep
    Counting.fail_for = "tenant-new"  # its stage fails once
    for _ in range(100):
        clock.advance(0.5)
        again.step()
    assert again._adopted and "tenant-new" in again.planner.entries
