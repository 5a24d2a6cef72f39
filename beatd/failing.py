"""Which entries are failing, and the per-entry figures of the history, as the leader reads them.

While leading, the scheduler reads the history's entry summaries (`RunHistory.summaries`) of
its loaded entries every `interval` (15 s) of its monotonic clock, `chunk` entries a step (a
summary costs some 15 µs to read on SQLite: 100,000 in one step would hold the loop 1.5 s).
An entry with `alert_after_failures: N` is failing while its newest N or more finished runs in
a row ended failed or dead-lettered (retried attempts and expired runs do not count:
`history.FAILED_FINALLY`), until a run succeeds. The turn to failing is logged as a WARNING
and the recovery as INFO, and the summaries read are kept for the per-entry gauges
(beatd.entry_series: `beatd_entry_failing`, `beatd_entry_last_*`).

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

READ_INTERVAL = 15.0  # seconds between the starts of two reads of the summaries
READ_CHUNK = 2000  # summaries read per step


class EntryHealth:
    """The summaries last read, and the entries failing by them."""

    def __init__(self, history: RunHistory, clock: Clock, interval: float = READ_INTERVAL) -> None:
        self.history = history
        self.clock = clock
        self.interval = interval
        self.chunk = READ_CHUNK
        self.gauges = True  # read every entry's summary, for the gauges (--metrics-entries)
        self.summaries: Mapping[str, EntrySummary] = {}  # of the last complete read
        self.failing: frozenset[str] = frozenset()
        self._next_read: float | None = None  # monotonic; None: at the next step
        self._to_read: list[str] = []  # the entries the read under way has yet to read
        self._read: dict[str, EntrySummary] = {}  # what it read so far

    def notify(self, event: Event) -> None:
        """An observer of the loop: a change of leader starts afresh."""
        if isinstance(event, BecameLeader | SteppedDown):
            self.summaries, self.failing, self._next_read = {}, frozenset(), None
            self._to_read, self._read = [], {}

    def next_read(self) -> float | None:
        """The monotonic time of the next read (now while one is under way); None: at the
        next step."""
        return self.clock.monotonic() if self._to_read else self._next_read

    def refresh(self, entries: Mapping[str, Entry]) -> bool:
        """Read the next `chunk` of summaries, starting a read when the interval passed; at the
        end of a read, report the entries that turned failing or recovered. True when the
        history was asked."""
        if not self._to_read and not self._start(entries):
            return False
        todo = self._to_read
        self._read.update(self.history.summaries(todo[-self.chunk :]))
        del todo[-self.chunk :]  # only once read: a backend error leaves them to the next step
        if not todo:
            self.summaries, self._read = self._read, {}
            self._judge(entries)
        return True

    def _start(self, entries: Mapping[str, Entry]) -> bool:
        """Start a read if the interval passed and there is anything to read."""
        mono = self.clock.monotonic()
        if self._next_read is not None and mono < self._next_read:
            return False
        self._next_read = mono + self.interval
        names = [
            n
            for n, e in entries.items()
            if self.gauges or e.alert_after_failures or e.pause_after_failures
        ]
        if not names:
            self.summaries, self.failing = {}, frozenset()
            return False
        self._to_read = sorted(names, reverse=True)  # read from the end: by name
        return True

    def _judge(self, entries: Mapping[str, Entry]) -> None:
        """Each entry read looked up by name (at 1,000,000 entries a dict of every threshold,
        made at each read's end, took a third of the leader's time)."""
        failing = frozenset(
            name
            for name, summary in self.summaries.items()
            if summary.consecutive_failures
            and (limit := _limit(entries, name))
            and summary.consecutive_failures >= limit
        )
        for name in sorted(failing - self.failing):
            summary = self.summaries[name]
            fields = {
                "entry": name,
                "failures": summary.consecutive_failures,
                "status": summary.last_status,
                "finished": format_slot(summary.last_finished_at),  # to the second
                "limit": _limit(entries, name),
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
            if found is None or not _limit(entries, name):
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


def _limit(entries: Mapping[str, Entry], name: str) -> int | None:
    """Entry `name`'s `alert_after_failures` (None: none, or no such entry)."""
    entry = entries.get(name)
    return entry.alert_after_failures if entry is not None else None
