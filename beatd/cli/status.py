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
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families

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
)
from beatd.cli.workers import warn_about_backend
from beatd.errors import BeatdError
from beatd.operations.status import RunTotals, UnknownEntry, status_report
from beatd.runtime_entries import API_SOURCE
from beatd.service import setup_logging
from beatd.timetext import absolute_and_relative, relative, span_text

COUNTED = {
    "beatd_runs_due_total": "due",
    "beatd_runs_published_total": "published",
    "beatd_runs_late_total": "late",
}
MISSED = "beatd_runs_missed_total"


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
    now = datetime.fromtimestamp(time.time(), UTC)
    try:
        built = status_report(store, config, entries, limit, counts, now)
    except UnknownEntry as exc:
        bad_option("ENTRY", str(exc))
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for warning in built.warnings:
        click.echo(f"beatd: warning: {warning}", err=True)
    report = {**built.report, "counts_from": list(metrics_urls)}
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
    yield from node_table(report)
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


def node_table(report: dict[str, Any]) -> Iterable[str]:
    """The nodes whose records are live, each marked where it differs from the leader's."""
    nodes = report["nodes"]
    if nodes is None:
        return  # unreadable: the warning said so
    if not nodes:
        yield "nodes    none: no `beatd run` wrote its record within 3 x its lease TTL"
        yield ""
        return
    now = datetime.fromisoformat(report["now"])
    table = [("NODE", "ROLE", "VERSION", "CONFIG", "TZ DATA", "API", "LAST SEEN")]
    for row in nodes:
        config = (row["config"] or "?") + (" (differs)" if row["same_config"] is False else "")
        tz = f"{row['tz_version']} ({row['tz_source']})"
        tz += " (differs from the leader's)" if row["same_tz"] is False else ""
        seen = datetime.fromisoformat(row["last_seen"])
        table.append(
            (
                row["node"],
                row["role"],
                row["version"],
                config,
                tz,
                row["api_addr"] or "-",
                relative(seen, now),
            )
        )
    yield from _table(table)
    yield f"{len(nodes)} nodes" if len(nodes) != 1 else "1 node"
    yield ""


def entry_table(report: dict[str, Any]) -> Iterable[str]:
    """The entries with their times absolute and relative to now, as `systemctl list-timers`."""
    now = datetime.fromisoformat(report["now"])
    header = ("ENTRY", "LAST PUBLISHED", "NEXT DUE", "LAST STATUS", "LAST SUCCESS", "LAST DURATION")
    table = [(*header, "LATE", "MISSED")]
    for row in report["entries"]:
        table.append(
            (
                row["entry"] + (" (api)" if row.get("source") == API_SOURCE else ""),
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
