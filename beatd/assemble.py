"""The one place that builds the daemons' parts from settings: a scheduler with its observers,
and a worker. The command line (`beatd run`, `beatd worker`), the benchmarks and the tests that
start whole daemons all build them here, so that what they run is what users run."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from beatd.backends.base import Backend
from beatd.clock import Clock
from beatd.config import Config
from beatd.events import Observer
from beatd.metrics import PublishDelay, register_scheduler
from beatd.observers import GcTuning, Nudgeable, SystemdNotify, WorkerNudge
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.systemd import Notifier


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
) -> Scheduler:
    """A scheduler as `beatd run` runs one: the garbage collector tuned for it, systemd told
    (`notifier`), its metrics in `registry`, an in-process `worker` nudged after each step."""
    observers: list[Observer] = [GcTuning()]
    if notifier is not None:
        observers.append(SystemdNotify(notifier))
    if registry is not None:
        observers.append(PublishDelay(registry))
    if worker is not None:
        observers.append(WorkerNudge(worker))
    scheduler = Scheduler(backend, load_config, clock, settings, config=config, observers=observers)
    if registry is not None:
        register_scheduler(registry, scheduler)
    return scheduler
