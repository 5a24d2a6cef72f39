"""The in-memory backend against the contract (faults included), and what only it does: one
store per process and name, shared by every handle opened on it."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from beatd.backends import open_backend
from beatd.backends.base import CeleryQueue, StateWrite
from beatd.backends.memory import MemoryBackend, discard
from beatd.controls import IDEMPOTENCY_KEY_TTL, TriggerStatus
from beatd.errors import BackendError
from beatd.history import HistoryQuery, MissedSlots
from tests.backends.contract import T0, BackendContract, Wall, message, state
from tests.backends.controls_contract import trigger


@pytest.fixture
def name() -> Iterator[str]:
    fresh = f"test-{uuid.uuid4().hex}"
    yield fresh
    discard(fresh)


@pytest.fixture
def backend_factory(name: str, wall: Wall) -> Callable[[], MemoryBackend]:
    return lambda: MemoryBackend(name, wall_clock=wall)


@pytest.fixture
def backend(backend_factory: Callable[[], MemoryBackend]) -> MemoryBackend:
    return backend_factory()


@pytest.fixture
def history_off_backend(name: str, wall: Wall) -> MemoryBackend:
    return MemoryBackend(name, wall_clock=wall, history=False)


class TestMemoryContract(BackendContract):
    pass


def test_the_url_names_one_store_per_process(name: str) -> None:
    first, second = open_backend(f"memory://{name}"), open_backend(f"memory://{name}")
    other = open_backend(f"memory://{name}-other")
    first.enqueue([message("e", 1)])
    assert first.url == f"memory://{name}"
    assert second.queue_depths() == {"default": 1}
    assert other.queue_depths() == {}
    discard(f"{name}-other")


def test_open_backend_passes_history_off_on(name: str) -> None:
    off = open_backend(f"memory://{name}", history=False)
    lease = off.acquire_lease("a", 10)
    assert lease is not None
    published = message("e", 1)._replace(slot=T0, due=T0)
    off.commit(lease, [StateWrite(state("e", 1, 1), None)], [published])
    assert off.queue_depths() == {"default": 1}
    assert off.history_size() == (0, 0)
    on = open_backend(f"memory://{name}")
    on.commit(lease, [], [published._replace(id="e@2")])
    assert [r.id for r in off.runs(HistoryQuery())] == ["e@2"]


def test_the_runs_of_one_commit_share_one_reading_of_the_clock(name: str) -> None:
    ticks = itertools.count(1_700_000_000)  # a clock that moves on at every reading
    backend = MemoryBackend(name, wall_clock=lambda: float(next(ticks)))
    lease = backend.acquire_lease("a", 600)
    assert lease is not None
    runs = [message(e, 1)._replace(slot=T0, due=T0) for e in ("e", "f")]
    missed = (MissedSlots("e", "skipped", T0, T0, 1),)
    backend.commit(lease, [StateWrite(state("e", 1, 1), None, missed)], runs)
    times = {r.published_at for r in backend.runs(HistoryQuery())}
    assert len(times) == 1
    assert [m.recorded_at for m in backend.missed()] == list(times)


def test_a_celery_destination_is_refused_before_anything_is_written(
    backend: MemoryBackend,
) -> None:
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    celery = message("c", 1)._replace(destination=CeleryQueue("celery"))
    with pytest.raises(BackendError) as caught:
        backend.commit(lease, [StateWrite(state("e", 1, 1), None)], [message("e", 1), celery])
    assert str(caught.value) == (
        "entry c publishes to a CeleryQueue, which needs a Redis broker (Redis transport "
        "only); the memory backend stores beatd's own messages only"
    )
    assert backend.load_states() == {}
    assert backend.queue_depths() == {}


def test_it_warns_that_nothing_outlives_the_process(backend: MemoryBackend, name: str) -> None:
    assert backend.persistence_warnings() == [
        f"memory://{name} keeps the lease, every entry's state and every queued run in this "
        "process only: all of it is lost when the process exits; use sqlite:// or redis:// "
        "for anything but tests"
    ]


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switched as often as CPython allows, so that an unguarded step shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("eager_switching")
def test_concurrent_claims_hand_each_message_out_once(backend: MemoryBackend) -> None:
    backend.enqueue([message(f"e{i}", 1) for i in range(1000)])
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(consumer: str) -> None:
        while (delivery := backend.claim(["default"], consumer, 30)) is not None:
            with lock:
                claimed.append(delivery.id)
            backend.ack(delivery)

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(message(f"e{i}", 1).id for i in range(1000))
    assert backend.queue_depths() == {}


def test_trigger_keys_are_remembered_for_their_ttl_and_then_trimmed(
    backend: MemoryBackend, wall: Wall
) -> None:
    first = backend.trigger(trigger("e", "r1", key="k"))
    wall.now += IDEMPOTENCY_KEY_TTL.total_seconds() - 1
    assert backend.trigger(trigger("e", "r1", run_id="e@x")) == first
    assert backend.trigger(trigger("e", "r2", key="k", run_id="e@y")).status == (
        TriggerStatus.DUPLICATE
    )
    wall.now += 1  # the first request's id and key are 7 days old: forgotten
    again = backend.trigger(trigger("e", "r1", key="k", run_id="e@z"))
    assert (again.status, again.run_id) == (TriggerStatus.PUBLISHED, "e@z")
    wall.now += IDEMPOTENCY_KEY_TTL.total_seconds()
    # request r1 and key k (each remembered anew by the last trigger) and request r2
    assert backend.trim_audit(IDEMPOTENCY_KEY_TTL * 10) == 3
    assert backend.trigger_keys() == []


def test_a_celery_trigger_is_refused_before_anything_is_written(backend: MemoryBackend) -> None:
    with pytest.raises(BackendError) as caught:
        backend.trigger(dataclasses.replace(trigger("c"), celery=True))
    assert str(caught.value) == (
        "entry c publishes to a CeleryQueue, which needs a Redis broker (Redis transport "
        "only); the memory backend stores beatd's own messages only"
    )
    assert (backend.queue_depths(), backend.audit(), backend.trigger_keys()) == ({}, [], [])
