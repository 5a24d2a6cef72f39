"""The `beatd` command line. Every daemon setting is a flag with a `BEATD_*` variable."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import click

from beatd.backends import Backend, DeadLetter, default_broker, open_backend
from beatd.clock import SystemClock
from beatd.config import Config, Entry, load_config
from beatd.config.entries import to_datetime, to_duration, to_every, to_timezone
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.errors import BeatdError, ConfigError, ScheduleError
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.schedules import CronSchedule, IntervalSchedule, Schedule
from beatd.service import on_signals, setup_logging, watch_schedule_files
from beatd.tasks import TaskError, import_task_modules, registry
from beatd.worker import Worker, WorkerSettings

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


# --- the worker: `beatd worker`, `beatd run --with-worker` ---------------------------------


def worker_options(func: F) -> F:
    """The flags `worker` and `run --with-worker` share."""
    options = [
        click.option(
            "--app",
            "-A",
            "apps",
            multiple=True,
            envvar="BEATD_APP",
            help="Task module to import, such as myapp.tasks (repeatable; the variable is "
            "space-separated). The schedule files' imports: are imported too.",
        ),
        click.option(
            "--queues",
            "-Q",
            envvar="BEATD_QUEUES",
            show_default="every queue the schedule files name, else default",
            help="Comma-separated queues to take runs from.",
        ),
        click.option(
            "--concurrency",
            "-c",
            envvar="BEATD_CONCURRENCY",
            type=click.IntRange(min=1),
            show_default="the number of CPUs",
            help="Tasks run at the same time (child processes or threads).",
        ),
        click.option(
            "--pool",
            envvar="BEATD_POOL",
            type=click.Choice(["process", "thread"]),
            default="process",
            show_default=True,
            help="Processes (hard time limits) or threads (I/O-bound tasks, soft time limits).",
        ),
        click.option(
            "--max-tasks-per-child",
            envvar="BEATD_MAX_TASKS_PER_CHILD",
            type=click.IntRange(min=1),
            help="Replace a child process after this many tasks.",
        ),
        click.option(
            "--max-memory-per-child",
            envvar="BEATD_MAX_MEMORY_PER_CHILD",
            type=click.IntRange(min=1),
            help="Replace a child process whose resident memory exceeds this many MiB after a "
            "task.",
        ),
        click.option(
            "--visibility-timeout",
            envvar="BEATD_VISIBILITY_TIMEOUT",
            default="30s",
            show_default=True,
            help="A run whose worker stops heartbeating is delivered again after this long.",
        ),
        click.option(
            "--max-deliveries",
            envvar="BEATD_MAX_DELIVERIES",
            type=click.IntRange(min=1),
            default=5,
            show_default=True,
            help="Dead-letter a run delivered more often than this without finishing.",
        ),
        click.option(
            "--drain-timeout",
            envvar="BEATD_DRAIN_TIMEOUT",
            default="30s",
            show_default=True,
            help="On SIGTERM, wait this long for running tasks before releasing their runs.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _seconds(option: str, value: str) -> float:
    try:
        seconds = to_duration(value).total_seconds()
    except ValueError as exc:
        bad_option(option, str(exc))
    if seconds <= 0:
        bad_option(option, f"must be positive, got {value!r}")
    return seconds


def build_worker(backend: Backend, config: Config | None, flags: dict[str, Any]) -> Worker:
    """Import the task modules and configure a worker from the command line's flags."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like celery: `-A examples.tasks` from a checkout
    modules = tuple(dict.fromkeys([*flags["apps"], *(config.imports if config else ())]))
    try:
        import_task_modules(modules)
    except TaskError as exc:
        click.echo(f"beatd: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if not registry:
        bad_option(
            "--app",
            "no tasks to run: name the modules that define them with -A/--app pkg.module or "
            "under imports: in a schedule file",
        )
    entries = list(config.entries.values()) if config else []
    if flags["queues"]:
        queues = tuple(q.strip() for q in flags["queues"].split(",") if q.strip())
        if not queues:
            bad_option("--queues", f"no queue names in {flags['queues']!r}")
    else:
        queues = tuple(sorted({e.queue for e in entries})) or ("default",)
    settings = WorkerSettings(
        queues=queues,
        concurrency=flags["concurrency"] or os.cpu_count() or 1,
        pool=flags["pool"],
        modules=modules,
        visibility_timeout=_seconds("--visibility-timeout", flags["visibility_timeout"]),
        max_deliveries=flags["max_deliveries"],
        max_tasks_per_child=flags["max_tasks_per_child"],
        max_memory_per_child=flags["max_memory_per_child"],
        drain_timeout=_seconds("--drain-timeout", flags["drain_timeout"]),
    )
    for entry in entries:
        if entry.queue in queues and entry.task not in registry:
            log.warning(
                "entry=%s task=%s is not registered in this worker: its runs will go to the "
                "dead-letter queue; import its module with -A/--app or imports:",
                entry.name,
                entry.task,
            )
    return Worker(backend, registry, settings)


def on_stop_signals(graceful: Callable[[], None], abort: Callable[[], None]) -> None:
    """SIGTERM or SIGINT drains; a second SIGINT stops at once."""
    stopping = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        name = signal.Signals(signum).name
        if not stopping:
            stopping = True
            log.info("received %s: finishing running tasks (SIGINT again stops at once)", name)
            graceful()
        elif signum == signal.SIGINT:
            log.warning("received SIGINT again: stopping now; unfinished runs are released")
            abort()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class EmbeddedWorker:
    """`run --with-worker`: the worker's loop in a thread beside the scheduler's."""

    def __init__(self, worker: Worker, backend: Backend, stop: Callable[[], None]) -> None:
        self.worker = worker
        self.backend = backend
        self.stop_scheduler = stop
        self.failed = False
        self.thread = threading.Thread(target=self._main, name="beatd-worker")
        self.thread.start()

    def _main(self) -> None:
        try:
            self.worker.run()
        except BeatdError as exc:
            log.error("the worker failed, stopping: %s", exc)
            self.failed = True
            self.stop_scheduler()
        except Exception:
            log.exception("the worker failed, stopping")
            self.failed = True
            self.stop_scheduler()
        finally:
            self.backend.close()

    def finish(self) -> None:
        """Drain the worker after the scheduler stopped; exit 1 if it had failed."""
        self.worker.stop()
        while self.thread.is_alive():
            self.thread.join(0.2)  # a timed join lets a second SIGINT through
        if self.failed:
            sys.exit(EXIT_RUNTIME)


def start_embedded_worker(
    broker: str, config: Config, scheduler: Scheduler, stop: threading.Event, flags: dict[str, Any]
) -> EmbeddedWorker:
    backend = open_broker(broker)
    worker = build_worker(backend, config, flags)

    def graceful() -> None:
        stop.set()
        scheduler.wake.set()
        worker.stop()

    on_stop_signals(graceful, worker.abort)
    notify = scheduler.on_event

    def on_event(event: str) -> None:
        notify(event)
        if event == "step":
            worker.nudge()  # whatever was just published runs now, not at the next poll

    scheduler.on_event = on_event
    return EmbeddedWorker(worker, backend, graceful)


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
@click.option(
    "--with-worker",
    envvar="BEATD_WITH_WORKER",
    is_flag=True,
    help="Also run the published tasks, in this process (the one-command quickstart).",
)
@worker_options
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
    with_worker: bool,
    **worker_flags: Any,
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
    worker = None
    if with_worker:
        worker = start_embedded_worker(broker, config, scheduler, stop, worker_flags)
    try:
        scheduler.run(stop)
    finally:
        backend.close()
        if worker is not None:
            worker.finish()


@main.command()
@config_options
@daemon_options
@worker_options
def worker(
    schedules: tuple[str, ...],
    timezone: str,
    max_file_size: int,
    broker: str,
    log_level: str,
    log_format: str,
    **flags: Any,
) -> None:
    """Run the published tasks: each run at least once, with retries and dead letters."""
    setup_logging(log_level, log_format)
    source = click.get_current_context().get_parameter_source("schedules")
    config = None
    if source is not click.core.ParameterSource.DEFAULT or os.path.exists(schedules[0]):
        config = read_config(schedules, timezone, max_file_size)
    backend = open_broker(broker)
    runner = build_worker(backend, config, flags)
    on_stop_signals(runner.stop, runner.abort)
    try:
        runner.run()
    except BeatdError as exc:
        fail(exc)
    finally:
        backend.close()


@main.group()
def dead() -> None:
    """Inspect and requeue dead letters: runs that failed for good or could not run."""


@dead.command(name="list")
@daemon_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def dead_list(broker: str, log_level: str, log_format: str, as_json: bool) -> None:
    """Show the dead-letter queue, oldest first, with the reason of each."""
    setup_logging(log_level, log_format)
    backend = open_broker(broker)
    try:
        letters = backend.dead_letters()
    except BeatdError as exc:
        fail(exc)
    finally:
        backend.close()
    rows = [_dead_row(d) for d in letters]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("ID", "TASK", "QUEUE", "FAILED AT (UTC)", "DELIVERIES", "REASON")]
    table += [
        (r["id"], r["task"], r["queue"], r["failed_at"], str(r["deliveries"]), r["reason"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))
    click.echo(f"{len(rows)} dead letter(s)")


def _dead_row(letter: DeadLetter) -> dict[str, Any]:
    try:
        message: Any = json.loads(letter.body)
    except ValueError:
        message = letter.body
    task = message.get("task", "?") if isinstance(message, dict) else "?"
    return {
        "id": letter.id,
        "task": task,
        "queue": letter.queue,
        "failed_at": slot_text(letter.failed_at),
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "message": message,
    }


@dead.command(name="retry")
@daemon_options
@click.argument("message_id", metavar="ID", required=False)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
def dead_retry(
    broker: str, log_level: str, log_format: str, message_id: str | None, everything: bool
) -> None:
    """Put a dead letter (by run ID) or all of them back on their queues."""
    setup_logging(log_level, log_format)
    if (message_id is None) == (not everything):
        bad_option("ID/--all", "give a run ID or --all, not both and not neither")
    backend = open_broker(broker)
    try:
        moved = backend.requeue_dead(None if everything else message_id)
    except BeatdError as exc:
        fail(exc)
    finally:
        backend.close()
    if message_id is not None and moved == 0:
        bad_option("ID", f"no dead letter with id {message_id!r} (see beatd dead list)")
    click.echo(f"requeued {moved} dead letter(s)")
