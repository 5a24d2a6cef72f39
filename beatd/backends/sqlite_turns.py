"""Turns at a SQLite file's one writer within a process: a bulk write's next step waits for the
process's other writers (the leader's commits and lease renewals first of all), and its steps
are sized by the time they hold the writer, not by a count.

SQLite gives the writer to whichever connection asks while it is free; a connection that found
it taken sleeps in its busy handler (up to 100 ms at a time) and asks again. A bulk import that
writes step after step asks again microseconds after each commit, so a waiting writer can sleep
through several of its steps: on a loaded machine the leader's commit waited 1.4 s behind three
steps of 1,000 entries (a slot published late), and its lease renewal 0.8 s behind one (the
2-s lease lost). So, per file and process:
- every write but a bulk step says it is waiting for the file or writing (`WriteTurns.writing`);
- a bulk step begins only once none is (`WriteTurns.step_turn`), or after `YIELD_LIMIT` (so
  that a steady stream of other writes cannot stop an import);
- a bulk write's next step holds as many entries as should take `STEP_TIME` of the writer, as
  long as the last step took (`next_step`): fewer on a loaded machine, where one holds the
  writer longer, so that a writer waiting behind a step waits about that long.
Writers in other processes are not seen; only the short steps serve them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

YIELD_LIMIT = 1.0  # seconds a bulk step waits for the process's other writers, at most
STEP_TIME = 0.1  # seconds a bulk write's step should hold the file's writer


class WriteTurns:
    """The writers of one file in this process, for bulk steps to wait for."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._writers = 0  # waiting for the file's writer or holding it (bulk steps aside)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write that is not a bulk step, from before it asks for the writer until
        it is done with it."""
        with self._changed:
            self._writers += 1
        try:
            yield
        finally:
            with self._changed:
                self._writers -= 1
                if not self._writers:
                    self._changed.notify_all()

    def step_turn(self, limit: float = YIELD_LIMIT) -> bool:
        """Wait, before a bulk step, until no other write of this process is waiting or under
        way, at most `limit` seconds; False when it waited that long in vain."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._writers, timeout=limit)

    @property
    def writers(self) -> int:
        """The writes waiting or under way now (a bulk step waits for none)."""
        with self._changed:
            return self._writers


_TURNS: dict[str, WriteTurns] = {}
_TURNS_LOCK = threading.Lock()


def turns_of(path: Path) -> WriteTurns:
    """The one `WriteTurns` of the file at `path` in this process, whichever handle asks."""
    key = os.path.realpath(path)
    with _TURNS_LOCK:
        return _TURNS.setdefault(key, WriteTurns())


def next_step(size: int, took: float, *, least: int, most: int, target: float = STEP_TIME) -> int:
    """The entries of a bulk write's next step, when its last step of `size` entries held the
    writer `took` seconds: as many as should take `target`, at most twice the last, from
    `least` to `most`."""
    wanted = most if took <= 0 else int(size * target / took)
    return max(least, min(most, wanted, size * 2))
