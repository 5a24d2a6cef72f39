"""The contract every backend passes: run these against each implementation.

A test module subclasses `BackendContract` and provides a `backend` fixture (a fresh, empty
backend), a `backend_factory` fixture (a second handle on the same storage, as another process
would have) and an `advance(seconds)` fixture that lets time pass for the backend. The fault
tests wrap that backend in `FaultyBackend` (beatd/backends/faults.py), so every backend meets
the same four faults: a write that failed before writing, one that failed after writing, a lease
lost between the check and the write, and a reply that is delayed. Durations in
the time-dependent tests are multiples of `unit` seconds: 1 where `advance` moves a fake clock,
less where it has to sleep because the backend keeps time itself (Redis's clock). The run
history's part (tests/backends/history_contract.py) also asks for `history_off_backend`, a
handle on the same storage opened with `history=False`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from beatd.backends.base import (
    Backend,
    BeatdQueue,
    CeleryQueue,
    DeadLetter,
    Lease,
    Outgoing,
    StateWrite,
)
from beatd.backends.faults import THIEF, Fault, FaultPlan, FaultyBackend
from beatd.errors import BackendError, LeaseLost, NotApplied, OutcomeUnknown
from beatd.state import EntryState
from tests.backends.controls_contract import ControlsContract
from tests.backends.entries_contract import EntriesContract
from tests.backends.history_contract import HistoryContract
from tests.backends.nodes_contract import NodesContract
from tests.backends.session_keys_contract import SessionKeysContract

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Wall:
    """A wall clock shared by every handle on the same storage, moved by the test (for the
    backends whose clock is the host's: SQLite, memory)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def state(entry: str, minute: int, published: int | None = None) -> EntryState:
    slot = T0 + timedelta(minutes=minute)
    last = T0 + timedelta(minutes=published) if published is not None else None
    return EntryState(entry, slot, last, "every 60s")


def message(
    entry: str, minute: int, queue: str = "default", priority: int | None = None
) -> Outgoing:
    run = f"{entry}@{(T0 + timedelta(minutes=minute)):%Y-%m-%dT%H:%M:%SZ}"
    return Outgoing(entry, run, BeatdQueue(queue, priority), f'{{"id": "{run}"}}')


def moved_on(backend: Backend) -> tuple[Lease, list[StateWrite], list[Outgoing]]:
    """A leader whose entry `e` stands at minute 0, and the commit that moves it to minute 1."""
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [])
    return lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [message("e", 1)]


