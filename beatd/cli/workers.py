"""`beatd worker`, and the worker embedded in `beatd run --with-worker`."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import click
from prometheus_client import CollectorRegistry

from beatd import assemble
from beatd.assemble import WorkerOptions
from beatd.backends import Backend
from beatd.backends.base import StorageFailed
from beatd.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_RUNTIME,
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    bad_option,
    fail,
    history_option,
    logging_options,
    main,
    metrics_option,
    open_broker,
    read_optional_config,
    schedule_options,
    seconds_option,
    start_metrics,
)
from beatd.config import Config
from beatd.errors import BeatdError
from beatd.metrics import DEFAULT_WORKER_METRICS_ADDR, register_worker
from beatd.pool import PoolKind
from beatd.service import setup_logging
from beatd.tasks import TaskError, import_task_modules, registry
from beatd.worker import Worker

log = logging.getLogger("beatd")


WORKER_FLAGS = (
    "apps",
    "queues",
    "concurrency",
    "pool",
    "max_tasks_per_child",
    "max_memory_per_child",
    "visibility_timeout",
    "max_deliveries",
    "drain_timeout",
)


# The flags `worker` and `run --with-worker` share, as click decorators, in --help order.
WORKER_OPTIONS = [
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
        help="Replace a child process whose resident memory exceeds this many MiB after a task.",
    ),
    click.option(
        "--visibility-timeout",
        envvar="BEATD_VISIBILITY_TIMEOUT",
        default="30s",
        show_default=True,
        help="A run whose worker stops heartbeating (it beats every third of this) is "
        "delivered again after this long.",
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


def worker_options(func: Callable[..., None]) -> Callable[..., None]:
    """The flags `worker` and `run --with-worker` share, handed to `func` parsed, as
    `worker_options: WorkerOptions`."""

    @functools.wraps(func)
    def parsed(**kwargs: Any) -> None:
        flags = {name: kwargs.pop(name) for name in WORKER_FLAGS}
        func(**kwargs, worker_options=parse_worker_options(**flags))

    for option in reversed(WORKER_OPTIONS):
        parsed = option(parsed)
    return parsed


def parse_worker_options(
    apps: tuple[str, ...],
    queues: str | None,
    concurrency: int | None,
    pool: PoolKind,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    visibility_timeout: str,
    max_deliveries: int,
    drain_timeout: str,
) -> WorkerOptions:
    names: tuple[str, ...] = ()
    if queues:
        names = tuple(q.strip() for q in queues.split(",") if q.strip())
        if not names:
            bad_option("--queues", f"no queue names in {queues!r}")
    return WorkerOptions(
        apps=apps,
        queues=names,
        concurrency=concurrency,
        pool=pool,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        visibility_timeout=seconds_option("--visibility-timeout", visibility_timeout),
        max_deliveries=max_deliveries,
        drain_timeout=seconds_option("--drain-timeout", drain_timeout),
    )


def build_worker(backend: Backend, config: Config | None, options: WorkerOptions) -> Worker:
    """Import the task modules, then build the worker (beatd.assemble)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like celery: `-A examples.tasks` from a checkout
    try:
        import_task_modules(options.modules(config))
    except TaskError as exc:
        click.echo(f"beatd: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if not registry:
        bad_option(
            "--app",
            "no tasks to run: name the modules that define them with -A/--app pkg.module or "
            "under imports: in a schedule file",
        )
    return assemble.build_worker(backend, registry, options, config)


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

    def __init__(self, worker: Worker, backend: Backend) -> None:
        self.worker = worker
        self.backend = backend
        self.failed = False
        self.thread = threading.Thread(target=self._main, name="beatd-worker")
        self._stop_scheduler: Callable[[], None] = lambda: None

    def start(self, stop: threading.Event, wake: threading.Event) -> None:
        """Drain on SIGTERM/SIGINT, stopping the scheduler (`stop`, `wake`) too; run."""

        def graceful() -> None:
            stop.set()
            wake.set()
            self.worker.stop()

        self._stop_scheduler = graceful
        on_stop_signals(graceful, self.worker.abort)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.worker.run()
        except BeatdError as exc:
            log.error("the worker failed, stopping: %s", exc)
            self.failed = True
            self._stop_scheduler()
        except Exception:
            log.exception("the worker failed, stopping")
            self.failed = True
            self._stop_scheduler()
        finally:
            self.backend.close()

    def finish(self) -> None:
        """Drain the worker after the scheduler stopped; exit 1 if it had failed."""
        self.worker.stop()
        while self.thread.is_alive():
            self.thread.join(0.2)  # a timed join lets a second SIGINT through
        if self.failed:
            sys.exit(EXIT_RUNTIME)


def build_embedded_worker(
    broker: BackendSettings, config: Config, lease_ttl: float, options: WorkerOptions
) -> EmbeddedWorker:
    backend = open_broker(broker, options.op_timeout(limit=lease_ttl / 5))
    return EmbeddedWorker(build_worker(backend, config, options), backend)


def worker_readiness(runner: Worker) -> tuple[bool, str]:
    """/readyz: not ready while the worker's backend fails, as `beatd run`'s."""
    if not runner.backend_up:
        return False, f"backend {runner.backend.url} unavailable"
    return True, "worker running"


@main.command()
@schedule_options
@backend_options
@history_option
@logging_options()
@worker_options
@metrics_option(DEFAULT_WORKER_METRICS_ADDR)
def worker(
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
    metrics_addr: str,
    worker_options: WorkerOptions,
) -> None:
    """Run the published tasks: each run at least once, with retries and dead letters."""
    setup_logging(log.level, log.format)
    config = read_optional_config(schedule)
    broker = open_broker(backend, worker_options.op_timeout())
    warn_about_backend(broker)  # as `beatd run` does: memory:// alone, Redis without AOF
    serve_worker(broker, config, metrics_addr, worker_options)


def warn_about_backend(backend: Backend) -> None:
    """Say at start, clearly, when the backend's settings void beatd's guarantees."""
    try:
        warnings = backend.persistence_warnings()
    except BeatdError as exc:
        log.warning("could not check the backend's settings: %s", exc)
        return
    for warning in warnings:
        log.warning("%s", warning)


def serve_worker(
    backend: Backend, config: Config | None, metrics_addr: str, worker_options: WorkerOptions
) -> None:
    """Run the worker until stopped, with its metrics; exit with the storage's status when
    it failed."""
    runner = build_worker(backend, config, worker_options)
    registry = CollectorRegistry()
    register_worker(registry, runner, backend)
    server = start_metrics(metrics_addr, registry, lambda: worker_readiness(runner))
    on_stop_signals(runner.stop, runner.abort)
    try:
        runner.run()
    except StorageFailed as exc:
        log.error("storage failed, stopping with status %d: %s", exc.exit_status, exc)
        sys.exit(exc.exit_status)
    except BeatdError as exc:
        fail(exc)
    finally:
        if server is not None:
            server.stop()
        backend.close()
