"""Turns at a SQLite file's one writer within a process (beatd.backends.sqlite_turns): bulk
steps wait for the process's other writers, and are sized by the time they hold the writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from beatd.backends.sqlite_turns import WriteTurns, next_step, turns_of


@pytest.mark.parametrize(
    ("size", "took", "expected"),
    [
        pytest.param(250, 0.05, 500, id="quick_step_grows_at_most_twice"),
        pytest.param(250, 0.1, 250, id="on_target_stays"),
        pytest.param(1000, 0.4, 250, id="slow_step_shrinks_to_the_target"),
        pytest.param(1000, 0.001, 1000, id="never_above_most"),
        pytest.param(100, 30.0, 50, id="never_below_least"),
        pytest.param(300, 0.0, 600, id="no_time_measured_grows"),
    ],
)
def test_next_step(size: int, took: float, expected: int) -> None:
    assert next_step(size, took, least=50, most=1000, target=0.1) == expected


def test_a_step_waits_for_the_writers_under_way_and_no_longer_than_its_limit() -> None:
    turns = WriteTurns()
    assert turns.step_turn(limit=0)
    with turns.writing():
        with turns.writing():
            assert turns.writers == 2
        assert not turns.step_turn(limit=0)
    assert turns.writers == 0
    assert turns.step_turn(limit=0)


def test_every_handle_on_one_file_shares_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "beatd.db"
    assert turns_of(path) is turns_of(path.parent / "." / "beatd.db")
    assert turns_of(path) is not turns_of(path.parent / "other.db")
