"""beatd.turns: other threads wait for a gap in the scheduling loop's work."""

from __future__ import annotations

import threading
import time

from beatd.turns import LoopTurns


def waited_in_thread(turns: LoopTurns, need: float, limit: float) -> list[float]:
    waited: list[float] = []
    thread = threading.Thread(target=lambda: waited.append(turns.wait_gap(need, limit)))
    thread.start()
    thread.join(10)
    return waited


def test_before_the_loop_runs_nothing_waits() -> None:
    assert LoopTurns().wait_gap(need=0.05, limit=5.0) < 0.5


def test_a_loop_asleep_for_long_lets_work_go_at_once() -> None:
    turns = LoopTurns()
    turns.awake()
    turns.sleeping(10.0)
    assert turns.wait_gap(need=0.05, limit=5.0) < 0.5


def test_work_waits_while_the_loop_is_awake_until_it_sleeps() -> None:
    turns = LoopTurns()
    turns.awake()
    waited: list[float] = []
    worker = threading.Thread(target=lambda: waited.append(turns.wait_gap(0.05, 10.0)))
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()  # the loop is still awake: the work waits
    turns.sleeping(10.0)
    worker.join(5)
    assert not worker.is_alive()
    assert 0.3 <= waited[0] < 5.0


def test_work_waits_when_the_loop_wakes_within_what_it_needs() -> None:
    turns = LoopTurns()
    turns.awake()
    turns.sleeping(0.01)  # wakes before a piece of 0.05 s would end
    waiter = threading.Thread(target=lambda: turns.wait_gap(0.05, 10.0))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # it did not go in the last 10 ms before the loop's round
    turns.awake()
    turns.sleeping(10.0)
    waiter.join(5)
    assert not waiter.is_alive()


def test_a_loop_awake_for_long_slows_work_but_never_starves_it() -> None:
    turns = LoopTurns()
    turns.awake()
    waited = waited_in_thread(turns, need=0.05, limit=0.2)
    assert 0.2 <= waited[0] < 5.0


def test_a_stopped_loop_lets_every_waiter_go() -> None:
    turns = LoopTurns()
    turns.awake()
    waiter = threading.Thread(target=lambda: turns.wait_gap(0.05, 30.0))
    waiter.start()
    turns.stopped()
    waiter.join(5)
    assert not waiter.is_alive()
