"""The one place that builds the daemons' parts from settings: a scheduler with its observers,
and a worker. The command line (`beatd run`, `beatd worker`, and so every test that starts
them as processes) and the benchmarks build them here, so that what they measure is what
users run."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import CollectorRegistry

from beatd.amqp_relay import AmqpRelay
from beatd.amqp_relaying import AmqpRelaying
from beatd.backends import open_celery_events
from beatd.backends.base import Backend, HearsCeleryEvents
from beatd.celery_listener import CeleryEventListener, CeleryEvents
from beatd.clock import Clock
from beatd.config import Config
from beatd.entry_series import EntryFilter, EntrySeries
from beatd.events import Observer
from beatd.history import Retention
from beatd.metrics import (
    PublishDelay,
    register_amqp_relay,
    register_celery_events,
    register_history,
    register_scheduler,
)
from beatd.observers import GcTuning, Nudgeable, SystemdNotify, WorkerNudge
from beatd.pool import PoolKind
from beatd.retention import AUDIT_RETENTION, HistoryRetention
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.systemd import Notifier
from beatd.tasks import Registry
from beatd.worker import Worker, WorkerSettings

# the warnings about the worker's tasks keep the logger name they had in the CLI
log = logging.getLogger("beatd")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """`beatd worker`'s flags, which `beatd run --with-worker` shares, parsed once."""

    apps: tuple[str, ...] = ()  # task modules named on the command line
    queues: tuple[str, ...] = ()  # none: every queue the schedule files name, else default
    concurrency: int | None = None  # None: the number of CPUs
    pool: PoolKind = "process"
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # MiB
    visibility_timeout: float = 30.0
    max_deliveries: int = 5
    drain_timeout: float = 30.0

    def modules(self, config: Config | None) -> tuple[str, ...]:
        """The task modules to import: `apps`, then the schedule files' `imports:`."""
        return tuple(dict.fromkeys([*self.apps, *(config.imports if config else ())]))

    def op_timeout(self, limit: float = 2.0) -> float:
        """How long one backend call may take: well inside the visibility timeout."""
        return min(limit, self.visibility_timeout / 5)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """`beatd run`'s own flags, parsed once."""

    node: str
    lease_ttl: float
    max_clock_skew: float
    removed_grace: float
    watch: bool
    metrics_addr: str
    with_worker: bool
    metrics_entries: EntrySeries = EntrySeries.ALL
    retention: Retention = field(default_factory=Retention)
    audit_retention: timedelta = AUDIT_RETENTION

    def scheduler(self, watchdog_interval: float | None) -> SchedulerSettings:
        return SchedulerSettings(
            node=self.node,
            lease_ttl=self.lease_ttl,
            watchdog_interval=watchdog_interval,
            max_clock_skew=self.max_clock_skew,
            removed_grace=self.removed_grace,
        )


def build_scheduler(
    backend: Backend,
    config: Config,
    load_config: Callable[[], Config],
    clock: Clock,
    settings: SchedulerSettings,
    *,
    notifier: Notifier | None = None,
    registry: CollectorRegistry | None = None,
    worker: Nudgeable | None = None,
    metrics_entries: EntrySeries = EntrySeries.ALL,
    retention: Retention | None = None,
    audit_retention: timedelta = AUDIT_RETENTION,
    celery_events_url: str | None = None,
    relay: AmqpRelay | None = None,
) -> Scheduler:
    """A scheduler as `beatd run` runs one: the garbage collector tuned for it, systemd told
    (`notifier`), its metrics in `registry` (per-entry series as `metrics_entries` says), an
    in-process `worker` nudged after each step, and, while leading, the run history trimmed to
    `retention` (none: never trimmed, nor the audit log) and the controls' audit log to
    `audit_retention`, and, leading Celery entries, their outcomes recorded from Celery's task
    events (`celery_event_source`: on RabbitMQ at `celery_events_url`, else on the backend);
    with a `relay`, leading AMQP destinations, their outbox published to RabbitMQ."""
    observers: list[Observer] = [GcTuning()]
    if notifier is not None:
        observers.append(SystemdNotify(notifier))
    if registry is not None:
        observers.append(PublishDelay(registry))
    if worker is not None:
        observers.append(WorkerNudge(worker))
    if retention is not None:
        trimming = HistoryRetention(
            backend, clock, retention, controls=backend, audit_max_age=audit_retention
        )
        observers.append(trimming)
        if registry is not None:
            register_history(registry, trimming.stats)
    source = celery_event_source(backend, celery_events_url)
    if source is not None:  # runs in Celery's protocol report back
        listener = CeleryEventListener(source, backend, clock)
        observers.append(CeleryEvents(listener))
        if registry is not None:
            register_celery_events(registry, listener.stats)
    if relay is not None:
        observers.append(AmqpRelaying(relay, backend))
        if registry is not None:
            register_amqp_relay(registry, relay.stats, backend)
    scheduler = Scheduler(backend, load_config, clock, settings, config=config, observers=observers)
    # without per-entry series, only the entries with alert_after_failures or
    # pause_after_failures are read
    scheduler.health.gauges = registry is not None and metrics_entries is not EntrySeries.NONE
    if registry is not None:
        register_scheduler(registry, scheduler, EntryFilter(metrics_entries))
    return scheduler


def celery_event_source(backend: Backend, amqp_url: str | None) -> HearsCeleryEvents | None:
    """Where the leader hears Celery's task events: RabbitMQ's `celeryev` exchange at
    `amqp_url` when Celery runs go to RabbitMQ, else the backend if it is their broker (Redis);
    None when neither can be heard. The history they are recorded in is the backend's."""
    if amqp_url is not None:
        return open_celery_events(amqp_url)
    return backend if isinstance(backend, HearsCeleryEvents) else None


def build_worker(
    backend: Backend, registry: Registry, options: WorkerOptions, config: Config | None
) -> Worker:
    """A worker on the queues `options` names (else the schedule files' queues), warning of
    configured entries whose task `registry` lacks: their runs would be dead-lettered."""
    entries = list(config.entries.values()) if config else []
    queues = options.queues or tuple(sorted({e.queue for e in entries})) or ("default",)
    settings = WorkerSettings(
        queues=queues,
        concurrency=options.concurrency or os.cpu_count() or 1,
        pool=options.pool,
        modules=options.modules(config),
        visibility_timeout=options.visibility_timeout,
        max_deliveries=options.max_deliveries,
        max_tasks_per_child=options.max_tasks_per_child,
        max_memory_per_child=options.max_memory_per_child,
        drain_timeout=options.drain_timeout,
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
