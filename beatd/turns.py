"""The scheduling loop goes first: other threads of a `beatd run` wait for a gap in its work.

The console's entry index refreshing and the HTTP API answering run Python in threads of the
loop's process, and a thread that computes holds the GIL: every reply the loop waits on from its
backend then waits for that thread too, up to the interpreter's switch interval (5 ms) a reply.
A round that publishes 3,000 runs over Redis waits on dozens of replies, and was 100-200 ms
later whenever the index refreshed beside it (docs/design.md, "The loop goes first"). So the loop
says when it is awake and when it next wakes (`LoopTurns.awake`, `LoopTurns.sleeping`), and such
work, cut into pieces of a few milliseconds, waits before each piece until the loop sleeps with
time to spare (`LoopTurns.wait_gap`), never longer than a bound, so it is slowed, never starved.
"""

from __future__ import annotations

import threading
import time

GAP_S = 0.05  # seconds a piece of work may take before the loop's next wake
WAIT_LIMIT_S = 1.0  # seconds a piece waits at most: a loop awake for long (an import) slows it


class LoopTurns:
    """When the scheduling loop is awake, and when it next wakes (monotonic seconds)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._awake = False
        self._wakes_at = float("inf")  # before its first round, nothing to wait for

    def awake(self) -> None:
        """The loop starts a round."""
        with self._changed:
            self._awake = True

    def sleeping(self, seconds: float) -> None:
        """The loop ended a round and sleeps `seconds` (it may be woken sooner)."""
        with self._changed:
            self._awake = False
            self._wakes_at = time.monotonic() + seconds
            self._changed.notify_all()

    def stopped(self) -> None:
        """The loop ended: nothing to wait for any more."""
        self.sleeping(float("inf"))

    def wait_gap(self, need: float = GAP_S, limit: float = WAIT_LIMIT_S) -> float:
        """Wait until the loop sleeps with at least `need` seconds before its next wake, at
        most `limit` seconds; returns the seconds waited."""
        began = time.monotonic()
        give_up = began + limit
        with self._changed:
            while (now := time.monotonic()) < give_up:
                if not self._awake and self._wakes_at - now >= need:
                    break
                # awake, or waking within `need`: until it has woken and gone to sleep again
                self._changed.wait(give_up - now)
        return time.monotonic() - began
