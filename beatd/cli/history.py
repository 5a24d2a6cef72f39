"""`beatd history`: what ran, when, for how long and how it ended, and the slots that were
missed, from the run history the backends keep (docs/history.md).

Every field of `--json` is documented in docs/history.md (a test compares the lists). The
schedule files are read, when there are any, only for each entry's timezone: the history itself
is the backend's, the same whichever node asks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import click

from beatd.cli.common import (
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
from beatd.config import Config
from beatd.errors import BeatdError
from beatd.history import HistoryQuery, MissedRecord, RunKind, RunRecord
from beatd.operations.history import (
    MISSED,
    OUTCOMES,
    SCAN_LIMIT,
    PauseFound,
    parse_since,
    read_history,
    record_object,
    unknown_outcome,
)
from beatd.service import setup_logging
from beatd.timetext import local_stamp, span_text

SINCE_HELP = (
    "Only records written since then: a duration back from now (30m, 2d) or an ISO 8601 time "
    "(2026-12-05T01:00:00Z; one without an offset is UTC)."
)


def read_since(text: str | None, now: datetime) -> datetime | None:
    """--since: a duration back from `now`, or an ISO 8601 time; bad input ends the command."""
    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        bad_option("--since", str(exc))


def read_outcomes(values: Sequence[str]) -> frozenset[str]:
    for value in values:
        problem = unknown_outcome(value)
        if problem is not None:
            bad_option("--outcome", problem)
    return frozenset(values)


def run_row(run: RunRecord, zone: str | None) -> tuple[str, ...]:
    first = run.attempts[0] if run.attempts else None
    last = run.attempts[-1] if run.attempts else None
    detail = [] if run.kind is RunKind.SCHEDULED else [str(run.kind)]
    if last is not None and last.reason:
        detail.append(last.reason)
    if last is not None and last.error_type:
        detail.append(_one_line(f"{last.error_type}: {last.error}"))
    if run.overdue_at is not None:
        detail.append(f"overdue at {_short(run.overdue_at)}")
    return (
        run.entry,
        _short(run.slot),
        local_stamp(run.slot, zone) or "-",
        str(run.status),
        span_text(first.started_at - run.due) if first else "-",
        _short(first.started_at) if first else "-",
        span_text(last.duration) if last else "-",
        str(len(run.attempts)),
        last.consumer if last else "-",
        run.node,
        str(run.epoch),
        "; ".join(detail),
    )


def missed_row(record: MissedRecord, zone: str | None) -> tuple[str, ...]:
    slots = record.slots
    detail = f"{slots.total} slot(s) {slots.reason}"
    if slots.total > 1:
        detail += f", the last {_short(slots.last)}"
    if record.overdue_at is not None:
        detail += f"; overdue at {_short(record.overdue_at)}"
    first = (slots.entry, _short(slots.first), local_stamp(slots.first, zone) or "-", MISSED)
    return (*first, "-", "-", "-", "-", "-", record.node, str(record.epoch), detail)


HEADER = (
    "ENTRY",
    "SCHEDULED (UTC)",
    "ENTRY'S ZONE",
    "STATUS",
    "DELAY",
    "STARTED",
    "DURATION",
    "TRIES",
    "WORKER",
    "NODE",
    "EPOCH",
    "DETAIL",
)


def _short(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def _one_line(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(rows: Sequence[tuple[str, ...]]) -> Iterable[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()


@main.command()
@click.argument("entry", required=False)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show the newest N records.",
)
@click.option("--since", metavar="DURATION|TIME", help=SINCE_HELP)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    metavar="OUTCOME",
    help="Only runs with this status (repeatable): " + ", ".join(OUTCOMES[:-1]) + "; `missed` "
    "for the missed-slot records.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line and record.")
@schedule_options
@backend_options
@logging_options("warning", with_format=False)
def history(
    entry: str | None,
    limit: int,
    since: str | None,
    outcomes: tuple[str, ...],
    as_json: bool,
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Show the newest runs (of ENTRY, or of all entries) and how they ended, and the slots
    that were missed.

    Newest first: each run's scheduled time in UTC and in the entry's zone, its status, its
    delay (from due to the first start), the first start, the last attempt's duration, how
    many attempts, the last worker, and the leader that published it. See docs/history.md.
    """
    setup_logging(log.level, log.format)
    now = datetime.fromtimestamp(time.time(), UTC)
    chosen = read_outcomes(outcomes)
    query = HistoryQuery(entry, read_since(since, now), limit)
    config = read_optional_config(schedule)
    store = open_broker(backend, read_only=True)
    if store.url.startswith("memory://"):  # only this process's own, empty store: say why
        warn_about_backend(store)
    try:
        page = read_history(store, query, chosen)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    show(page.records, _zones(config), as_json, page.pauses)
    if page.cut_short:
        click.echo(
            f"beatd: --outcome: looked at the newest {SCAN_LIMIT} runs only; narrow the search "
            "with ENTRY or --since to see older ones",
            err=True,
        )


def show(
    records: Sequence[RunRecord | MissedRecord],
    zones: dict[str, str],
    as_json: bool,
    pauses: Mapping[tuple[str, datetime], PauseFound] | None = None,
) -> None:
    """Runs and missed ranges, newest written first: JSON lines or a table."""
    if as_json:
        for record in records:
            click.echo(json.dumps(record_object(record, zones, pauses), ensure_ascii=False))
        return
    if not records:
        click.echo("no runs or missed slots recorded that match")
        return
    rows = [HEADER, *(_row(record, zones) for record in records)]
    for line in table(rows):
        click.echo(line)


def _row(record: RunRecord | MissedRecord, zones: dict[str, str]) -> tuple[str, ...]:
    if isinstance(record, RunRecord):
        return run_row(record, zones.get(record.entry))
    return missed_row(record, zones.get(record.slots.entry))


def _zones(config: Config | None) -> dict[str, str]:
    """Each entry's timezone, from the schedule files; none for an entry not in them."""
    if config is None:
        return {}
    return {name: entry.timezone for name, entry in config.entries.items()}
