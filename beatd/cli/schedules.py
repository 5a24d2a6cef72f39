"""`beatd check` and `beatd next`: validate and preview schedules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from itertools import chain
from zoneinfo import ZoneInfo

import click

from beatd.backends import Backend
from beatd.cli.common import (
    EXIT_BAD_INPUT,
    BackendSettings,
    ScheduleSettings,
    bad_option,
    fail,
    main,
    read_config,
    runtime_entries_options,
    schedule_options,
    slot_text,
)
from beatd.cli.known_entries import (
    FILES_ONLY,
    file_clashes,
    open_runtime,
    runtime_entries,
    runtime_entry,
    source_of,
)
from beatd.config import YAML_SUFFIXES, Config, Entry
from beatd.config.convert import (
    ENTRY_NAME,
    ENTRY_NAME_RULE,
    suggest,
    to_datetime,
    to_every,
    to_timezone,
)
from beatd.config.schema import schema_text
from beatd.config.yamlfile import field_positions
from beatd.controls import Overlap
from beatd.errors import BeatdError, Problem, ScheduleError
from beatd.operations.upcoming import dst_object, next_marked
from beatd.schedules import CronSchedule, IntervalSchedule, OnceSchedule, Schedule
from beatd.schedules.cron import uses_hash
from beatd.schedules.dstmarks import DstMark
from beatd.schedules.window import WindowedSchedule
from beatd.tasks import TaskError, import_task_modules, registry

COUNT_HELP = "How many due times to show, per entry."
NEVER = "never fires before the end of year 9999"


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--yaml-only", is_flag=True, help="Skip Python schedule files: run no code.")
@click.option("--strict", is_flag=True, help="Fail (exit 2) on warnings too.")
@click.option("--verbose", "-v", is_flag=True, help="Add each entry's description as a column.")
@click.option(
    "--tasks",
    "check_tasks",
    is_flag=True,
    help="Import the task modules as the worker would, and check every task: name is registered.",
)
@click.option(
    "--app",
    "-A",
    "apps",
    multiple=True,
    envvar="BEATD_APP",
    help="With --tasks: a task module to import besides imports: (repeatable; the variable is "
    "space-separated).",
)
@schedule_options
@runtime_entries_options
def check(
    paths: tuple[str, ...],
    yaml_only: bool,
    strict: bool,
    verbose: bool,
    check_tasks: bool,
    apps: tuple[str, ...],
    schedule: ScheduleSettings,
    backend: BackendSettings | None,
) -> None:
    """Validate schedule files and show each entry with its next due time.

    With --broker, a file entry named like one of its runtime entries is an error, as the
    scheduler reports it.
    """
    config = read_config(replace(schedule, paths=paths) if paths else schedule, yaml_only)
    _check_names(config, backend)
    now = datetime.now(UTC)
    if check_tasks:
        problems = _task_problems(config, apps)
        for problem in problems:
            click.echo(problem, err=True)
        if problems:
            sys.exit(EXIT_BAD_INPUT)
    _print_table(_entry_rows(config, now, verbose))
    warnings = _warnings(config, now)
    for warning in warnings:
        click.echo(warning, err=True)
    count = f"{len(config.entries)} {'entry' if len(config.entries) == 1 else 'entries'}"
    files = f"in {len(config.sources)} file(s)"
    if strict and warnings:
        click.echo(f"{count} read {files}, {len(warnings)} warning(s): not OK with --strict")
        bad_option("--strict", f"failing because of {len(warnings)} warning(s)")
    click.echo(f"{count} OK {files}" + (f", {len(warnings)} warning(s)" if warnings else ""))


def _check_names(config: Config, backend: BackendSettings | None) -> None:
    """Exit 2 with the scheduler's configuration error when a file entry has the name of one
    of the backend's runtime entries."""
    store = open_runtime(backend)
    if store is None:
        return
    try:
        clash = file_clashes(store, config.entries)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    if clash is not None:
        fail(clash)


