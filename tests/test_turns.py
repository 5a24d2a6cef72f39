"""beatd.turns: background work waits for a gap in the scheduling loop's rounds and in the API's
answers."""

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
    worker = threading.Thread(target=lambda: turns.wait_gap(0.05, 10.0))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()  # the loop is still awake: the work waits
    turns.sleeping(10.0)
    worker.join(5)
    assert not worker.is_alive()


def test_work_waits_when_the_loop_wakes_within_what_it_needs() -> None:
    turns = LoopTurns()
    turns.awake()
    turns.sleeping(0.01)  # wakes before a piece of 0.05 s would end
    waiter = threading.Thread(target=lambda: turns.wait_gap(0.05, 10.0))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # it did not go in the last 10 ms before the loop's round
    deadline = time.monotonic() + 5.0
    while waiter.is_alive() and time.monotonic() < deadline:
        turns.awake()
        turns.sleeping(0.02)  # a round ended: the work goes, though the next is as close
        waiter.join(0.05)
    assert not waiter.is_alive()


def test_a_round_that_ended_while_an_answer_was_made_is_no_gap_once_it_is_made() -> None:
    turns = LoopTurns()
    released: list[float] = []
    with turns.answering():
        waiter = threading.Thread(target=lambda: released.append(turns.wait_gap(0.05, 10.0)))
        waiter.start()
        time.sleep(0.05)
        turns.awake()
        turns.sleeping(0.03)  # a round ends while the answer is made: no gap for the work
        time.sleep(0.025)
    waiter.join(0.3)  # the answer made, the loop wakes within 5 ms or is overdue: still waits
    assert waiter.is_alive()
    turns.awake()
    turns.sleeping(10.0)
    waiter.join(5)
    assert not waiter.is_alive()


def test_a_loop_waking_every_few_ms_lets_work_go_after_each_round() -> None:
    turns, stop = LoopTurns(), threading.Event()

    def loop() -> None:  # due times 10 ms apart: it never sleeps the 50 ms a piece asks
        while not stop.is_set():
            turns.awake()
            turns.sleeping(0.01)
            time.sleep(0.01)

    looping = threading.Thread(target=loop)
    looping.start()
    try:
        waits = [turns.wait_gap(0.05, 1.0) for _ in range(5)]
    finally:
        stop.set()
        looping.join(5)
    assert max(waits) < 0.5  # each went after a round, never waiting out its limit


def test_a_loop_awake_for_long_slows_work_but_never_starves_it() -> None:
    turns = LoopTurns()
    turns.awake()
    began = time.monotonic()
    waited = waited_in_thread(turns, need=0.05, limit=0.2)
    assert 0.2 <= waited[0] <= time.monotonic() - began < 5.0


def test_a_stopped_loop_lets_every_waiter_go() -> None:
    turns = LoopTurns()
    turns.awake()
    waiter = threading.Thread(target=lambda: turns.wait_gap(0.05, 30.0))
    waiter.start()
    turns.stopped()
    waiter.join(5)
    assert not waiter.is_alive()


def test_background_work_waits_while_an_answer_is_made() -> None:
    turns = LoopTurns()
    with turns.answering():
        waiter = threading.Thread(target=lambda: turns.wait_gap(0.05, 30.0))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()
    waiter.join(5)
    assert not waiter.is_alive()
