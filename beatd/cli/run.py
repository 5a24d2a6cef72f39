"""`beatd run`: the scheduler daemon."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import click
from click.core import ParameterSource
from prometheus_client import CollectorRegistry

from beatd.amqp_link import is_amqp_url
from beatd.assemble import RunSettings, WorkerOptions, build_scheduler
from beatd.backends.base import (
    NEEDS,
    Backend,
    Destination,
    StateStore,
    StorageFailed,
    destination_kind,
)
from beatd.backends.redis import redact
from beatd.cli.amqp import AMQP_PASSWORD_FLAG, build_relay, celery_events_url
from beatd.cli.api import ApiSettings, ServedApi, api_options, start_api
from beatd.cli.common import (
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    fail,
    history_option,
    logging_options,
    main,
    metrics_option,
    open_broker,
    read_config,
    redis_wait_option,
    schedule_options,
    seconds_option,
    start_metrics,
)
from beatd.cli.workers import build_embedded_worker, warn_about_backend, worker_options
from beatd.clock import SystemClock
from beatd.config import Config, load_config
from beatd.config.celeryconf import read_celery_config
from beatd.config.model import Entry
from beatd.entry_series import EntrySeries
from beatd.errors import ConfigError, Problem
from beatd.history import Retention
from beatd.metrics import DEFAULT_METRICS_ADDR, MetricsServer, register_worker
from beatd.scheduler import Scheduler
from beatd.service import on_signals, setup_logging, stop_watching, watch_schedule_files
from beatd.systemd import Notifier

logger = logging.getLogger("beatd")


RUN_FLAGS = (
    "lease_ttl",
    "node",
    "watch",
    "max_clock_skew",
    "removed_grace",
    "metrics_addr",
    "with_worker",
    "metrics_entries",
    "history_keep",
    "history_max_age",
    "history_max_records",
    "audit_retention",
)


def run_settings(func: Callable[..., None]) -> Callable[..., None]:
    """Hand `func` `run`'s own flags parsed, as `settings: RunSettings`."""

    @functools.wraps(func)
    def parsed(**kwargs: Any) -> None:
        flags = {name: kwargs.pop(name) for name in RUN_FLAGS}
        func(**kwargs, settings=parse_run_settings(**flags))

    return parsed


def parse_run_settings(
    lease_ttl: str,
    node: str,
    watch: bool,
    max_clock_skew: str,
    removed_grace: str,
    metrics_addr: str,
    with_worker: bool,
    metrics_entries: str,
    history_keep: int,
    history_max_age: str,
    history_max_records: int,
    audit_retention: str,
) -> RunSettings:
    max_age = timedelta(seconds=seconds_option("--history-max-age", history_max_age))
    audit_max_age = timedelta(seconds=seconds_option("--audit-retention", audit_retention))
    return RunSettings(
        node=node,
        lease_ttl=seconds_option("--lease-ttl", lease_ttl),
        max_clock_skew=seconds_option("--max-clock-skew", max_clock_skew),
        removed_grace=seconds_option("--removed-grace", removed_grace, zero_ok=True),
        watch=watch,
        metrics_addr=metrics_addr,
        with_worker=with_worker,
        metrics_entries=EntrySeries(metrics_entries),
        retention=Retention(history_keep, max_age, history_max_records),
        audit_retention=audit_max_age,
    )


@main.command()
@schedule_options
@backend_options
@history_option
@redis_wait_option
@click.option(
    "--history-keep",
    envvar="BEATD_HISTORY_KEEP",
    type=click.IntRange(min=1),
    default=Retention().per_entry,
    show_default=True,
    help="Keep each entry's newest N runs in the run history; the leader trims the rest "
    "every minute.",
)
@click.option(
    "--history-max-age",
    envvar="BEATD_HISTORY_MAX_AGE",
    default="30d",
    show_default=True,
    help="Trim run-history records older than this (runs and missed slots, also of entries "
    "no longer configured).",
)
@click.option(
    "--history-max-records",
    envvar="BEATD_HISTORY_MAX_RECORDS",
    type=click.IntRange(min=1),
    default=Retention().max_records,
    show_default=True,
    help="Keep at most N run records in all, and N missed-slot records (the oldest go first): "
    "a bound on the backend's memory or disk.",
)
@click.option(
    "--audit-retention",
    envvar="BEATD_AUDIT_RETENTION",
    default="365d",
    show_default=True,
    help="Trim the operator controls' audit log (pause, resume, trigger, backfill, requeue) "
    "of records older than this; the leader trims it with the run history.",
)
@logging_options()
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
    "--metrics-entries",
    envvar="BEATD_METRICS_ENTRIES",
    type=click.Choice([s.value for s in EntrySeries]),
    default=EntrySeries.ALL.value,
    show_default=True,
    help="Which entries get per-entry series: all (runtime entries too; beyond 10,000 "
    "entries: file, logged once), file (the schedule files' entries only) or none (totals and "
    "the per-task histogram only).",
)
@click.option(
    "--with-worker",
    envvar="BEATD_WITH_WORKER",
    is_flag=True,
    help="Also run the published tasks, in this process: the scheduler loop and the worker's "
    "dispatcher as threads (the one-command quickstart).",
)
@api_options
@AMQP_PASSWORD_FLAG
@run_settings
@worker_options
def run(
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
    settings: RunSettings,
    worker_options: WorkerOptions,
    api: ApiSettings,
    amqp_password: str | None,
) -> None:
    """Run the scheduler: publish each due run once, as leader among all `beatd run`."""
    setup_logging(log.level, log.format)
    config = read_config(schedule)
    broker = celery_broker(backend, schedule.celery_config)
    store = open_broker(broker, settings.lease_ttl / 5)  # a hung backend cannot outlast the lease
    warn_about_backend(store)
    refuse_unwritable(config, store)
    notifier = Notifier()
    registry = CollectorRegistry()
    worker = None
    if settings.with_worker:
        worker = build_embedded_worker(broker, config, settings.lease_ttl, worker_options)
    relay = build_relay(broker, settings, schedule, amqp_password, config)
    scheduler = build_scheduler(
        store,
        config,
        config_loader(schedule, store),
        SystemClock(),
        settings.scheduler(notifier.watchdog_interval),
        notifier=notifier,
        registry=registry,
        worker=worker.worker if worker is not None else None,
        metrics_entries=settings.metrics_entries,
        retention=settings.retention,
        audit_retention=settings.audit_retention,
        relay=relay,
        celery_events_url=celery_events_url(config, schedule, amqp_password),
    )
    stop = threading.Event()
    served = start_api(api, broker, scheduler, settings.retention.max_age, registry)
    on_signals(stop, scheduler.wake, on_sighup(scheduler, served))
    reload = scheduler.request_reload
    watcher = watch_schedule_files(schedule.paths, stop, reload) if settings.watch else None
    log_start(settings, store, config)
    try:
        if worker is not None:
            worker.start(stop, scheduler.wake)
            register_worker(registry, worker.worker, worker.backend, embedded=True)
        metrics = start_metrics(settings.metrics_addr, registry, lambda: readiness(scheduler))
        serve(scheduler, stop, metrics)
    finally:
        notifier.stopping()
        stop.set()
        if served is not None:
            served.stop()
        relay.close()
        store.close()
        if worker is not None:
            worker.finish()
        if watcher is not None:
            stop_watching(watcher)


