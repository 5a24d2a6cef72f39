"""What the scheduler loop tells the outside: typed events handed to its observers.

The loop never knows who listens. Metrics, systemd's notify protocol, the garbage collector's
tuning and an in-process worker are observers given to `Scheduler(observers=...)`; each reads
the events it cares about and ignores the rest. Events are sent per step or per batch, never
per run: `Published` carries a batch's decisions, and an observer that wants each run's delay
walks them itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from beatd.config import Config, Entry
from beatd.core import Decision


@dataclass
class Totals:
    """Running counts since start, for `beatd status` and metrics (runs: see `RunCounts`)."""

    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload_ok: bool = True
    leader_changes: int = 0
    backend_up: bool = True
    clock_skew: float = 0.0  # our clock minus the backend's, at the last check
    config_drift: bool = False  # the leader runs a configuration that differs from ours
    tz_drift: bool = False  # leading: another node's timezone database differs from ours
    node_records_failed: int = 0  # writes of this node's record that failed
    data_lost: int = 0  # times the backend was found to have lost beatd's data

    def reloaded(self, *, ok: bool) -> None:
        if ok:
            self.reloads_ok += 1
        else:
            self.reloads_failed += 1
        self.last_reload_ok = ok


@dataclass(frozen=True, slots=True)
class Status:
    """The loop at the moment of an event, as /readyz and systemd's STATUS show it."""

    backend_up: bool
    leader: bool
    entries: int
    backend_url: str

    @property
    def line(self) -> str:
        if not self.backend_up:
            return f"backend {self.backend_url} unavailable"
        role = "leader" if self.leader else "standby"
        return f"{role}, {self.entries} entries"


@dataclass(frozen=True, slots=True)
class Stepped:
    """A round of the loop ended; it sleeps next."""

    status: Status


@dataclass(frozen=True, slots=True)
class Reloading:
    """The schedule files are read again (SIGHUP, a changed file)."""


@dataclass(frozen=True, slots=True)
class Reloaded:
    status: Status


@dataclass(frozen=True, slots=True)
class ReloadFailed:
    """The new files were refused; the last good configuration stays."""

    status: Status


@dataclass(frozen=True, slots=True)
class BecameLeader:
    status: Status
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class SteppedDown:
    status: Status


@dataclass(frozen=True, slots=True)
class Stopped:
    """The loop ended (the daemon stops): the lease was given back, nothing more is published."""


@dataclass(frozen=True, slots=True)
class Adopted:
    """The planner was brought in line with the configuration and the persisted state."""

    config: Config | None = None  # the configuration now led
    # every entry now led, the files' and the runtime entries (None: `config`'s); read it when
    # told, it changes after
    entries: Mapping[str, Entry] | None = None

    def led(self) -> Mapping[str, Entry]:
        """Every entry now led (none without a configuration)."""
        if self.entries is not None:
            return self.entries
        return {} if self.config is None else self.config.entries


@dataclass(frozen=True, slots=True)
class EntriesChanged:
    """While leading, runtime entries changed and were taken into the plan (issue 18): each
    name with its entry now, None when it was removed or left out (a file entry's name)."""

    changed: Mapping[str, Entry | None]


@dataclass(frozen=True, slots=True)
class BackendDown:
    status: Status


@dataclass(frozen=True, slots=True)
class BackendUp:
    status: Status


@dataclass(frozen=True, slots=True)
class Published:
    """Runs the backend now holds (or missed slots now accounted for), one batch at a time;
    `published_at` is when their messages were made."""

    published_at: datetime
    decisions: Sequence[Decision]


Event = (
    Stepped
    | Reloading
    | Reloaded
    | ReloadFailed
    | BecameLeader
    | SteppedDown
    | Stopped
    | Adopted
    | EntriesChanged
    | BackendDown
    | BackendUp
    | Published
)


class Observer(Protocol):
    """Told of the loop's events, on the loop's thread, in order.

    `notify` must return quickly and must not raise: the loop waits for it, and an exception
    from it stops the daemon. An observer that does I/O (a socket, a file) catches its own
    errors and logs them.
    """

    def notify(self, event: Event) -> None: ...
