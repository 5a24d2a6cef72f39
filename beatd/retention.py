"""Keeping the run history within its retention (docs/history.md): while this scheduler leads,
it trims the history every `interval` (60 s), a bounded amount per step.

An observer of the loop's steps (beatd.events): after a step that led, when a trim is due, it
asks the backend for `RunHistory.trim(retention, batch)` again and again while each call
removed a full batch, but only up to `batches` calls and `budget` seconds, so trimming never
holds publishing up for long; what is left is trimmed at the next step, not an interval later.
After a trim it counts what is kept (`history_size`) for the metrics. Only the leader trims, so
several nodes never trim the same records at once. A trim the backend refuses is logged and
counted (`beatd_history_write_errors_total`) and tried again at the next interval.

With `controls` it keeps the operator controls' audit log too (docs/controls.md): after the
history, in the same step and budget, `Controls.trim_audit(audit_max_age, batch)` deletes audit
records older than `audit_max_age` (`beatd run --audit-retention`, a year by default) and the
idempotency keys and request ids past IDEMPOTENCY_KEY_TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from beatd.backends.base import Controls, RunHistory
from beatd.clock import Clock
from beatd.errors import BackendError
from beatd.events import Event, Stepped, SteppedDown
from beatd.history import Retention

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")

AUDIT_RETENTION = timedelta(days=365)  # `beatd run --audit-retention`'s default


@dataclass(frozen=True, slots=True)
class TrimSettings:
    """How often and how much the leader trims: `batch` records per call, at most `batches`
    calls and `budget` seconds per step, every `interval` seconds."""

    interval: float = 60.0
    batch: int = 1000
    batches: int = 10
    budget: float = 0.25


@dataclass
class HistoryStats:
    """The history's own health, as the metrics read it (`beatd.metrics.register_history`)."""

    runs: int | None = None  # run records kept, at the leader's last count (None: not leading)
    missed: int | None = None  # missed-slot records kept
    trimmed: int = 0  # records trimmed by this node since start
    audit_trimmed: int = 0  # audit records and trigger keys trimmed by this node since start
    write_errors: int = 0  # history writes (trims) the backend refused

    def write_failed(self) -> None:
        self.write_errors += 1


class HistoryRetention:
    """Trims the run history while leading; an observer of the scheduler's steps."""

    def __init__(
        self,
        history: RunHistory,
        clock: Clock,
        retention: Retention,
        settings: TrimSettings | None = None,
        stats: HistoryStats | None = None,
        *,
        controls: Controls | None = None,
        audit_max_age: timedelta = AUDIT_RETENTION,
    ) -> None:
        self.history = history
        self.controls = controls
        self.audit_max_age = audit_max_age
        self.clock = clock
        self.retention = retention
        self.settings = settings or TrimSettings()
        self.stats = stats or HistoryStats()
        self._due_at: float | None = None  # monotonic; None: at the next step that leads

    def notify(self, event: Event) -> None:
        if isinstance(event, Stepped) and event.status.leader and event.status.backend_up:
            self.step()  # an outage is the loop's to report: no trim is asked meanwhile
        elif isinstance(event, SteppedDown):
            self._due_at = None  # the next leadership trims at its first step
            self.stats.runs = self.stats.missed = None  # another node counts now

    def step(self) -> bool:
        """Trim if a trim is due; True when the backend was asked."""
        mono = self.clock.monotonic()
        if self._due_at is not None and mono < self._due_at:
            return False
        settings = self.settings
        try:
            finished = self._trim(mono)
            self.stats.runs, self.stats.missed = self.history.history_size()
        except BackendError as exc:
            self.stats.write_failed()
            self._due_at = mono + settings.interval
            log.warning("history not trimmed, trying again in %gs: %s", settings.interval, exc)
            return True
        # more beyond the retention than one step may trim: go on at the next step
        self._due_at = mono + settings.interval if finished else self.clock.monotonic()
        return True

    def _trim(self, started: float) -> bool:
        """Trim the history, then the audit log, up to the step's budget; True when nothing
        beyond either retention is left."""
        stats, before = self.stats, self.stats.trimmed
        try:
            finished = self._batches(lambda n: self.history.trim(self.retention, n), started)
        finally:
            if stats.trimmed > before:
                log.debug("trimmed=%d history records beyond the retention", stats.trimmed - before)
        controls = self.controls
        if controls is None or not finished:
            return finished
        before = stats.audit_trimmed
        max_age = self.audit_max_age
        try:
            return self._batches(lambda n: controls.trim_audit(max_age, n), started, audit=True)
        finally:
            if stats.audit_trimmed > before:
                gone = stats.audit_trimmed - before
                log.debug("trimmed=%d audit records and trigger keys beyond their retention", gone)

    def _batches(self, trim: Callable[[int], int], started: float, audit: bool = False) -> bool:
        """Call `trim(batch)` while each call removes a full batch, within the step's calls
        and budget (counting what went in `stats`); True when nothing is left."""
        settings = self.settings
        for _ in range(settings.batches):
            gone = trim(settings.batch)
            if audit:
                self.stats.audit_trimmed += gone
            else:
                self.stats.trimmed += gone
            if gone < settings.batch:
                return True
            if self.clock.monotonic() - started >= settings.budget:
                break
        return False