class BackendContract(
    HistoryContract, ControlsContract, EntriesContract, NodesContract, SessionKeysContract
):
    @pytest.fixture
    def unit(self) -> float:
        return 1.0

    # --- destinations ---------------------------------------------------------------------

    def test_a_destination_not_accepted_is_refused_with_nothing_written(
        self, backend: Backend
    ) -> None:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        assert backend.accepts(BeatdQueue)  # every backend holds beatd's own queues
        for kind in (CeleryQueue,):
            if backend.accepts(kind):
                continue
            refused = Outgoing("e", "e@1", kind("celery"), "{}")
            with pytest.raises(BackendError):
                backend.commit(lease, [StateWrite(state("e", 0), None)], [refused])
            assert (backend.load_states(), backend.queue_depths()) == ({}, {})

    @pytest.fixture
    def plan(self) -> FaultPlan:
        return FaultPlan(hold_timeout=20.0)

    @pytest.fixture
    def faulty(self, backend: Backend, plan: FaultPlan) -> FaultyBackend:
        return FaultyBackend(backend, plan)

    # --- leadership -----------------------------------------------------------------------

    def test_one_leader_at_a_time(self, backend: Backend) -> None:
        first = backend.acquire_lease("a", 10)
        assert first is not None
        assert backend.acquire_lease("b", 10) is None
        info = backend.leader()
        assert info is not None and info.node == "a" and info.epoch == first.epoch

    def test_acquire_again_with_the_held_lease_renews_it_unchanged(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        first = backend.acquire_lease("a", 2 * unit, "cfg1")
        assert first is not None
        advance(1.5 * unit)
        again = backend.acquire_lease("a", 2 * unit, "cfg2", held=first)
        assert again == first
        advance(1.5 * unit)  # renewed: still held past the first TTL
        assert backend.acquire_lease("b", 10) is None
        info = backend.leader()
        assert info is not None and info.epoch == first.epoch and info.config_hash == "cfg2"

    def test_the_same_node_name_without_the_token_does_not_take_the_lease(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        first = backend.acquire_lease("same", 10)
        assert first is not None
        other = backend_factory()  # another process given the same --node
        assert other.acquire_lease("same", 10) is None
        stale = Lease("same", "0" * 32, first.epoch)
        assert other.acquire_lease("same", 10, held=stale) is None
        assert backend.renew_lease(first, 10)
        info = backend.leader()
        assert info is not None and info.epoch == first.epoch

    def test_an_expired_held_lease_is_taken_afresh(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        first = backend.acquire_lease("a", 1 * unit)
        assert first is not None
        advance(1.5 * unit)
        again = backend.acquire_lease("a", 10, held=first)
        assert again is not None and again != first and again.epoch == first.epoch + 1

    def test_the_same_node_name_under_another_token_does_not_take_the_lease(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        first = backend.acquire_lease("a", 10)
        assert first is not None
        second = backend_factory()
        assert second.acquire_lease("a", 10) is None
        assert second.acquire_lease("a", 10, held=Lease("a", "0" * 32, first.epoch)) is None
        assert second.acquire_lease("a", 10, held=Lease("a", first.token, first.epoch + 1)) is None
        info = backend.leader()
        assert info is not None and info.epoch == first.epoch
        assert backend.renew_lease(first, 10)

    def test_a_fresh_take_starts_above_min_epoch_and_never_goes_back(
        self, backend: Backend
    ) -> None:
        first = backend.acquire_lease("a", 10, min_epoch=7)
        assert first is not None and first.epoch == 8
        backend.release_lease(first)
        second = backend.acquire_lease("b", 10, min_epoch=3)  # below the last epoch: ignored
        assert second is not None and second.epoch == 9
        backend.release_lease(second)
        third = backend.acquire_lease("a", 10)
        assert third is not None and third.epoch == 10

    def test_release_lets_a_standby_take_over_with_a_new_epoch(self, backend: Backend) -> None:
        first = backend.acquire_lease("a", 10)
        assert first is not None
        backend.release_lease(first)
        assert backend.leader() is None
        second = backend.acquire_lease("b", 10)
        assert second is not None and second.epoch == first.epoch + 1
        assert not backend.renew_lease(first, 10)

    def test_expired_lease_passes_on(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        first = backend.acquire_lease("a", 1 * unit)
        assert first is not None
        advance(1.5 * unit)
        second = backend.acquire_lease("b", 10)
        assert second is not None and second.epoch > first.epoch
        assert not backend.renew_lease(first, 10)

    def test_renew_extends(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        lease = backend.acquire_lease("a", 2 * unit)
        assert lease is not None
        advance(1.5 * unit)
        assert backend.renew_lease(lease, 2 * unit)
        advance(1.5 * unit)
        assert backend.acquire_lease("b", 2 * unit) is None

    # --- run state ------------------------------------------------------------------------

    def test_commit_writes_state_and_messages_together(self, backend: Backend) -> None:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        assert backend.commit(lease, [StateWrite(state("e", 0), None)], []) == set()
        rejected = backend.commit(
            lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [message("e", 1)]
        )
        assert rejected == set()
        assert backend.load_states() == {"e": state("e", 1, 1)}
        assert backend.queue_depths() == {"default": 1}

    def test_commit_is_compare_and_set_on_the_horizon(self, backend: Backend) -> None:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        backend.commit(
            lease, [StateWrite(state("e", 5), None), StateWrite(state("f", 0), None)], []
        )
        stale = StateWrite(state("e", 6, 6), state("e", 4).last_slot)
        fresh = StateWrite(state("f", 1, 1), state("f", 0).last_slot)
        rejected = backend.commit(lease, [stale, fresh], [message("e", 6), message("f", 1)])
        assert rejected == {"e"}
        assert backend.load_states()["e"] == state("e", 5)
        assert backend.queue_depths() == {"default": 1}
        # a new entry's baseline is refused when a state already exists
        assert backend.commit(lease, [StateWrite(state("e", 9), None)], []) == {"e"}

    def test_commit_without_the_lease_writes_nothing(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        old = backend.acquire_lease("a", 10)
        assert old is not None
        backend.release_lease(old)
        other = backend_factory()
        new = other.acquire_lease("b", 10)
        assert new is not None
        with pytest.raises(LeaseLost):
            backend.commit(old, [StateWrite(state("e", 1, 1), None)], [message("e", 1)])
        assert backend.load_states() == {}
        assert backend.queue_depths() == {}

    def test_send_commit_then_wait_is_a_commit(self, backend: Backend) -> None:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        backend.commit(lease, [StateWrite(state("e", 0), None)], [])
        first = backend.send_commit(
            lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [message("e", 1)]
        )
        assert first() == set()
        # sent from the state before the first: refused, the caller resyncs
        second = backend.send_commit(
            lease, [StateWrite(state("e", 1, 1), state("e", 0).last_slot)], [message("e", 1)]
        )
        assert second() == {"e"}
        assert backend.load_states() == {"e": state("e", 1, 1)}
        assert backend.queue_depths() == {"default": 1}

    def test_send_commit_without_the_lease_raises_when_sent_or_waited_for(
        self, backend: Backend, backend_factory: Callable[[], Backend]
    ) -> None:
        old = backend.acquire_lease("a", 10)
        assert old is not None
        backend.release_lease(old)
        new = backend_factory().acquire_lease("b", 10)
        assert new is not None
        with pytest.raises(LeaseLost):
            backend.send_commit(old, [StateWrite(state("e", 1, 1), None)], [message("e", 1)])()
        assert backend.load_states() == {}
        assert backend.queue_depths() == {}

    def test_forget_drops_state(self, backend: Backend) -> None:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        backend.commit(
            lease, [StateWrite(state("e", 0), None), StateWrite(state("f", 0), None)], []
        )
        backend.forget(lease, ["e"])
        assert set(backend.load_states()) == {"f"}

    # --- queues ---------------------------------------------------------------------------

    def test_claim_ack(self, backend: Backend) -> None:
        backend.enqueue([message("e", 1)])
        delivery = backend.claim(["default"], "w1", 30)
        assert delivery is not None and delivery.deliveries == 1
        assert backend.claim(["default"], "w2", 30) is None
        backend.ack(delivery)
        assert backend.queue_depths() == {}

    def test_priority_then_age(self, backend: Backend) -> None:
        backend.enqueue(
            [message("low", 1, priority=1), message("mid", 1), message("high", 1, priority=9)]
        )
        backend.enqueue([message("high2", 1, priority=9)])
        order = []
        while (d := backend.claim(["default"], "w", 30)) is not None:
            order.append(d.id.split("@")[0])
            backend.ack(d)
        assert order == ["high", "high2", "mid", "low"]

    def test_only_named_queues(self, backend: Backend) -> None:
        backend.enqueue([message("a", 1, queue="q1"), message("b", 1, queue="q2")])
        delivery = backend.claim(["q2"], "w", 30)
        assert delivery is not None and delivery.queue == "q2"

    def test_lapsed_claim_is_delivered_again(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.enqueue([message("e", 1)])
        first = backend.claim(["default"], "w1", 1 * unit)
        assert first is not None
        advance(1.5 * unit)
        second = backend.claim(["default"], "w2", 30)
        assert second is not None and second.id == first.id and second.deliveries == 2
        backend.ack(first)  # the first worker's late ack must not remove the second's claim
        assert backend.queue_depths() == {"default": 1}
        assert not backend.extend(first, 30)
        # nor may it retry, release or dead-letter what is now the second worker's
        backend.retry(first, '{"stale": true}', 0)
        backend.release(first)
        backend.dead_letter(first, "stale")
        assert backend.dead_letters() == []
        assert backend.claim(["default"], "w3", 30) is None
        backend.ack(second)
        assert backend.queue_depths() == {}

    def test_extend_keeps_the_claim(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.enqueue([message("e", 1)])
        first = backend.claim(["default"], "w1", 2 * unit)
        assert first is not None
        advance(1.5 * unit)
        assert backend.extend(first, 2 * unit)
        advance(1.5 * unit)
        assert backend.claim(["default"], "w2", 30) is None

    def test_release_gives_back_without_counting(self, backend: Backend) -> None:
        backend.enqueue([message("e", 1)])
        first = backend.claim(["default"], "w1", 30)
        assert first is not None
        backend.release(first)
        again = backend.claim(["default"], "w2", 30)
        assert again is not None and again.deliveries == 1

    def test_retry_replaces_body_after_delay(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        backend.enqueue([message("e", 1)])
        first = backend.claim(["default"], "w1", 30)
        assert first is not None
        backend.retry(first, '{"attempt": 2}', 2 * unit)
        assert backend.claim(["default"], "w1", 30) is None
        advance(2.5 * unit)
        again = backend.claim(["default"], "w1", 30)
        assert again is not None and again.body == '{"attempt": 2}'

    def test_dead_letters_and_requeue(self, backend: Backend) -> None:
        backend.enqueue([message("a", 1), message("b", 1)])
        for _ in range(2):
            delivery = backend.claim(["default"], "w", 30)
            assert delivery is not None
            backend.dead_letter(delivery, "boom")
        dead = backend.dead_letters()
        assert [(d.id.split("@")[0], d.reason, d.deliveries) for d in dead] == [
            ("a", "boom", 1),
            ("b", "boom", 1),
        ]
        assert backend.queue_depths() == {}
        assert backend.requeue_dead(dead[0].id) == 1
        assert [d.id for d in backend.dead_letters()] == [dead[1].id]
        assert backend.requeue_dead(None) == 1
        assert backend.queue_depths() == {"default": 2}

    def test_oldest_waiting_is_per_queue_the_oldest_ready_message_not_handed_out(
        self, backend: Backend, advance: Callable[[float], None], unit: float
    ) -> None:
        assert backend.oldest_waiting() == {}
        backend.enqueue([message("a", 1, "q1")])
        advance(2 * unit)
        backend.enqueue([message("b", 1, "q1"), message("c", 1, "q2")])
        first = backend.oldest_waiting()
        assert sorted(first) == ["q1", "q2"]
        assert (first["q2"] - first["q1"]).total_seconds() >= 1.5 * unit
        taken = backend.claim(["q1"], "w", 30)
        assert taken is not None and taken.id == message("a", 1).id
        after = backend.oldest_waiting()
        assert abs((after["q1"] - first["q2"]).total_seconds()) < 0.5 * unit
        assert after["q2"] == first["q2"]
        for queue in ("q1", "q2"):
            assert backend.claim([queue], "w", 30) is not None
        assert backend.oldest_waiting() == {}

    def test_dead_letters_deleted_one_and_all_once(self, backend: Backend) -> None:
        backend.enqueue([message("a", 1), message("b", 1), message("c", 1)])
        for _ in range(3):
            delivery = backend.claim(["default"], "w", 30)
            assert delivery is not None
            backend.dead_letter(delivery, "boom")
        ids = [d.id for d in backend.dead_letters()]
        assert backend.delete_dead(ids[1]) == 1
        assert backend.delete_dead(ids[1]) == 0  # gone: a repeat deletes nothing
        assert backend.delete_dead("no-such@2026-03-01T12:01:00Z") == 0
        assert [d.id for d in backend.dead_letters()] == [ids[0], ids[2]]
        assert backend.delete_dead(None) == 2
        assert (backend.dead_letters(), backend.delete_dead(None)) == ([], 0)
        assert backend.queue_depths() == {}  # deleted, not requeued

    def test_dead_letters_counted_and_read_a_page_at_a_time(self, backend: Backend) -> None:
        assert (backend.count_dead_letters(), backend.dead_letter_page(0, 10)) == (0, [])
        backend.enqueue([message(name, 1) for name in "abcde"])
        for _ in range(5):
            delivery = backend.claim(["default"], "w", 30)
            assert delivery is not None
            backend.dead_letter(delivery, "boom")
        every = backend.dead_letters()
        assert backend.count_dead_letters() == 5
        assert backend.dead_letter_page(0, 2) == every[:2]
        assert backend.dead_letter_page(2, 2) == every[2:4]
        assert backend.dead_letter_page(4, 2) == every[4:]
        assert backend.dead_letter_page(5, 2) == []
        assert backend.dead_letter_page(1, 0) == []
        backend.delete_dead(every[0].id)
        assert (backend.count_dead_letters(), backend.dead_letter_page(0, 1)) == (4, every[1:2])

    def test_states_of_some_entries_are_read_without_the_others(self, backend: Backend) -> None:
        assert backend.states_of([]) == {}
        lease = backend.acquire_lease("a", 60)
        assert lease is not None
        written = [state(f"e{i:04}", i, i) for i in range(1200)] + [state("\u00e9t\u00e9", 1)]
        backend.commit(lease, [StateWrite(s, None) for s in written], [])
        asked = ["e0007", "no-such", "\u00e9t\u00e9", "e1199", "e0007"]
        assert backend.states_of(asked) == {
            "e0007": written[7],
            "\u00e9t\u00e9": written[-1],
            "e1199": written[1199],
        }
        every = [s.entry for s in written]  # more than one statement's worth on SQLite
        assert backend.states_of(every) == backend.load_states()

    def test_every_state_is_read_a_page_at_a_time(self, backend: Backend) -> None:
        assert backend.state_page("", 100) == ({}, "")
        lease = backend.acquire_lease("a", 60)
        assert lease is not None
        written = [state(f"e{i:04}", i, i) for i in range(1200)] + [state("\u00e9t\u00e9", 1)]
        backend.commit(lease, [StateWrite(s, None) for s in written], [])
        seen: dict[str, EntryState] = {}
        cursor, pages = "", 0
        while True:
            page, cursor = backend.state_page(cursor, 100)
            seen.update(page)
            pages += 1
            if not cursor:
                break
            assert pages < 100, "the pass never ends"
        assert seen == {s.entry: s for s in written}
        assert pages >= 2, pages  # in steps (Redis takes `limit` as a hint)

    def test_dead_letters_counted_per_queue_through_every_way_in_and_out(
        self, backend: Backend
    ) -> None:
        assert backend.dead_letter_counts() == {}
        backend.enqueue([message("a", 1, "q1"), message("b", 1, "q1"), message("c", 1, "q2")])
        for _ in range(3):
            delivery = backend.claim(["q1", "q2"], "w", 30)
            assert delivery is not None
            backend.dead_letter(delivery, "boom")
        assert backend.dead_letter_counts() == {"q1": 2, "q2": 1}
        carried = DeadLetter("m@2026-03-01T12:05:00Z", "q3", "{}", "carried", T0, 2)
        assert backend.add_dead_letters([carried, carried]) == 1
        assert backend.add_dead_letters([carried]) == 0  # already there: not counted twice
        assert backend.dead_letter_counts() == {"q1": 2, "q2": 1, "q3": 1}
        first = backend.dead_letters()[0]
        assert backend.requeue_dead(first.id) == 1
        assert backend.requeue_dead(first.id) == 0
        assert backend.dead_letter_counts() == {"q1": 1, "q2": 1, "q3": 1}
        assert backend.delete_dead(carried.id) == 1
        assert backend.delete_dead(carried.id) == 0
        assert backend.dead_letter_counts() == {"q1": 1, "q2": 1}  # a queue with none is left out
        every = Counter(letter.queue for letter in backend.dead_letters())
        assert backend.dead_letter_counts() == dict(every)
        assert backend.delete_dead(None) == 2
        assert backend.dead_letter_counts() == {}

    # --- faults ---------------------------------------------------------------------------

    def test_a_commit_that_failed_before_writing_wrote_nothing_and_its_retry_applies(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease, writes, messages = moved_on(backend)
        plan.inject("commit", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied) as caught:
            faulty.commit(lease, writes, messages)
        assert str(caught.value) == (
            "injected fault: commit failed before writing; nothing was written"
        )
        assert backend.load_states() == {"e": state("e", 0)}
        assert backend.queue_depths() == {}
        assert faulty.commit(lease, writes, messages) == set()
        assert backend.load_states() == {"e": state("e", 1, 1)}
        assert backend.queue_depths() == {"default": 1}

    def test_a_commit_that_failed_after_writing_was_applied_and_its_retry_is_refused(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease, writes, messages = moved_on(backend)
        plan.inject("commit", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown) as caught:
            faulty.send_commit(lease, writes, messages)()
        assert str(caught.value) == (
            "injected fault: commit failed after writing; it was applied, but the caller "
            "cannot know: outcome unknown"
        )
        # retried with the same expected horizon: the compare-and-set refuses it
        assert faulty.commit(lease, writes, messages) == {"e"}
        assert backend.load_states() == {"e": state("e", 1, 1)}
        assert backend.queue_depths() == {"default": 1}  # published once

    def test_a_lease_stolen_between_check_and_write_leaves_state_and_queues_unchanged(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease, writes, messages = moved_on(backend)
        assert backend.renew_lease(lease, 60)  # checked: still the leader
        plan.inject("commit", Fault.LOSE_LEASE)
        with pytest.raises(LeaseLost):
            faulty.send_commit(lease, writes, messages)()
        assert backend.load_states() == {"e": state("e", 0)}
        assert backend.queue_depths() == {}
        info = backend.leader()
        assert plan.thief is not None and info is not None
        assert (info.node, info.epoch) == (THIEF, plan.thief.epoch)
        with pytest.raises(LeaseLost):
            backend.forget(lease, ["e"])
        assert set(backend.load_states()) == {"e"}

    def test_a_delayed_reply_blocks_the_waiter_while_the_caller_works(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease, writes, messages = moved_on(backend)
        plan.inject("commit", Fault.DELAY_REPLY)
        wait = faulty.send_commit(lease, writes, messages)
        outcome: list[set[str]] = []
        waiter = threading.Thread(target=lambda: outcome.append(wait()))
        waiter.start()
        assert plan.holding.wait(10), "the waiter never started waiting for the reply"
        assert outcome == []  # still held
        faulty.enqueue([message("other", 1, queue="q2")])  # the caller works meanwhile
        assert backend.queue_depths()["q2"] == 1
        plan.release()
        waiter.join(10)
        assert outcome == [set()]
        assert backend.load_states() == {"e": state("e", 1, 1)}
        assert backend.queue_depths() == {"default": 1, "q2": 1}

    def test_an_ack_that_failed_after_writing_was_applied_and_repeating_it_is_harmless(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        backend.enqueue([message("e", 1), message("f", 1)])
        delivery = faulty.claim(["default"], "w1", 30)
        assert delivery is not None
        plan.inject("ack", Fault.FAIL_AFTER_WRITE)
        with pytest.raises(OutcomeUnknown):
            faulty.ack(delivery)
        assert backend.queue_depths() == {"default": 1}
        faulty.ack(delivery)  # the worker settles it again: nothing more is removed
        assert backend.queue_depths() == {"default": 1}

    def test_a_claim_that_failed_before_writing_leaves_the_message_ready(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        backend.enqueue([message("e", 1)])
        plan.inject("claim", Fault.FAIL_BEFORE_WRITE)
        with pytest.raises(NotApplied):
            faulty.claim(["default"], "w1", 30)
        delivery = faulty.claim(["default"], "w1", 30)
        assert delivery is not None and delivery.deliveries == 1
        assert plan.injected == [("claim", Fault.FAIL_BEFORE_WRITE)]

    def test_a_lease_stolen_before_a_renewal_is_not_renewed(
        self, backend: Backend, faulty: FaultyBackend, plan: FaultPlan
    ) -> None:
        lease = backend.acquire_lease("a", 60)
        assert lease is not None
        plan.inject("renew_lease", Fault.LOSE_LEASE)
        assert not faulty.renew_lease(lease, 60)
        info = backend.leader()
        assert plan.thief is not None and info is not None
        assert (info.node, info.epoch) == (THIEF, lease.epoch + 1)
