"""`beatd run`: the scheduler daemon."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource
from prometheus_client import CollectorRegistry

from beatd.backends import Backend
from beatd.backends.base import StorageFailed
from beatd.backends.redis import RedisBackend, redact
from beatd.cli.common import (
    celery_config,
    config_options,
    daemon_options,
    fail,
    legacy_backend_settings,
    legacy_schedule_settings,
    main,
    metrics_option,
    open_broker,
    read_config,
    schedule_paths,
    seconds_option,
    start_metrics,
)
from beatd.cli.workers import start_embedded_worker, worker_options
from beatd.clock import SystemClock
from beatd.config import Config, load_config
from beatd.config.celeryconf import read_celery_config
from beatd.errors import BeatdError, ConfigError, Problem
from beatd.metrics import DEFAULT_METRICS_ADDR, register_scheduler, register_worker
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.service import (
    on_signals,
    setup_logging,
    stop_watching,
    tune_collector,
    watch_schedule_files,
)
from beatd.systemd import Notifier

log = logging.getLogger("beatd")


@main.command()
@config_options
@daemon_options
@click.option(
    "--lease-ttl",
    envvar="BEATD_LEASE_TTL",
    default="10s",
    show_default=True,
    help="How long a leader's lease lasts without renewal (it renews every third of it); a "
    "standby takes over after it.",
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
    "--max-clock-skew",
    envvar="BEATD_MAX_CLOCK_SKEW",
    default="1s",
    show_default=True,
    help="Refuse leadership while this node's clock is further than this from the backend's "
    "(Redis TIME; SQLite shares this host's clock).",
)
@click.option(
    "--removed-grace",
    envvar="BEATD_REMOVED_GRACE",
    default="1h",
    show_default=True,
    help="Keep a removed entry's position this long: re-added in time, it resumes where it was "
    "(0 forgets it at once).",
)
@metrics_option(DEFAULT_METRICS_ADDR)
@click.option(
    "--with-worker",
    envvar="BEATD_WITH_WORKER",
    is_flag=True,
    help="Also run the published tasks, in this process: the scheduler loop and the worker's "
    "dispatcher as threads (the one-command quickstart).",
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
    max_clock_skew: str,
    removed_grace: str,
    metrics_addr: str,
    with_worker: bool,
    **worker_flags: Any,
) -> None:
    """Run the scheduler: publish each due run once, as leader among all `beatd run`."""
    setup_logging(log_level, log_format)
    ttl = seconds_option("--lease-ttl", lease_ttl)
    skew = seconds_option("--max-clock-skew", max_clock_skew)
    grace = seconds_option("--removed-grace", removed_grace, zero_ok=True)
    config = read_config(legacy_schedule_settings(schedules, timezone, max_file_size))
    broker = celery_broker(broker)
    backend = open_broker(legacy_backend_settings(broker), ttl / 5)  # cannot outlast the lease
    warn_about_backend(backend)
    paths, celery = schedule_paths(schedules), celery_config()
    try:
        check_transport(config, backend)
    except ConfigError as exc:
        fail(exc)

    def load() -> Config:
        loaded = load_config(
            paths, default_timezone=timezone, max_bytes=max_file_size, celery_config=celery
        )
        check_transport(loaded, backend)
        return loaded

    notifier = Notifier()
    settings = SchedulerSettings(
        node=node,
        lease_ttl=ttl,
        watchdog_interval=notifier.watchdog_interval,
        max_clock_skew=skew,
        removed_grace=grace,
    )
    scheduler = Scheduler(backend, load, SystemClock(), settings, config=config)
    scheduler.on_event = tune_collector(systemd_events(notifier, scheduler))
    registry = CollectorRegistry()
    register_scheduler(registry, scheduler)
    stop = threading.Event()
    on_signals(stop, scheduler.wake, scheduler.request_reload)
    watcher = watch_schedule_files(schedules, stop, scheduler.request_reload) if watch else None
    log.info(
        "beatd run node=%s broker=%s entries=%d config=%s",
        node,
        backend.url,
        len(config.entries),
        config.fingerprint,
    )
    # before the embedded worker: a metrics address that fails exits, and no worker thread
    # may be left running to keep the process up
    server = start_metrics(metrics_addr, registry, lambda: readiness(scheduler))
    worker = None
    if with_worker:
        worker = start_embedded_worker(broker, config, scheduler, stop, worker_flags)
        register_worker(registry, worker.worker)
    failed: StorageFailed | None = None
    try:
        scheduler.run(stop)
    except StorageFailed as exc:  # logged by the scheduler as it stepped down
        failed = exc
    finally:
        notifier.stopping()
        stop.set()
        if server is not None:
            server.stop()
        backend.close()
        if worker is not None:
            worker.finish()
        if watcher is not None:
            stop_watching(watcher)
    if failed is not None:
        sys.exit(failed.exit_status)


def celery_broker(broker: str) -> str:
    """--broker, unless it was left at its default and the Celery config names a broker."""
    ctx = click.get_current_context()
    spec = celery_config()
    if not spec or ctx.get_parameter_source("broker") is not ParameterSource.DEFAULT:
        return broker
    url = read_celery_config(spec, "UTC").broker_url
    if url is None:
        return broker
    log.info("broker from the Celery config %s: %s", spec, redact(url))
    return url


def check_transport(config: Config, backend: Backend) -> None:
    """Celery's protocol is written to Redis only: refuse it on any other backend."""
    if isinstance(backend, RedisBackend):
        return
    celery = [e for e in config.entries.values() if e.protocol == "celery"]
    if celery:
        first = min(celery, key=lambda e: e.name)
        path, _, line = first.source.rpartition(":")
        raise ConfigError(
            [
                Problem(
                    path or first.source,
                    int(line) if line.isdigit() else 1,
                    1,
                    f"protocol celery needs a Redis broker (Redis transport only), but the "
                    f"broker is {backend.url}; {len(celery)} entries use it. Point --broker at "
                    "the Redis your Celery workers use (redis://HOST:PORT/DB)",
                    first.name,
                )
            ]
        )


def warn_about_backend(backend: Backend) -> None:
    """Say at start, clearly, when the backend's settings void beatd's guarantees."""
    try:
        warnings = backend.persistence_warnings()
    except BeatdError as exc:
        log.warning("could not check the backend's settings: %s", exc)
        return
    for warning in warnings:
        log.warning("%s", warning)


def status_line(scheduler: Scheduler) -> str:
    if not scheduler.totals.backend_up:
        return f"backend {scheduler.backend.url} unavailable"
    role = "leader" if scheduler.is_leader else "standby"
    return f"{role}, {len(scheduler.config.entries)} entries"


def readiness(scheduler: Scheduler) -> tuple[bool, str]:
    return scheduler.totals.backend_up, status_line(scheduler)


def systemd_events(notifier: Notifier, scheduler: Scheduler) -> Callable[[str], None]:
    """Turn the loop's events into notify messages: READY once the backend answered, RELOADING
    around reloads, STATUS on leadership changes, a watchdog ping from every step."""
    ready = False

    def on_event(event: str) -> None:
        nonlocal ready
        if event == "step":
            notifier.watchdog()
            if not ready and scheduler.totals.backend_up:
                ready = True
                notifier.ready(status_line(scheduler))
        elif event == "reloading":
            notifier.reloading()
        elif event in ("reloaded", "reload_failed"):
            notifier.ready(status_line(scheduler))
        elif event in ("leader", "standby", "backend_down", "backend_up"):
            notifier.status(status_line(scheduler))

    return on_event
