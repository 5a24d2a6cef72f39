"""Which entries are failing, and the per-entry figures of the history, as the leader reads them.

While leading, the scheduler reads the history's entry summaries (`RunHistory.summaries`) every
`interval` (15 s) of its monotonic clock. An entry with `alert_after_failures: N` is failing
while its newest N or more finished runs in a row ended failed or dead-lettered (retried
attempts and expired runs do not count: `history.FAILED_FINALLY`), until a run succeeds. The
turn to failing is logged as a WARNING and the recovery as INFO, and the summaries read are kept
for the per-entry gauges (beatd.metrics: `beatd_entry_failing`, `beatd_entry_last_*`).

Only the leader reads and reports: a standby's view is empty, so alerts do not fire once per
node. A new leader reports the entries already failing at its first read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from beatd.backends.base import RunHistory
from beatd.clock import Clock
from beatd.config import Entry
from beatd.events import BecameLeader, Event, SteppedDown
from beatd.history import EntrySummary
from beatd.message import format_slot

log = logging.getLogger("beatd.scheduler")

READ_INTERVAL = 15.0  # seconds between two reads of the summaries


class EntryHealth:
    """The summaries last read, and the entries failing by them."""

    def __init__(self, history: RunHistory, clock: Clock, interval: float = READ_INTERVAL) -> None:
        self.history = history
        self.clock = clock
        self.interval = interval
        self.gauges = True  # read every entry's summary, for the gauges (--metrics-entries)
        self.summaries: Mapping[str, EntrySummary] = {}
        self.failing: frozenset[str] = frozenset()
        self._next_read: float | None = None  # monotonic; None: at the next step

    def notify(self, event: Event) -> None:
        """An observer of the loop: a change of leader starts afresh."""
        if isinstance(event, BecameLeader | SteppedDown):
            self.summaries, self.failing, self._next_read = {}, frozenset(), None

    def next_read(self) -> float | None:
        """The monotonic time of the next read; None: now."""
        return self._next_read

    def refresh(self, entries: Mapping[str, Entry]) -> bool:
        """Read the summaries if the interval passed, and report the entries that turned
        failing or recovered; True when the history was asked."""
        mono = self.clock.monotonic()
        if self._next_read is not None and mono < self._next_read:
            return False
        judged = {name: e.alert_after_failures for name, e in entries.items()}
        wanted = None if self.gauges else [name for name, n in judged.items() if n]
        self._next_read = mono + self.interval
        if wanted == []:
            self.summaries, self.failing = {}, frozenset()
            return False
        self.summaries = self.history.summaries(wanted)
        self._judge(judged)
        return True

    def _judge(self, thresholds: Mapping[str, int | None]) -> None:
        failing = frozenset(
            name
            for name, summary in self.summaries.items()
            if (limit := thresholds.get(name)) and summary.consecutive_failures >= limit
        )
        for name in sorted(failing - self.failing):
            summary = self.summaries[name]
            fields = {
                "entry": name,
                "failures": summary.consecutive_failures,
                "status": summary.last_status,
                "finished": format_slot(summary.last_finished_at),  # to the second
                "limit": thresholds[name],
            }
            log.warning(
                "entry failing entry=%(entry)s failures=%(failures)d last_status=%(status)s "
                "last_finished=%(finished)s: that many runs in a row ended failed or "
                "dead-lettered (alert_after_failures: %(limit)d); reported until a run succeeds",
                fields,
                extra=fields,
            )
        for name in sorted(self.failing - failing):
            found = self.summaries.get(name)
            if found is None or not thresholds.get(name):
                log.info(
                    "entry failing no more entry=%s: it no longer has alert_after_failures", name
                )
                continue
            fields = {"entry": name, "status": found.last_status}
            log.info(
                "entry recovered entry=%(entry)s last_status=%(status)s: no longer failing",
                fields,
                extra=fields,
            )
        self.failing = failing
