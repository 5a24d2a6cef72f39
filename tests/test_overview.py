"""The overview's slower reads (beatd.operations.overview): the last hour's figures and the
queues' depths, read at most once every few seconds by the backend's clock however often the
page is asked, and read again when that clock goes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.memory import MemoryBackend
from beatd.history import Attempt, RunKind, RunRecord
from beatd.operations.controls import backend_now
from beatd.operations.overview import HOUR_FIGURES_TTL, QUEUES_TTL, Overviews, queue_rows

T0 = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


class Wall:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def failed_run(at: datetime, n: int) -> RunRecord:
    attempt = Attempt(1, "w", "h", 1, at - timedelta(seconds=1), at, "failed")
    return RunRecord(
        f"nightly@{n}", "nightly", at, at, at, "a", 1, RunKind.SCHEDULED, attempts=(attempt,)
    )


def hour(kept: Overviews, store: MemoryBackend) -> dict[str, object]:
    return kept.hour.get(store, backend_now(store))


def test_the_last_hour_is_read_once_per_ttl_however_often_asked() -> None:
    wall = Wall()
    store = MemoryBackend("overview-hour", wall_clock=wall)
    kept = Overviews()
    store.import_history([failed_run(T0 - timedelta(minutes=5), 1)], [])
    first = hour(kept, store)
    store.import_history([failed_run(T0 - timedelta(minutes=4), 2)], [])
    wall.now += HOUR_FIGURES_TTL - 1
    assert (first, hour(kept, store)) == (
        {"late": 0, "missed": 0, "failed": 1, "complete": True},
        {"late": 0, "missed": 0, "failed": 1, "complete": True},
    )
    wall.now += 1  # the figures are as old as the TTL: read again
    assert hour(kept, store) == {"late": 0, "missed": 0, "failed": 2, "complete": True}


def test_a_backend_clock_gone_back_reads_the_hour_again() -> None:
    wall = Wall()
    store = MemoryBackend("overview-hour-back", wall_clock=wall)
    kept = Overviews()
    assert hour(kept, store)["failed"] == 0
    store.import_history([failed_run(T0 - timedelta(minutes=5), 1)], [])
    wall.now -= 1
    assert hour(kept, store)["failed"] == 1


def test_the_queues_are_read_once_per_ttl_and_the_wait_counted_to_the_moment_asked() -> None:
    wall = Wall()
    store = MemoryBackend("overview-queues", wall_clock=wall)
    kept = Overviews()

    def rows() -> list[dict[str, object]]:
        server_now = backend_now(store)
        return queue_rows(kept.queues.get(store, server_now), server_now)

    store.enqueue([Outgoing("e", "e@1", BeatdQueue("reports"), "{}")])
    assert rows() == [{"name": "reports", "depth": 1, "oldest_waiting_s": 0.0}]
    store.enqueue([Outgoing("e", "e@2", BeatdQueue("reports"), "{}")])
    wall.now += QUEUES_TTL - 0.5
    assert rows() == [{"name": "reports", "depth": 1, "oldest_waiting_s": QUEUES_TTL - 0.5}]
    wall.now += 0.5
    assert rows() == [{"name": "reports", "depth": 2, "oldest_waiting_s": QUEUES_TTL}]