def _task_problems(config: Config, apps: tuple[str, ...]) -> list[str]:
    """Import the task modules as the worker does (`-A` and `imports:`, from the current
    directory too) and say which does not import, and which entry names a task none registers.
    Entries in Celery's protocol are left out: Celery workers run them."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    modules = tuple(dict.fromkeys([*apps, *config.imports]))
    if not modules:
        return [
            "beatd: --tasks: no task modules to import: name them with -A/--app pkg.module or "
            "under imports: in a schedule file"
        ]
    problems = []
    locator = _FieldLocator()
    for module in modules:
        try:
            import_task_modules([module])
        except TaskError as exc:
            problems.append(f"beatd: {exc}")
    known = registry.names()
    for entry in config.entries.values():
        if entry.protocol != "celery" and entry.task not in registry:
            message = (
                f"{entry.task!r} is not registered by the task modules {', '.join(modules)}"
                f"{suggest(entry.task, known)}"
            )
            problems.append(locator.problem(entry, "task", message))
    return problems


def _entry_rows(config: Config, now: datetime, verbose: bool) -> list[tuple[str, ...]]:
    header = ("ENTRY", "TASK", "SCHEDULE", "TIMEZONE", "NEXT DUE (UTC)")
    rows: list[tuple[str, ...]] = [(*header, "DESCRIPTION") if verbose else header]
    for entry in config.entries.values():
        upcoming = entry.schedule.next_after(now)
        due = slot_text(upcoming) if upcoming else "never"
        state = "" if entry.enabled else " (disabled)"
        row = (entry.name + state, entry.task, entry.schedule.describe(), entry.timezone, due)
        rows.append((*row, entry.description) if verbose else row)
    return rows


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _warnings(config: Config, now: datetime) -> list[str]:
    """What is valid but cannot be meant: a one-off `at:` already past, or an `end:` already
    past, never runs."""
    warnings = []
    locator = _FieldLocator()
    for entry in config.entries.values():
        schedule = entry.schedule
        if isinstance(schedule, OnceSchedule) and schedule.next_after(now) is None:
            message = (
                f"warning: {schedule.at.isoformat()} is in the past, so this one-off run will "
                "never happen; move it into the future or remove the entry"
            )
            warnings.append(locator.problem(entry, "at", message))
        if _never_fires(schedule, now):
            message = (
                "warning: it never fires before the end of year 9999 "
                f"(in {entry.timezone}), so this entry will never run; change the expression "
                "or remove the entry"
            )
            warnings.append(locator.problem(entry, "cron", message))
        if isinstance(schedule, WindowedSchedule) and schedule.ended(now):
            assert schedule.end is not None
            message = (
                f"warning: the window ended at {schedule.end.isoformat()}, so this entry will "
                "never run again; move end: into the future or remove the entry"
            )
            warnings.append(locator.problem(entry, "end", message))
        if entry.overlap is not Overlap.ALLOW and entry.protocol == "celery":
            message = (
                f"warning: overlap: {entry.overlap.value} on a Celery-protocol entry sees a run "
                "end only through Celery's events, so its workers must be started with -E "
                "(else each run counts as busy until overlap_timeout)"
            )
            warnings.append(locator.problem(entry, "overlap", message))
    return warnings


def _never_fires(schedule: Schedule, now: datetime) -> bool:
    """A cron whose every match falls where it does not fire (a wildcard in a spring gap)."""
    inner = schedule.inner if isinstance(schedule, WindowedSchedule) else schedule
    return isinstance(inner, CronSchedule) and inner.next_after(now) is None


class _FieldLocator:
    """Messages located at an entry's field as the reader's are: in a YAML file at the field's
    value (each file read again once), else at the entry (a Python schedule file's `source`
    holds no column: 1 stands in)."""

    def __init__(self) -> None:
        self._files: dict[str, Callable[[str, str], tuple[int, int] | None]] = {}

    def problem(self, entry: Entry, field: str, message: str) -> str:
        path, _, line = entry.source.rpartition(":")
        if not line.isdigit():
            path, line = entry.source, "1"
        position = None
        if path.endswith(YAML_SUFFIXES):
            if path not in self._files:
                self._files[path] = field_positions(path)
            position = self._files[path](entry.name, field)
        row, column = position or (int(line), 1)
        return str(Problem(path, row, column, message, entry.name, field))


def _deprecated_tz(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`next --tz`: the old name of --timezone, kept hidden for one release."""
    if value is not None:
        click.echo(
            "beatd: warning: --tz is deprecated and will be removed in the next release; "
            "use --timezone (BEATD_TIMEZONE)",
            err=True,
        )
    return value


@main.command(name="next")
@click.argument("entry", required=False)
@click.option(
    "-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help=COUNT_HELP
)
@click.option(
    "--after", help="Start after this ISO time (exclusive); naive times are in --timezone."
)
@click.option("--cron", "cron", help="An ad-hoc cron expression instead of configured entries.")
@click.option("--every", "every", help="An ad-hoc interval such as 30s or 1h30m.")
@click.option(
    "--name", "name", help="With --cron: the entry name H is hashed from (as in a schedule file)."
)
@click.option("--tz", "old_tz", hidden=True, callback=_deprecated_tz, help="Use --timezone.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with UTC times.")
@schedule_options
@runtime_entries_options
def next_command(
    entry: str | None,
    count: int,
    after: str | None,
    cron: str | None,
    every: str | None,
    name: str | None,
    old_tz: str | None,
    as_json: bool,
    schedule: ScheduleSettings,
    backend: BackendSettings | None,
) -> None:
    """Show the next due times of configured entries, or of --cron / --every.

    --timezone is the zone of --cron, of a naive --after and of entries whose file gives none.
    With --broker, the backend's runtime entries are shown too, each entry with its source.
    """
    if old_tz is not None:
        schedule = replace(schedule, timezone=old_tz)
    try:
        zone_name = to_timezone(schedule.timezone)
    except ValueError as exc:
        bad_option("--timezone", str(exc))
    start = datetime.now(UTC)
    if after is not None:
        try:
            start = to_datetime(after, zone_name)
        except ValueError as exc:
            bad_option("--after", str(exc))
    if cron is not None or every is not None:
        if entry is not None or (cron is not None and every is not None):
            bad_option("--cron/--every", "give one of --cron, --every or an ENTRY, not several")
        adhoc = _adhoc_schedule(cron, every, name, zone_name)
        _print_adhoc(adhoc, start, count, zone_name, as_json)
        return
    config = read_config(schedule)
    store = open_runtime(backend)
    try:
        chunks = _configured(config, store, entry)
        _print_entries(chunks, start, count, as_json, sources=store is not None)
    except BeatdError as exc:
        fail(exc)
    finally:
        if store is not None:
            store.close()


