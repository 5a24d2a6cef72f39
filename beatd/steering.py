"""The leader's side of the operator controls (beatd.controls, docs/controls.md).

The planner learns a control from the backend at adoption and when a commit is refused; a pause
lifted (`beatd resume`), a busy mark cleared or a held run published by a worker refuse nothing,
so the leader reads every control again each `interval` (5 s) of its monotonic clock, at a step
it takes anyway (a lease renewal wakes it at least every third of the lease): the read returns
only the entries that have a control, so it costs nothing where none has one.

`pause_after_failures: N`: once the history's summaries (read by `EntryHealth`) show N or more
runs in a row ended failed or dead-lettered, the leader pauses the entry till resumed, by
`beatd@NODE`. Resumed by an operator, it is paused again after N more such runs published since
the resume (a success between them starts the count again). What counts is read from the
backend, not remembered, so a new leader decides the same: the entry's newest resume in the
audit log, then its runs published since in the history (one read of each, only for an entry
whose streak has reached N and that is not paused, and again only when its streak grows).

The commands `beatd trigger` and `beatd backfill` run in their own processes, so the leader
counts them: each refresh also reads the audit log since its last read (one read of at most
`AUDIT_READ_LIMIT` records) and counts per entry the trigger records, and the runs each backfill
record says its step published (`published` in its detail), as the metrics
`beatd_runs_triggered_total` and `beatd_runs_backfilled_total`, and the stale busy marks a
trigger published over (`dropped_busy` in its detail) in `beatd_busy_marks_dropped_total`.
A new leader starts from the newest record it finds and counts only what comes after. The
resume records read there end the pauses they lifted at their own time, so the slots due
between a resume and the read that sees it are not paused (the backend keeps the pause too, as
lifted, for a leader that was not running then: beatd.controls.lift).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from beatd.backends.base import Controls, RunHistory
from beatd.clock import Clock
from beatd.config import Entry
from beatd.core import Planner
from beatd.events import BecameLeader, Event, SteppedDown
from beatd.history import FAILED_FINALLY, EntrySummary, HistoryQuery
from beatd.outcomes import Outcome

log = logging.getLogger("beatd.scheduler")

REFRESH_INTERVAL = 5.0  # seconds between two reads of every entry's control
AUDIT_READ_LIMIT = 500  # audit records read per refresh, at most
# How far back a read of the audit log starts at most: a record is visible within this of its
# time (taken when its write starts), by a clock within this of the leader's. Without it a read
# after a quiet spell would start at the last record, and SQLite and PostgreSQL go through every
# runtime entry's change since (issue 18: an import writes them by the 100,000).
AUDIT_LAG = timedelta(minutes=1)


class Steering:
    """Keeps the planner's controls fresh and pauses entries that keep failing."""

    def __init__(
        self,
        controls: Controls,
        history: RunHistory,
        clock: Clock,
        node: str,
        interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.controls = controls
        self.history = history
        self.clock = clock
        self.by = f"beatd@{node}"
        self.interval = interval
        self._next_read: float | None = None  # monotonic; None: at the next step
        self._summaries: Mapping[str, EntrySummary] | None = None  # the last judged
        self._judged: dict[str, int] = {}  # the streak each entry not paused was judged at
        self.triggered: Counter[str] = Counter()  # trigger audit records, per entry
        self.dropped: Counter[str] = Counter()  # stale busy marks triggers published over
        self.backfilled: Counter[str] = Counter()  # runs published by backfills, per entry
        self._audit_since: datetime | None = None  # the newest audit record's time seen
        self._audit_seen: set[str] = set()  # the ids of the records at that time
        self._audit_started = False

    def notify(self, event: Event) -> None:
        """An observer of the loop: a change of leader starts afresh."""
        if isinstance(event, BecameLeader | SteppedDown):
            self._next_read, self._summaries, self._judged = None, None, {}
            self._audit_since, self._audit_seen, self._audit_started = None, set(), False

    def read_soon(self) -> None:
        """Read every control at the next step."""
        self._next_read = None

    def refresh(self, planner: Planner) -> bool:
        """Read every control when the interval passed; True when the backend was asked."""
        mono = self.clock.monotonic()
        if self._next_read is not None and mono < self._next_read:
            return False
        self._next_read = mono + self.interval
        lifts = self._read_audit()  # before the controls: a resume read is then in both
        changed = planner.refresh_controls(self.controls.load_controls(), self.clock.now(), lifts)
        if changed:
            log.debug("controls changed entries=%d", changed)
        return True

    def _read_audit(self) -> dict[str, list[datetime]]:
        """Count the trigger and backfill records written since the last read (the first read
        of a leadership only finds where to start); when the resumes among them were, per
        entry, so that a pause lifted ends then, not when the leader reads it."""
        lifts: dict[str, list[datetime]] = {}
        # without the runtime entries' changes: an import writes them by the 100,000
        if not self._audit_started:
            records = self.controls.audit(limit=1, controls_only=True)
        else:
            since = self._audit_since
            records = self.controls.audit(since=since, limit=AUDIT_READ_LIMIT, controls_only=True)
        new = [r for r in records if r.id not in self._audit_seen]
        for record in new:
            if record.action == "resume" and record.entry is not None:
                lifts.setdefault(record.entry, []).append(record.at)
        if self._audit_started:
            for record in new:
                if record.entry is None:
                    continue
                if record.action == "trigger":
                    self.triggered[record.entry] += 1
                    if record.detail.get("dropped_busy"):
                        self.dropped[record.entry] += 1
                elif record.action == "backfill":
                    self.backfilled[record.entry] += _published(record.detail)
            if len(records) >= AUDIT_READ_LIMIT:
                log.warning(
                    "audit log read limit reached records=%d: older trigger and backfill "
                    "records since the last read are not counted",
                    len(records),
                )
        self._audit_started = True
        if new:
            newest = max(r.at for r in new)
            if self._audit_since is None or newest > self._audit_since:
                self._audit_since, self._audit_seen = newest, set()
            self._audit_seen |= {r.id for r in new if r.at == newest}
        floor = self.clock.now() - AUDIT_LAG
        if self._audit_since is None or self._audit_since < floor:
            # the records from `floor` on were all read now: the next read skips them
            self._audit_since = floor
            self._audit_seen = {r.id for r in records if r.at >= floor}
        return lifts

    def pause_failing(
        self, entries: Mapping[str, Entry], summaries: Mapping[str, EntrySummary], planner: Planner
    ) -> bool:
        """Pause the entries whose `pause_after_failures` the newest summaries reach (counting
        since the entry's last resume); True when the backend was asked."""
        if summaries is self._summaries:
            return False
        self._summaries = summaries
        due, asked = [], False
        for name, summary in summaries.items():
            entry = entries.get(name)
            limit = entry.pause_after_failures if entry is not None else None
            streak = summary.consecutive_failures
            control = planner.control(name)
            if not limit or streak < limit or control is None or control.pause is not None:
                self._judged.pop(name, None)
                continue
            if self._judged.get(name) == streak:
                continue  # judged at this streak: nothing new has failed
            self._judged[name] = streak
            failures, asked = self._failures_since_resume(name, streak), True
            if failures >= limit:
                due.append((name, limit, failures))
        for name, limit, failures in due:
            self._pause(name, limit, failures)
        if due:
            self.read_soon()  # the planner learns the pauses at the next step
        return asked

    def _failures_since_resume(self, name: str, streak: int) -> int:
        """Of the entry's `streak` runs in a row that ended failed or dead-lettered, how many
        were published since its newest resume (all of them when it has none)."""
        resumes = [
            r for r in self.controls.audit(name, limit=AUDIT_READ_LIMIT) if r.action == "resume"
        ]
        if not resumes:
            return streak
        since = resumes[0].at
        failures = 0
        for run in self.history.runs(HistoryQuery(entry=name, since=since, limit=streak + 1)):
            if run.status == Outcome.SUCCEEDED:
                break
            if run.status in FAILED_FINALLY:
                failures += 1
        return failures

    def _pause(self, name: str, limit: int, failures: int) -> None:
        reason = f"paused after {limit} consecutive failures"
        self.controls.pause([name], reason, None, self.by)
        self._judged.pop(name, None)
        fields = {"entry": name, "failures": failures, "limit": limit}
        log.warning(
            "entry paused entry=%(entry)s failures=%(failures)d: that many runs in a row "
            "ended failed or dead-lettered (pause_after_failures: %(limit)d); "
            "`beatd resume %(entry)s` lifts it",
            fields,
            extra=fields,
        )


def _published(detail: Mapping[str, Any]) -> int:
    """How many runs a backfill step published, as its audit record says (0 when a beatd from
    before the count wrote it)."""
    published = detail.get("published")
    return published if isinstance(published, int) and not isinstance(published, bool) else 0
