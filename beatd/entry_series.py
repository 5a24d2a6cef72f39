"""Per-entry series: which entries have them (`beatd run --metrics-entries`), and the ones read
from the run history by the leader (deadlines passed, failing entries, each entry's last run).
Collected by beatd.metrics' scheduler collector at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from beatd.config import Config
from beatd.history import EntrySummary

log = logging.getLogger("beatd.metrics")

MAX_ALL_ENTRIES = 10_000  # --metrics-entries all: beyond this many entries, file


class EntrySeries(StrEnum):
    """Which entries get per-entry series (`beatd run --metrics-entries`)."""

    ALL = "all"  # every entry this scheduler counts (removed ones included), up to a bound
    FILE = "file"  # the entries of the schedule files now loaded (no runtime entry)
    NONE = "none"  # none: only the totals and the per-task histogram


class EntryFilter:
    """Which entries a scrape shows, by `--metrics-entries`: `file`, the schedule files'
    entries; `all`, those and the runtime entries, and the removed ones that still have counts
    (this process's). `all` turns into `file` beyond `limit` entries, logged once."""

    def __init__(self, mode: EntrySeries = EntrySeries.ALL, limit: int = MAX_ALL_ENTRIES) -> None:
        self.mode = mode
        self.limit = limit
        self._bounded = False

    def shown(self, config: Config, runtime: int = 0) -> Callable[[str], bool]:
        """Whether an entry, by name, has per-entry series in this scrape (`runtime`: how many
        runtime entries there are besides the files')."""
        mode = self._mode(config, runtime)
        if mode is EntrySeries.NONE:
            return lambda _name: False
        if mode is EntrySeries.FILE:
            return config.entries.__contains__
        return lambda _name: True

    def only(self, config: Config, runtime: int = 0) -> Collection[str] | None:
        """The names `shown` lets through, when not every one (None): a scrape then looks at
        those, not at every entry (a million runtime entries cost a scrape seconds)."""
        mode = self._mode(config, runtime)
        if mode is EntrySeries.ALL:
            return None
        return config.entries.keys() if mode is EntrySeries.FILE else ()

    def _mode(self, config: Config, runtime: int) -> EntrySeries:
        mode, total = self.mode, len(config.entries) + runtime
        if mode is EntrySeries.ALL and total > self.limit:
            if not self._bounded:
                self._bounded = True
                log.warning(
                    "metrics: %d entries are more than %d: per-entry series only for the "
                    "schedule files' entries (--metrics-entries file); --metrics-entries none "
                    "leaves only the totals",
                    total,
                    self.limit,
                )
            mode = EntrySeries.FILE
        return mode


class OverdueView(Protocol):
    @property
    def overdue(self) -> Mapping[str, int]: ...


class HealthView(Protocol):
    @property
    def summaries(self) -> Mapping[str, EntrySummary]: ...
    @property
    def failing(self) -> frozenset[str]: ...


def history_metrics(
    leading: bool,
    config: Config,
    deadlines: OverdueView,
    health: HealthView,
    shown: Callable[[str], bool],
) -> Iterator[Metric]:
    """Deadlines passed, and what the leader last read of each entry's summary."""
    overdue = CounterMetricFamily(
        "beatd_runs_overdue",
        "Runs, and ranges of missed slots, marked overdue by this scheduler: not finished by "
        "the entry's deadline.",
        labels=["entry"],
    )
    for entry, count in sorted(deadlines.overdue.items()):
        if shown(entry):
            overdue.add_metric([entry], count)
    yield overdue
    failing = GaugeMetricFamily(
        "beatd_entry_failing",
        "1 while the entry's last alert_after_failures runs or more ended failed or "
        "dead-lettered (exported by the leader, for entries with alert_after_failures).",
        labels=["entry"],
    )
    if leading:
        for name, configured in config.entries.items():
            if configured.alert_after_failures and shown(name):
                failing.add_metric([name], int(name in health.failing))
    yield failing
    yield from _summary_gauges(health.summaries if leading else {}, shown)


def _summary_gauges(
    summaries: Mapping[str, EntrySummary], shown: Callable[[str], bool]
) -> Iterator[Metric]:
    duration = GaugeMetricFamily(
        "beatd_entry_last_duration_seconds",
        "How long the last attempt of the entry's newest finished run took (the history).",
        labels=["entry"],
    )
    success = GaugeMetricFamily(
        "beatd_entry_last_succeeded_timestamp_seconds",
        "When the entry's newest successful run finished, on any worker (the history).",
        labels=["entry"],
    )
    failure = GaugeMetricFamily(
        "beatd_entry_last_failed_timestamp_seconds",
        "When the entry's newest run that ended failed or dead-lettered finished (the history).",
        labels=["entry"],
    )
    for name, summary in sorted(summaries.items()):
        if not shown(name):
            continue
        if summary.last_duration is not None:
            duration.add_metric([name], summary.last_duration.total_seconds())
        if (value := _ts(summary.last_success_at)) is not None:
            success.add_metric([name], value)
        if (value := _ts(summary.last_failure_at)) is not None:
            failure.add_metric([name], value)
    yield from (duration, success, failure)


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None