def _configured(config: Config, store: Backend | None, name: str | None) -> Iterable[list[Entry]]:
    """The entries `next` shows, in chunks: entry `name`, or every file entry then (with a
    backend) the runtime entries by name, but those a file entry's name hides."""
    if name is None:
        if store is None:
            click.echo(
                "beatd: note: schedule files' entries only: give --broker (BEATD_BROKER) to show "
                "runtime entries too",
                err=True,
            )
            return [list(config.entries.values())]
        return chain([list(config.entries.values())], runtime_entries(store, config.entries))
    if name in config.entries:
        return [[config.entries[name]]]
    found = None if store is None else runtime_entry(store, name)
    if found is None:
        where = f"no entry named {name!r} in {', '.join(config.sources)}"
        if store is None:
            bad_option("ENTRY", f"{where}; without --broker (BEATD_BROKER) {FILES_ONLY}")
        bad_option("ENTRY", f"{where}, nor a runtime entry of that name")
    return [[found]]


def _adhoc_schedule(cron: str | None, every: str | None, name: str | None, zone: str) -> Schedule:
    if name is not None and cron is None:
        bad_option("--name", "--name only applies to --cron (the name H is hashed from)")
    if name is not None and not ENTRY_NAME.match(name):
        bad_option("--name", f"{name!r}: {ENTRY_NAME_RULE}")
    if cron is not None and name is None and uses_hash(cron):
        bad_option(
            "--name", "--cron uses H, which is hashed from an entry name: give it with --name"
        )
    try:
        if cron is not None:
            return CronSchedule.parse(cron, zone, entry=name)
        assert every is not None
        return IntervalSchedule(to_every(every))
    except ScheduleError as exc:
        bad_option("--cron", str(exc))
    except ValueError as exc:
        bad_option("--every", str(exc))


def _print_adhoc(schedule: Schedule, start: datetime, count: int, zone: str, as_json: bool) -> None:
    runs = next_marked(schedule, start, count)
    if as_json:
        click.echo(json.dumps([_run_json(t, mark) for t, mark in runs]))
        return
    click.echo(schedule.describe())
    for t, mark in runs:
        click.echo(_run_line(t, mark, ZoneInfo(zone)))
    if _never_fires(schedule, start):
        click.echo(NEVER)


def _run_json(t: datetime, mark: DstMark | None) -> dict[str, object]:
    return {"slot": slot_text(t), "dst": dst_object(mark)}


def _run_line(t: datetime, mark: DstMark | None, zone: ZoneInfo) -> str:
    line = f"{slot_text(t)}  {t.astimezone(zone).isoformat()}"
    return line if mark is None else f"{line}  DST {mark.rule}: {mark.note}"


def _print_entries(
    chunks: Iterable[list[Entry]], start: datetime, count: int, as_json: bool, sources: bool
) -> None:
    """Each entry's next runs, a chunk at a time (runtime entries come a page at a time):
    text, with each entry's source when `sources`, or one JSON object keyed by entry name."""
    separator = "{"
    for entry in chain.from_iterable(chunks):
        runs = next_marked(entry.schedule, start, count)
        if as_json:
            shown = json.dumps([_run_json(t, mark) for t, mark in runs])
            click.echo(f"{separator}{json.dumps(entry.name)}: {shown}", nl=False)
            separator = ", "
            continue
        source = f", source {source_of(entry)}" if sources else ""
        click.echo(f"{entry.name}: {entry.schedule.describe()} ({entry.timezone}){source}")
        zone = ZoneInfo(entry.timezone)
        for t, mark in runs:
            click.echo(f"  {_run_line(t, mark, zone)}")
        if _never_fires(entry.schedule, start):
            click.echo(f"  {NEVER}")
    if as_json:
        click.echo("{}" if separator == "{" else "}")


@main.command()
def schema() -> None:
    """Print the JSON Schema of schedule files, for editors (see docs/configuration.md).

    It is generated from the field table the validator reads; `beatd check` also checks what a
    schema cannot (cron syntax, zone names, fields that only go together).
    """
    click.echo(schema_text(), nl=False)
