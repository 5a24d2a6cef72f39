"""The in-memory backend against the contract (faults included), and what only it does: one
store per process and name, shared by every handle opened on it."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from beatd.backends import open_backend
from beatd.backends.base import CeleryQueue, StateWrite
from beatd.backends.memory import MemoryBackend, discard
from beatd.errors import BackendError
from tests.backends.contract import BackendContract, Wall, message, state


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
