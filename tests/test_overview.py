"""The overview's last hour (beatd.operations.overview): read from the run history at most once
every `HOUR_FIGURES_TTL` seconds by the backend's clock, however often the page is asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from beatd.backends.memory import MemoryBackend
from beatd.history import Attempt, RunKind, RunRecord
from beatd.operations.overview import HOUR_FIGURES_TTL, HourFigures

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


def test_the_last_hour_is_read_once_per_ttl_however_often_asked() -> None:
    wall = Wall()
    store = MemoryBackend("hour-figures", wall_clock=wall)
    figures = HourFigures()
    store.import_history([failed_run(T0 - timedelta(minutes=5), 1)], [])
    first = figures.get(store)
    store.import_history([failed_run(T0 - timedelta(minutes=4), 2)], [])
    wall.now += HOUR_FIGURES_TTL - 1
    assert (first, figures.get(store)) == (
        {"late": 0, "missed": 0, "failed": 1, "complete": True},
        {"late": 0, "missed": 0, "failed": 1, "complete": True},
    )
    wall.now += 1  # the figures are as old as the TTL: read again
    assert figures.get(store) == {"late": 0, "missed": 0, "failed": 2, "complete": True}


def test_a_backend_clock_gone_back_reads_the_hour_again() -> None:
    wall = Wall()
    store = MemoryBackend("hour-figures-back", wall_clock=wall)
    figures = HourFigures()
    assert figures.get(store)["failed"] == 0
    store.import_history([failed_run(T0 - timedelta(minutes=5), 1)], [])
    wall.now -= 1
    assert figures.get(store)["failed"] == 1
