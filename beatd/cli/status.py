"""`beatd status`: the leader, each entry's last and next run, queue depths and dead letters.

Everything but the run counts comes from the backend, so it is the same whichever node asks.
Late and missed counts are not persisted: each `beatd run` counts what it decided since it
started and serves the counts on /metrics. `--metrics-url` reads them from there (every
scheduler's URL, summed); without it the counts are shown as unknown, and an entry nobody is
publishing shows up as overdue instead, from its persisted horizon.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families

from beatd.backends import Backend, LeaderInfo
from beatd.cli.common import (
    EXIT_RUNTIME,
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
    read_optional_config,
    schedule_options,
    slot_text,
)
from beatd.cli.timetext import absolute_and_relative, relative, seconds, span_text
from beatd.cli.workers import warn_about_backend
from beatd.config import Config
from beatd.config.convert import suggest
from beatd.controls import EntryControl, Overlap
from beatd.errors import BeatdError
from beatd.history import EntrySummary, HistoryQuery, RunKind
from beatd.service import setup_logging
from beatd.state import EntryState

COUNTED = {
    "beatd_runs_due_total": "due",
    "beatd_runs_published_total": "published",
    "beatd_runs_late_total": "late",
}
MISSED = "beatd_runs_missed_total"
SCHEDULED_KINDS = frozenset({RunKind.SCHEDULED, RunKind.CAUGHT_UP})  # not manual, not backfill
HELD_READ_LIMIT = 20  # a buffer_one entry's newest runs read for its last published slot


@dataclass
class RunTotals:
    """Counts of one entry, summed over the schedulers whose /metrics were read."""

    due: int = 0
    published: int = 0
    late: int = 0
    missed: Counter[str] = field(default_factory=Counter)


def read_counts(urls: Sequence[str], timeout: float = 5.0) -> dict[str, RunTotals]:
    """Per-entry run counts from each scheduler's /metrics, summed."""
    totals: dict[str, RunTotals] = {}
    for url in urls:
        target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
        try:
            with urllib.request.urlopen(target, timeout=timeout) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError) as exc:
            # a URLError's text wraps the OS's reason in "<urlopen error ...>"; an HTTPError's
            # text ("HTTP Error 404: Not Found") reads well as it is
            reason = exc.reason if type(exc) is urllib.error.URLError else exc
            click.echo(
                f"beatd: --metrics-url: cannot read {target}: {reason}; is `beatd run` serving "
                "metrics there (--metrics-addr)?",
                err=True,
            )
            sys.exit(EXIT_RUNTIME)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                entry = sample.labels.get("entry")
                if entry is None:
                    continue
                counts = totals.setdefault(entry, RunTotals())
                if sample.name in COUNTED:
                    attr = COUNTED[sample.name]
                    setattr(counts, attr, getattr(counts, attr) + int(sample.value))
                elif sample.name == MISSED:
                    counts.missed[sample.labels["reason"]] += int(sample.value)
    return totals


def entry_names(
    config: Config | None, states: dict[str, EntryState], asked: Sequence[str], limit: int | None
) -> tuple[list[str], int]:
    """The entries to show: those `asked` (all when none), configured ones (or persisted ones
    when no configuration is known), in name order, at most `limit`; and how many there were."""
    known = sorted(config.entries) if config is not None else sorted(states)
    for name in asked:
        if name not in known:
            where = "the schedule files" if config is not None else "the backend's entry states"
            bad_option("ENTRY", f"no entry {name!r} in {where}{suggest(name, known)}")
    names = [name for name in known if name in set(asked)] if asked else known
    return names[:limit], len(names)


