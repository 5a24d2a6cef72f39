"""Who goes first in a `beatd run`: the scheduling loop, then the API's answers, then background
work (the console's entry index refreshing), which waits for a gap in both.

A thread that computes in Python holds the GIL, and every reply another thread waits on from
the backend then waits for it too, up to the interpreter's switch interval (5 ms) a reply. A
round that publishes 3,000 runs over Redis waits on dozens of replies, and was 100-200 ms later
whenever the index refreshed beside it; a console page waits on a few, and was 250 ms later
when refresh pieces ran with it (docs/design.md, "The loop goes first"). So the loop says when
it is awake and when it next wakes (`LoopTurns.awake`, `LoopTurns.sleeping`), the API says
while it answers (`LoopTurns.answering`), and background work, cut into pieces of a few
milliseconds, waits before each piece until the loop sleeps with time to spare and no answer is
being made (`LoopTurns.wait_gap`), never longer than a bound: slowed, never starved. Answers
themselves never wait: an operator waits on each, and at 10,000 entries a page costs a
publishing round a few milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

GAP_S = 0.05  # seconds a piece of work may take before the loop's next wake
MIN_GAP_S = 0.005  # ... or at least this, right after a round (due times closer than GAP_S)
WAIT_LIMIT_S = 1.0  # seconds a piece waits at most: a loop awake for long (an import) slows it


class LoopTurns:
    """When the scheduling loop is awake and when it next wakes (monotonic seconds), and how
    many API answers are being made."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._awake = False
        self._wakes_at = float("inf")  # before its first round, nothing to wait for
        self._answering = 0
        self._rounds = 0  # rounds ended so far

    def awake(self) -> None:
        """The loop starts a round."""
        with self._changed:
            self._awake = True

    def sleeping(self, seconds: float) -> None:
        """The loop ended a round and sleeps `seconds` (it may be woken sooner)."""
        with self._changed:
            self._awake = False
            self._wakes_at = time.monotonic() + seconds
            self._rounds += 1
            self._changed.notify_all()

    def stopped(self) -> None:
        """The loop ended: nothing to wait for any more."""
        self.sleeping(float("inf"))

    @contextmanager
    def answering(self) -> Iterator[None]:
        """An API answer is being made for as long as this is entered."""
        with self._changed:
            self._answering += 1
        try:
            yield
        finally:
            with self._changed:
                self._answering -= 1
                if not self._answering:
                    self._changed.notify_all()

    def wait_gap(self, need: float = GAP_S, limit: float = WAIT_LIMIT_S) -> float:
        """Wait until no answer is being made and the loop sleeps, with at least `need` seconds
        before its next wake, or MIN_GAP_S when a round ended since the last look (a loop whose
        due times lie closer than `need` never sleeps that long: its rounds are short), at
        most `limit` seconds; returns the seconds waited."""
        began = time.monotonic()
        give_up = began + limit
        with self._changed:
            rounds = self._rounds
            while (now := time.monotonic()) < give_up:
                ended, rounds = self._rounds != rounds, self._rounds  # since the last look
                left = self._wakes_at - now
                spare = left >= need or (ended and left >= MIN_GAP_S)
                if spare and not self._awake and not self._answering:
                    break
                # until the loop has gone to sleep again, or the answers are made
                self._changed.wait(give_up - now)
        return time.monotonic() - began
