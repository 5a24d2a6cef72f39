"""Small observers of the scheduler loop's events (beatd.events): systemd's notify protocol,
the garbage collector's tuning, and the nudge that wakes an in-process worker."""

from __future__ import annotations

import gc
from typing import Protocol

from beatd.events import (
    Adopted,
    BackendDown,
    BackendUp,
    BecameLeader,
    Event,
    Reloaded,
    ReloadFailed,
    Reloading,
    Stepped,
    SteppedDown,
)
from beatd.systemd import Notifier


class SystemdNotify:
    """READY once the backend answered, RELOADING around reloads, STATUS on leadership and
    backend changes, a watchdog ping from every step."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._ready = False

    def notify(self, event: Event) -> None:
        if isinstance(event, Stepped):
            self.notifier.watchdog()
            if not self._ready and event.status.backend_up:
                self._ready = True
                self.notifier.ready(event.status.line)
        elif isinstance(event, Reloading):
            self.notifier.reloading()
        elif isinstance(event, Reloaded | ReloadFailed):
            self.notifier.ready(event.status.line)
        elif isinstance(event, BecameLeader | SteppedDown | BackendDown | BackendUp):
            self.notifier.status(event.status.line)


class GcTuning:
    """Keeps CPython's cyclic garbage collector off what a scheduler keeps.

    With the collector's defaults, collections that walked every entry again and again were a
    third of the cost of a 100,000-run burst. So it runs every 50,000 new objects instead of
    700 (what publishing makes dies young, by reference counting), and once a configuration is
    adopted, what is alive then (entries, planner state) is frozen out of its sight until the
    next reload, which first hands it back so that old configurations can be collected.

    The full pass that collects them is made only after such a thaw: at the first adoption
    there is no older configuration, and a pass over 1,000,000 runtime entries took 1.9 s of
    CPU (14.5 s of wall time on a loaded machine), under a lease that cannot be renewed within
    it. Once frozen, a full pass costs what is not frozen (docs/benchmarks.md has both).
    """

    def __init__(self) -> None:
        gc.set_threshold(50_000, 20, 20)
        self._thawed = False  # a reload handed the frozen objects back: collect them first

    def notify(self, event: Event) -> None:
        if isinstance(event, Reloading):
            gc.unfreeze()
            self._thawed = True
        elif isinstance(event, Adopted | ReloadFailed):
            if self._thawed:
                gc.collect()
                self._thawed = False
            gc.freeze()


class Nudgeable(Protocol):
    def nudge(self) -> None:
        """Work may be waiting: look now, not at the next poll."""


class WorkerNudge:
    """`run --with-worker`: whatever a step just published runs now, not at the worker's next
    poll."""

    def __init__(self, worker: Nudgeable) -> None:
        self.worker = worker

    def notify(self, event: Event) -> None:
        if isinstance(event, Stepped):
            self.worker.nudge()
