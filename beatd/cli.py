"""The `beatd` command line. Every daemon setting is a flag with a `BEATD_*` variable."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import click

from beatd.backends import Backend, default_broker, open_backend
from beatd.clock import SystemClock
from beatd.config import Config, Entry, load_config
from beatd.config.entries import to_datetime, to_duration, to_every, to_timezone
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.errors import BeatdError, ConfigError, ScheduleError
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.schedules import CronSchedule, IntervalSchedule, Schedule
from beatd.service import on_signals, setup_logging, watch_schedule_files

log = logging.getLogger("beatd")
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
F = TypeVar("F", bound=Callable[..., Any])


def slot_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fail(error: BeatdError) -> NoReturn:
    """Print an error the way users read them and exit with the documented status."""
    for line in str(error).splitlines():
        click.echo(line, err=True)
    sys.exit(EXIT_BAD_INPUT if isinstance(error, ConfigError) else EXIT_RUNTIME)


def bad_option(option: str, message: str) -> NoReturn:
    click.echo(f"beatd: {option}: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def config_options(func: F) -> F:
    """The flags every command that reads schedule files shares."""
    options = [
        click.option(
            "--schedules",
            "-s",
            "schedules",
            multiple=True,
            envvar="BEATD_SCHEDULES",
            default=("schedules",),
            show_default=True,
            help="Schedule files or directories (repeatable; the variable is space-separated).",
        ),
        click.option(
            "--timezone",
            envvar="BEATD_TIMEZONE",
            default="UTC",
            show_default=True,
            help="Timezone of entries whose file gives none.",
        ),
        click.option(
            "--max-file-size",
            envvar="BEATD_MAX_FILE_SIZE",
            type=int,
            default=DEFAULT_MAX_BYTES,
            show_default=True,
            help="Refuse schedule files larger than this many bytes.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def read_config(
    paths: Sequence[str], timezone: str, max_file_size: int, yaml_only: bool = False
) -> Config:
    try:
        zone = to_timezone(timezone)
    except ValueError as exc:
        bad_option("--timezone", str(exc))
    try:
        return load_config(
            paths, default_timezone=zone, yaml_only=yaml_only, max_bytes=max_file_size
        )
    except BeatdError as exc:
        fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="beatd")
def main() -> None:
    """beatd: a periodic scheduler daemon for Python task queues."""


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--yaml-only", is_flag=True, help="Skip Python schedule files: run no code.")
@config_options
def check(
    paths: tuple[str, ...],
    yaml_only: bool,
    schedules: tuple[str, ...],
    timezone: str,
    max_file_size: int,
) -> None:
    """Validate schedule files and show each entry with its next due time."""
    config = read_config(paths or schedules, timezone, max_file_size, yaml_only)
    now = datetime.now(UTC)
    rows = [("ENTRY", "TASK", "SCHEDULE", "TIMEZONE", "NEXT DUE (UTC)")]
    for entry in config.entries.values():
        upcoming = entry.schedule.next_after(now)
        due = slot_text(upcoming) if upcoming else "never"
        state = "" if entry.enabled else " (disabled)"
        rows.append(
            (entry.name + state, entry.task, entry.schedule.describe(), entry.timezone, due)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    count = len(config.entries)
    click.echo(
        f"{count} {'entry' if count == 1 else 'entries'} OK in {len(config.sources)} file(s)"
    )


@main.command(name="next")
@click.argument("entry", required=False)
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--after", help="Start after this ISO time (exclusive); naive times are in --tz.")
@click.option("--cron", "cron", help="An ad-hoc cron expression instead of configured entries.")
@click.option("--every", "every", help="An ad-hoc interval such as 30s or 1h30m.")
@click.option("--tz", "tz", help="Timezone for --cron and for a naive --after.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with UTC times.")
@config_options
def next_command(
    entry: str | None,
    count: int,
    after: str | None,
    cron: str | None,
    every: str | None,
    tz: str | None,
    as_json: bool,
    schedules: tuple[str, ...],
    timezone: str,
    max_file_size: int,
) -> None:
    """Show the next due times of configured entries, or of --cron / --every."""
    zone_name = tz or timezone
    try:
        zone_name = to_timezone(zone_name)
    except ValueError as exc:
        bad_option("--tz", str(exc))
    start = datetime.now(UTC)
    if after is not None:
        try:
            start = to_datetime(after, zone_name)
        except ValueError as exc:
            bad_option("--after", str(exc))
    if cron is not None or every is not None:
        if entry is not None or (cron is not None and every is not None):
            bad_option("--cron/--every", "give one of --cron, --every or an ENTRY, not several")
        schedule = _adhoc_schedule(cron, every, zone_name)
        times = _upcoming(schedule, start, count)
        if as_json:
            click.echo(json.dumps([slot_text(t) for t in times]))
        else:
            click.echo(schedule.describe())
            for t in times:
                click.echo(f"{slot_text(t)}  {t.astimezone(ZoneInfo(zone_name)).isoformat()}")
        return
    config = read_config(schedules, timezone, max_file_size)
    entries = list(config.entries.values())
    if entry is not None:
        if entry not in config.entries:
            bad_option("ENTRY", f"no entry named {entry!r} in {', '.join(config.sources)}")
        entries = [config.entries[entry]]
    _print_entries(entries, start, count, as_json)


def _adhoc_schedule(cron: str | None, every: str | None, zone: str) -> Schedule:
    try:
        if cron is not None:
            return CronSchedule.parse(cron, zone)
        assert every is not None
        return IntervalSchedule(to_every(every))
    except ScheduleError as exc:
        bad_option("--cron", str(exc))
    except ValueError as exc:
        bad_option("--every", str(exc))


def _upcoming(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    t: datetime | None = start
    while len(times) < count:
        t = schedule.next_after(t) if t is not None else None
        if t is None:
            break
        times.append(t)
    return times


def _print_entries(entries: list[Entry], start: datetime, count: int, as_json: bool) -> None:
    table = {e.name: _upcoming(e.schedule, start, count) for e in entries}
    if as_json:
        click.echo(json.dumps({name: [slot_text(t) for t in ts] for name, ts in table.items()}))
        return
    for entry in entries:
        click.echo(f"{entry.name}: {entry.schedule.describe()} ({entry.timezone})")
        zone = ZoneInfo(entry.timezone)
        for t in table[entry.name]:
            click.echo(f"  {slot_text(t)}  {t.astimezone(zone).isoformat()}")


def daemon_options(func: F) -> F:
    """The flags `run` and `worker` share."""
    options = [
        click.option(
            "--broker",
            envvar="BEATD_BROKER",
            default=default_broker,
            show_default="sqlite:///beatd.db, or $STATE_DIRECTORY/beatd.db under systemd",
            help="Backend URL: sqlite:///relative.db, sqlite:////absolute.db or redis://...",
        ),
        click.option(
            "--log-level",
            envvar="BEATD_LOG_LEVEL",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default="info",
            show_default=True,
        ),
        click.option(
            "--log-format",
            envvar="BEATD_LOG_FORMAT",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_broker(url: str) -> Backend:
    try:
        return open_backend(url)
    except BeatdError as exc:
        bad_option("--broker", str(exc))


@main.command()
@config_options
@daemon_options
@click.option(
    "--lease-ttl",
    envvar="BEATD_LEASE_TTL",
    default="10s",
    show_default=True,
    help="How long a leader's lease lasts without renewal; a standby takes over after it.",
)
@click.option(
    "--node",
    envvar="BEATD_NODE",
    default=lambda: f"{socket.gethostname()}-{os.getpid()}",
    show_default="HOSTNAME-PID",
    help="This scheduler's name in the lease and in logs; unique per process.",
)
@click.option(
    "--watch/--no-watch",
    envvar="BEATD_WATCH",
    default=True,
    show_default=True,
    help="Reload when a schedule file changes (SIGHUP always reloads).",
)
def run(
    schedules: tuple[str, ...],
    timezone: str,
    max_file_size: int,
    broker: str,
    log_level: str,
    log_format: str,
    lease_ttl: str,
    node: str,
    watch: bool,
) -> None:
    """Run the scheduler: publish each due run once, as leader among all `beatd run`."""
    setup_logging(log_level, log_format)
    try:
        ttl = to_duration(lease_ttl).total_seconds()
    except ValueError as exc:
        bad_option("--lease-ttl", str(exc))
    config = read_config(schedules, timezone, max_file_size)
    backend = open_broker(broker)

    def load() -> Config:
        return load_config(schedules, default_timezone=timezone, max_bytes=max_file_size)

    settings = SchedulerSettings(node=node, lease_ttl=ttl)
    scheduler = Scheduler(backend, load, SystemClock(), settings, config=config)
    stop = threading.Event()
    on_signals(stop, scheduler.wake, scheduler.request_reload)
    if watch:
        watch_schedule_files(schedules, stop, scheduler.request_reload)
    log.info(
        "beatd run node=%s broker=%s entries=%d config=%s",
        node,
        backend.url,
        len(config.entries),
        config.fingerprint,
    )
    try:
        scheduler.run(stop)
    finally:
        backend.close()