def entry_rows(
    config: Config | None,
    states: dict[str, EntryState],
    names: Sequence[str],
    counts: dict[str, RunTotals] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """One row per entry of `names`: its persisted state and next due time."""
    rows = []
    for name in names:
        state = states.get(name)
        row: dict[str, Any] = {
            "entry": name,
            "last_published": _time(state.last_published if state else None),
            "horizon": _time(state.last_slot if state else None),
            "next_due": None,
            "overdue_seconds": None,
            "adopted": state is not None,
        }
        if config is not None:
            entry = config.entries[name]
            row["adopted"] = state is not None and state.identity == entry.identity
            # A leader starts an entry new to it (or with a changed schedule) from now.
            after = state.last_slot if state is not None and row["adopted"] else now
            slot = entry.schedule.next_after(after)
            if slot is not None:
                due = entry.due_for(slot)
                row["next_due"] = _time(due)
                if now - due > entry.misfire_grace:
                    row["overdue_seconds"] = round((now - due).total_seconds(), 3)
        total = counts.get(name, RunTotals()) if counts is not None else None
        row["due"] = total.due if total else None
        row["published"] = total.published if total else None
        row["late"] = total.late if total else None
        row["missed"] = dict(sorted(total.missed.items())) if total else None
        rows.append(row)
    return rows


def add_summaries(rows: list[dict[str, Any]], summaries: dict[str, EntrySummary] | None) -> None:
    """Each row's last finished run from the history (None: unknown, the history unreadable)."""
    for row in rows:
        summary = summaries.get(row["entry"]) if summaries is not None else None
        row["last_status"] = summary.last_status if summary else None
        row["last_finished"] = _time(summary.last_finished_at if summary else None)
        row["last_success"] = _time(summary.last_success_at if summary else None)
        row["last_failure"] = _time(summary.last_failure_at if summary else None)
        duration = summary.last_duration if summary else None
        row["last_duration_seconds"] = seconds(duration)
        row["consecutive_failures"] = summary.consecutive_failures if summary else None


def read_summaries(store: Backend, names: Sequence[str]) -> dict[str, EntrySummary] | None:
    """The entries' summaries; None, with a warning, when the history cannot be read (the
    rest of the status still can)."""
    if not names:
        return {}
    try:
        return store.summaries(names)
    except BeatdError as exc:
        click.echo(f"beatd: warning: cannot read the run history: {exc}", err=True)
        return None


def read_held_published(
    store: Backend, config: Config | None, states: dict[str, EntryState], names: Sequence[str]
) -> dict[str, datetime]:
    """The newest scheduled slot the history holds published for each `buffer_one` entry (of
    `names`, when the schedule files are known): a run's final outcome publishes a held slot
    behind the leader's back, and the persisted state learns of it at the leader's next write
    of the entry only. Empty when the history cannot be read (read_summaries says so)."""
    if config is None:
        return {}
    newest: dict[str, datetime] = {}
    try:
        for name in names:
            if config.entries[name].overlap is not Overlap.BUFFER_ONE:
                continue
            state = states.get(name)
            since = state.last_published if state is not None else None
            query = HistoryQuery(entry=name, since=since, limit=HELD_READ_LIMIT)
            slots = [r.slot for r in store.runs(query) if r.kind in SCHEDULED_KINDS]
            if slots:
                newest[name] = max(slots)
    except BeatdError:
        return {}
    return newest


def add_held_published(rows: list[dict[str, Any]], newest: dict[str, datetime]) -> None:
    for row in rows:
        slot = newest.get(row["entry"])
        if slot is not None and (row["last_published"] or "") < slot_text(slot):
            row["last_published"] = slot_text(slot)


def read_controls(store: Backend, names: Sequence[str]) -> dict[str, EntryControl]:
    """The entries' pauses, busy marks and held runs."""
    return store.load_controls(names) if names else {}


def add_controls(
    rows: list[dict[str, Any]], controls: dict[str, EntryControl] | None, now: datetime
) -> None:
    """Each row's pause (who, why, until), busy mark and held run (None: none, or unknown). A
    pause whose `until` has passed is over, though still stored; a paused entry is not overdue:
    its slots end missed (paused), not late."""
    for row in rows:
        control = controls.get(row["entry"]) if controls is not None else None
        pause = control.pause if control else None
        if pause is not None and pause.until is not None and pause.until <= now:
            pause = None
        if pause is not None:
            row["overdue_seconds"] = None
        busy = control.busy if control else None
        held = control.held if control else None
        row["paused"] = (
            None
            if pause is None
            else {
                "at": _time(pause.at),
                "until": _time(pause.until),
                "reason": pause.reason,
                "by": pause.by,
            }
        )
        row["busy"] = None if busy is None else {"run_id": busy.run_id, "since": _time(busy.since)}
        row["held"] = None if held is None else {"run_id": held.run_id, "slot": _time(held.slot)}


def control_lines(rows: Sequence[dict[str, Any]]) -> Iterable[str]:
    """One line per pause, busy mark and held run of the entries shown."""
    for row in rows:
        pause, busy, held = row.get("paused"), row.get("busy"), row.get("held")
        if pause:
            until = pause["until"] or "resumed"
            yield (
                f"paused   {row['entry']}: by {pause['by']}, reason {pause['reason']!r}, "
                f"since {pause['at']}, until {until}"
            )
        if busy:
            yield f"busy     {row['entry']}: run {busy['run_id']} since {busy['since']}"
        if held:
            yield f"held     {row['entry']}: run {held['run_id']}, published when the busy one ends"


def queue_rows(backend: Backend) -> list[dict[str, Any]]:
    depths = backend.queue_depths()
    letters = Counter(letter.queue for letter in backend.dead_letters())
    return [
        {"queue": q, "depth": depths.get(q, 0), "dead_letters": letters.get(q, 0)}
        for q in sorted({*depths, *letters})
    ]


def leader_row(info: LeaderInfo | None, config: Config | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "node": info.node,
        "epoch": info.epoch,
        "lease_left_seconds": round(info.expires_in, 3),
        "config": info.config_hash or None,
        "same_config": None if config is None else info.config_hash == config.fingerprint,
    }


def _time(moment: datetime | None) -> str | None:
    return slot_text(moment) if moment is not None else None


@main.command()
@schedule_options
@backend_options
@logging_options()
@click.option(
    "--metrics-url",
    "metrics_urls",
    multiple=True,
    metavar="URL",
    help="A scheduler's metrics, such as http://127.0.0.1:9477 (repeatable: one per `beatd "
    "run`, summed), for the late and missed counts, which only the schedulers keep.",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    show_default="all",
    help="Show the first N entries (by name) only.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.argument("entries", nargs=-1, metavar="[ENTRY]...")
def status(
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
    metrics_urls: tuple[str, ...],
    limit: int | None,
    as_json: bool,
    entries: tuple[str, ...],
) -> None:
    """Show the leader, each entry's last and next run and how its last run ended, queue
    depths and dead letters."""
    setup_logging(log.level, log.format)
    config = read_optional_config(schedule)
    counts = read_counts(metrics_urls) if metrics_urls else None
    store = open_broker(backend, read_only=True)
    if store.url.startswith("memory://"):  # only this process's own, empty store: say why
        warn_about_backend(store)
    try:
        info = store.leader()
        states = store.load_states()
        names, total = entry_names(config, states, entries, limit)
        summaries = read_summaries(store, names)
        controls = read_controls(store, names)
        held_published = read_held_published(store, config, states, names)
        queues = queue_rows(store)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    now = datetime.fromtimestamp(time.time(), UTC)
    rows = entry_rows(config, states, names, counts, now)
    add_held_published(rows, held_published)
    add_summaries(rows, summaries)
    add_controls(rows, controls, now)
    report = {
        "backend": store.url,
        "now": _time(now),
        "config": config.fingerprint if config is not None else None,
        "leader": leader_row(info, config),
        "entries": rows,
        "entries_total": total,
        "queues": queues,
        "counts_from": list(metrics_urls),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in render(report):
            click.echo(line)


def render(report: dict[str, Any]) -> Iterable[str]:
    yield f"backend  {report['backend']}"
    leader = report["leader"]
    if leader is None:
        yield "leader   none: no scheduler holds the lease, nothing is being published"
    else:
        drift = {True: "", False: " (differs from these schedule files)", None: ""}
        yield (
            f"leader   node={leader['node']} epoch={leader['epoch']} "
            f"lease_left={leader['lease_left_seconds']:.1f}s "
            f"config={leader['config'] or '?'}{drift[leader['same_config']]}"
        )
    yield ""
    yield from entry_table(report)
    yield from control_lines(report["entries"])
    if not report["counts_from"]:
        yield "late/missed: unknown; pass --metrics-url of each `beatd run` (counted per process)"
    else:
        yield "late/missed: since each scheduler started, from " + ", ".join(report["counts_from"])
    yield ""
    queues = [("QUEUE", "DEPTH", "DEAD LETTERS")]
    queues += [(q["queue"], str(q["depth"]), str(q["dead_letters"])) for q in report["queues"]]
    yield from _table(queues)
    if not report["queues"]:
        yield "no messages waiting and no dead letters"


def entry_table(report: dict[str, Any]) -> Iterable[str]:
    """The entries with their times absolute and relative to now, as `systemctl list-timers`."""
    now = datetime.fromisoformat(report["now"])
    header = ("ENTRY", "LAST PUBLISHED", "NEXT DUE", "LAST STATUS", "LAST SUCCESS", "LAST DURATION")
    table = [(*header, "LATE", "MISSED")]
    for row in report["entries"]:
        table.append(
            (
                row["entry"],
                _when(row["last_published"], now),
                _next_due(row, now),
                _last_status(row),
                "-" if row["last_status"] is None else _when(row["last_success"], now),
                "-" if row["last_status"] is None else span_text(_span(row)),
                "-" if row["late"] is None else str(row["late"]),
                _missed(row["missed"]),
            )
        )
    yield from _table(table)
    shown, total = len(report["entries"]), report["entries_total"]
    yield f"{shown} entries" if shown == total else f"{shown} of {total} entries (--limit)"


def _when(text: str | None, now: datetime) -> str:
    return absolute_and_relative(None if text is None else datetime.fromisoformat(text), now)


def _next_due(row: dict[str, Any], now: datetime) -> str:
    if row["next_due"] is None:
        return "never"
    due = datetime.fromisoformat(row["next_due"])
    if row["overdue_seconds"] is not None:
        return f"{row['next_due']} (overdue {relative(due, now).removesuffix(' ago')})"
    new = "" if row["adopted"] else "new, "
    return f"{row['next_due']} ({new}{relative(due, now)})"


def _last_status(row: dict[str, Any]) -> str:
    status: str | None = row["last_status"]
    if status is None:
        return "-"
    failures = row["consecutive_failures"] or 0
    return f"{status} ({failures} in a row)" if failures > 1 else status


def _span(row: dict[str, Any]) -> timedelta | None:
    duration = row["last_duration_seconds"]
    return None if duration is None else timedelta(seconds=duration)


def _missed(missed: dict[str, int] | None) -> str:
    if missed is None:
        return "-"
    text = str(sum(missed.values()))
    if missed:
        text += " (" + ", ".join(f"{k} {v}" for k, v in missed.items()) + ")"
    return text


def _table(rows: Sequence[tuple[str, ...]]) -> Iterable[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
