"""The leader's count of how the slots `buffer_one` held ended (docs/controls.md, "Held runs
in the counts").

A held slot is counted due when the leader holds it (`RunCounts.add`). It ends elsewhere, in
one atomic step of the backend that also writes the run history's record of that end: a worker's
final outcome publishes it (or, under a pause, drops it missed, reason `paused`), or a newer
hold or an operator's trigger replaces it (missed, reason `overlap`). So the leader learns of the
end when the held slot leaves the entry's control as the planner knows it (its own next hold,
the controls read every few seconds, a refused commit's resync: `Planner.take_departed`), and
then reads that slot's end in the history: a published record counts it published (and late
when it went out past the entry's `misfire_grace`, as held runs mostly do) and makes it the
entry's last published slot; a missed record counts it missed by its reason. One or two reads per
held slot, only for `buffer_one` entries. With the history off (`--no-history`) nothing tells
the end, so it is not counted; a held slot whose end the new leader sees is counted by it.
"""

from __future__ import annotations

import logging

from beatd.backends.base import RunHistory
from beatd.core import Departed, MissReason, Planner, RunCounts

log = logging.getLogger("beatd.scheduler")

HELD_ENDS = frozenset({MissReason.OVERLAP.value, MissReason.PAUSED.value})
MISSED_READ_LIMIT = 50  # missed records read to find one held slot's, at most


class HeldEnds:
    """Counts the ends of the held slots that left the planner's controls."""

    def __init__(self, history: RunHistory, counts: RunCounts) -> None:
        self.history = history
        self.counts = counts

    def count(self, planner: Planner) -> bool:
        """Read and count the ends of the held slots departed since the last call; True when
        the backend was asked."""
        departed = planner.take_departed()
        for gone in departed:
            self._count_one(planner, gone)
        return bool(departed)

    def _count_one(self, planner: Planner, gone: Departed) -> None:
        entry, held = gone
        record = self.history.run(held.run_id)
        if record is not None:
            late = record.published_at - record.due > entry.misfire_grace
            self.counts.held_ended(entry.name, None, late)
            planner.published_elsewhere(entry.name, held.slot)
            return
        for missed in self.history.missed(entry.name, held.slot, MISSED_READ_LIMIT):
            slots = missed.slots
            if slots.reason in HELD_ENDS and slots.first <= held.slot <= slots.last:
                self.counts.held_ended(entry.name, slots.reason, False)
                return
        log.debug(
            "held run %s of entry=%s left its control with no record of its end (the history "
            "is off or trimmed): not counted",
            held.run_id,
            entry.name,
        )
