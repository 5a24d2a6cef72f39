"""Deadlines: runs that did not finish in time, judged by the leader's clock.

An entry with `deadline:` gives each run until its due time (the slot plus its jitter) plus the
deadline to finish, and a range of slots missed for any reason but `disabled` until its first
slot's due time plus the deadline. While leading, the scheduler feeds `Deadlines` what it
committed (the `Published` event) and asks it, every step, to mark what passed: a run not
finished by then is marked overdue in the history at its deadline (`RunHistory.mark_overdue`,
which leaves a run finished by then or already marked alone), with a counter per entry and a WARNING
naming entry and slot. Nothing is persisted here: a new leader rebuilds the watch at its first
adoption from the history's unfinished runs and unmarked missed ranges (reads per entry with a
deadline), and marks those whose deadline already passed with their original time, so a
deadline that passed while no leader ran is marked by the next one. It also reads each such
entry's newest `ADOPT_FINISHED` runs and marks, with its original time, one that finished after
its deadline without a mark (it finished while no leader watched it; `mark_overdue` marks a run
unless it finished by `at`). A reload keeps the watch:
a changed deadline applies to the runs published afterwards.

The deadlines live in the history: with `--no-history` there is nothing to mark.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from beatd.backends.base import RunHistory
from beatd.clock import Clock
from beatd.config import Entry
from beatd.core import Decision, MissReason
from beatd.events import BecameLeader, Event, Published, SteppedDown
from beatd.history import HistoryQuery, MissedSlots
from beatd.message import format_slot, run_id

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")

ADOPT_RUNS = 10_000  # unfinished runs read per entry at adoption (the newest)
ADOPT_MISSED = 100  # missed-slot records read per entry at adoption (the newest)
ADOPT_FINISHED = 100  # newest runs read per entry at adoption for ones that finished late
# marks per step: a backlog (a new leader after a long outage) is marked over several steps, so
# lease renewals and publishing go on between them
MARK_BUDGET = 1000
READ_BUDGET = 100  # entries whose history is read per step after an adoption
_AT_ONCE = datetime.min.replace(tzinfo=UTC)


class Deadline(NamedTuple):
    """One deadline watched: a run's, or a missed range's (`reason` set). A run's id is made
    when it is marked (`run_id(entry, slot)`), not for every run watched."""

    at: datetime
    entry: str
    slot: datetime  # the run's slot, or the missed range's first slot
    reason: str = ""  # a missed range's
    total: int = 1  # slots in a missed range


class Deadlines:
    """The deadlines of the runs and missed ranges the leader knows of, earliest first."""

    def __init__(self, history: RunHistory, clock: Clock, budget: int = MARK_BUDGET) -> None:
        self.history = history
        self.clock = clock
        self.budget = budget
        self.read_budget = READ_BUDGET
        self.overdue: Counter[str] = Counter()  # runs and missed ranges marked, per entry
        self._heap: list[tuple[datetime, int, Deadline]] = []
        self._order = itertools.count()  # ties keep their order; deadlines are never compared
        self._adopted = False  # the watch was rebuilt from the history in this leadership
        self._to_read: list[Entry] = []  # entries whose history the adoption has yet to read

    def __len__(self) -> int:
        return len(self._heap)

    def notify(self, event: Event) -> None:
        """An observer of the loop: watch what was committed; forget all on a change of
        leader (the next adoption rebuilds the watch from the history)."""
        if isinstance(event, Published):
            self.published(event.decisions)
        elif isinstance(event, BecameLeader | SteppedDown):
            self._heap.clear()
            self._to_read.clear()
            self._adopted = False

    def published(self, decisions: Iterable[Decision]) -> None:
        """Watch the runs, and the missed ranges, of committed decisions."""
        for decision in decisions:
            entry = decision.entry
            if entry.deadline is None:
                continue
            for run in decision.runs:
                self._watch(Deadline(run.due + entry.deadline, entry.name, run.slot))
            self.watch_missed(entry, decision.missed)

    def watch_missed(self, entry: Entry, ranges: Iterable[MissedSlots]) -> None:
        """Watch missed ranges of `entry`: each until its first slot's due time plus the
        deadline; a range missed because the entry was disabled has none."""
        if entry.deadline is None:
            return
        for missed in ranges:
            if missed.reason != MissReason.DISABLED:
                at = entry.due_for(missed.first) + entry.deadline
                self._watch(
                    Deadline(at, entry.name, missed.first, reason=missed.reason, total=missed.total)
                )

    def adopt(self, entries: Mapping[str, Entry]) -> None:
        """At a leadership's first adoption, rebuild the watch from the history: the unfinished
        runs, the newest runs that finished after their deadline unmarked, and the unmarked
        missed ranges of each entry with a deadline, read by
        `mark_passed`, `read_budget` entries a step. Those already past are marked with their
        original time. Later adoptions (a reload) keep the watch."""
        if self._adopted:
            return
        self._heap.clear()
        self._to_read = [entry for entry in entries.values() if entry.deadline is not None]
        self._adopted = True

    def _read_history(self) -> bool:
        """Watch what the history holds of the next entries the adoption has yet to read;
        True when it was asked."""
        todo = self._to_read
        reads = min(self.read_budget, len(todo))
        for _ in range(reads):
            entry = todo[-1]
            assert entry.deadline is not None
            query = HistoryQuery(entry=entry.name, limit=ADOPT_RUNS, unfinished=True)
            for run in self.history.runs(query):
                self._watch(Deadline(run.due + entry.deadline, entry.name, run.slot))
            newest = HistoryQuery(entry=entry.name, limit=ADOPT_FINISHED)
            for run in self.history.runs(newest):
                at = run.due + entry.deadline
                if run.overdue_at is None and run.finished_at is not None and run.finished_at > at:
                    self._watch(Deadline(at, entry.name, run.slot))
            records = self.history.missed(entry.name, limit=ADOPT_MISSED)
            self.watch_missed(entry, [r.slots for r in records if r.overdue_at is None])
            todo.pop()  # only once read: a backend error leaves it to the next step
        return reads > 0

    def next_at(self) -> datetime | None:
        """The earliest deadline watched (long past while the adoption's reads go on); None
        when none is."""
        if self._to_read:
            return _AT_ONCE
        return self._heap[0][0] if self._heap else None

    def mark_passed(self, now: datetime) -> bool:
        """Mark the watched deadlines at or before `now`, at most `budget` of them (the rest
        are still due at the next step); True when the history was asked. A deadline leaves
        the watch only once its mark was answered, so one a backend error interrupted is tried
        again at the next step."""
        asked = self._read_history()
        heap, left = self._heap, self.budget
        while heap and heap[0][0] <= now and left > 0:
            deadline = heap[0][2]
            asked, left = True, left - 1
            if self._mark(deadline):
                self.overdue[deadline.entry] += 1
                _log_overdue(deadline)
            heapq.heappop(heap)
        return asked

    def _mark(self, deadline: Deadline) -> bool:
        if not deadline.reason:
            return self.history.mark_overdue(run_id(deadline.entry, deadline.slot), at=deadline.at)
        return self.history.mark_missed_overdue(
            deadline.entry, deadline.reason, deadline.slot, at=deadline.at
        )

    def _watch(self, deadline: Deadline) -> None:
        heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))


def _log_overdue(deadline: Deadline) -> None:
    fields = {
        "entry": deadline.entry,
        "slot": format_slot(deadline.slot),
        "deadline": deadline.at.isoformat(),
    }
    if not deadline.reason:
        log.warning(
            "run overdue entry=%(entry)s slot=%(slot)s deadline=%(deadline)s: not finished by "
            "its deadline",
            fields,
            extra=fields,
        )
        return
    fields |= {"reason": deadline.reason, "count": str(deadline.total)}
    log.warning(
        "missed slots overdue entry=%(entry)s slot=%(slot)s deadline=%(deadline)s "
        "reason=%(reason)s count=%(count)s: no run by the first slot's deadline",
        fields,
        extra=fields,
    )