def on_sighup(scheduler: Scheduler, served: ServedApi | None) -> Callable[[], None]:
    """SIGHUP: reload the schedule files, and reread the API's token file."""

    def reload() -> None:
        scheduler.request_reload()
        if served is not None:
            served.tokens.reread()

    return reload


def log_start(settings: RunSettings, store: Backend, config: Config) -> None:
    logger.info(
        "beatd run node=%s broker=%s entries=%d config=%s",
        settings.node,
        store.url,
        len(config.entries),
        config.fingerprint,
    )


def refuse_unwritable(config: Config, backend: StateStore) -> None:
    """Exit 2 at start when the backend cannot write an entry's destination."""
    try:
        check_transport(config, backend)
    except ConfigError as exc:
        fail(exc)


def config_loader(schedule: ScheduleSettings, backend: StateStore) -> Callable[[], Config]:
    """How a reload reads the configuration: as at start, and refused where the backend
    cannot hold what it names."""

    def load() -> Config:
        loaded = load_config(
            schedule.paths,
            default_timezone=schedule.timezone,
            max_bytes=schedule.max_file_size,
            celery_config=schedule.celery_config,
        )
        check_transport(loaded, backend)
        return loaded

    return load


def serve(scheduler: Scheduler, stop: threading.Event, metrics: MetricsServer | None) -> None:
    """Run the loop until stopped, then stop serving `metrics`; exit with the storage's status
    when it failed, and 2 when a schedule file names an entry a runtime entry has (found once
    they are read)."""
    try:
        scheduler.run(stop)
    except StorageFailed as exc:  # logged by the scheduler as it stepped down
        sys.exit(exc.exit_status)
    except ConfigError as exc:
        fail(exc)
    finally:
        if metrics is not None:
            metrics.stop()


def celery_broker(backend: BackendSettings, celery_config: str | None) -> BackendSettings:
    """--broker, unless it was left at its default and the Celery config names a Redis
    broker (RabbitMQ is where its entries go, through the outbox in --broker)."""
    source = click.get_current_context().get_parameter_source("broker")
    if not celery_config or source is not ParameterSource.DEFAULT:
        return backend
    url = read_celery_config(celery_config, "UTC").broker_url
    if url is None or is_amqp_url(url):  # RabbitMQ: the entries' destination, not the store
        return backend
    logger.info("broker from the Celery config %s: %s", celery_config, redact(url))
    return dataclasses.replace(backend, url=url)


def check_transport(config: Config, backend: StateStore) -> None:
    """Refuse entries whose destination the backend cannot write (Celery's protocol needs
    Redis): the first of them, with how many there are."""
    refused: dict[type[Destination], list[Entry]] = {}
    for entry in config.entries.values():
        kind = destination_kind(entry.protocol, entry.amqp is not None)
        if not backend.accepts(kind):
            refused.setdefault(kind, []).append(entry)
    problems = []
    for kind, entries in refused.items():
        first = min(entries, key=lambda e: e.name)
        needs, fix = NEEDS[kind]
        path, _, line = first.source.rpartition(":")
        problems.append(
            Problem(
                path or first.source,
                int(line) if line.isdigit() else 1,
                1,
                f"protocol {first.protocol} needs {needs}, but the broker is {backend.url}; "
                f"{len(entries)} entries use it. {fix}",
                first.name,
            )
        )
    if problems:
        raise ConfigError(problems)


def readiness(scheduler: Scheduler) -> tuple[bool, str]:
    status = scheduler.status()
    return status.backend_up, status.line
