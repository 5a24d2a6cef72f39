"""Noticing a backend that restarted without its data (Redis without AOF or RDB).

Such a restart raises no error: the daemons reconnect and find no lease, no epoch, no entry
positions and no queued runs, and would start over from epoch 1 and from now. `DataLossWatch`
compares the server's run id with the one seen before: a new run id with beatd's format marker
gone (it was there before), or with an epoch below the highest this node has seen, means the
data was lost. A new run id with the data intact (a restart with AOF) is only logged.
`DataLossRecovery` is the scheduler's part: it reads the identity when the leader finds its
lease gone and before every attempt to take it (one pipelined call beside the take), keeps the
positions of the last lease held, and says what to restore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from beatd.backends.base import Backend, ForgetsOnRestart, StoreIdentity
from beatd.config import Entry
from beatd.core import Decision, Planner, state_lost
from beatd.state import EntryState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DataLoss:
    """The backend lost beatd's data; `intact_at` is when this node last saw it whole."""

    before: StoreIdentity
    after: StoreIdentity
    epoch_seen: int
    intact_at: datetime | None
    found_at: float  # monotonic


class DataLossWatch:
    def __init__(
        self, backend: ForgetsOnRestart, url: str, warnings: Callable[[], list[str]]
    ) -> None:
        self._backend = backend
        self._url = url
        self._warnings = warnings  # the persistence settings, checked again after a restart
        self._last: StoreIdentity | None = None
        self.losses = 0  # for the metric beatd_backend_data_lost_total

    def check(self, epoch_seen: int, intact_at: datetime | None, mono: float) -> DataLoss | None:
        """Read the server's identity; a DataLoss when it restarted without beatd's data."""
        now = self._backend.identity()
        before, self._last = self._last, now
        if before is None or (now.run_id and now.run_id == before.run_id):
            return None  # no run id (INFO not allowed): judged by the marker and epoch alone
        if (now.marked or not before.marked) and now.epoch >= epoch_seen:
            if not now.run_id:
                return None
            log.warning(
                "Redis at %s restarted or failed over (run id changed) with beatd's data: epoch=%d",
                self._url,
                now.epoch,
            )
            self._warn_persistence()
            return None
        self.losses += 1
        log.error("%s", self._message(now, epoch_seen))
        self._warn_persistence()
        return DataLoss(before, now, epoch_seen, intact_at, mono)

    def _message(self, now: StoreIdentity, epoch_seen: int) -> str:
        gone = [] if now.marked else [f"{now.marker} is gone"]
        gone.append(f"the fencing epoch is {now.epoch} where {epoch_seen} was seen")
        return (
            f"Redis at {self._url} lost its data: it restarted (run id changed) without beatd's "
            f"keys ({', '.join(gone)}): every entry's position, every queued run and every dead "
            f"letter it held are gone. The epoch goes on above {epoch_seen}; entries whose "
            "positions this node still holds are restored, the others count their lost slots "
            "as missed (state_lost). Enable AOF (appendonly yes) so that a restart keeps them"
        )

    def _warn_persistence(self) -> None:
        for warning in self._warnings():
            log.warning("%s", warning)


class DataLossRecovery:
    """The scheduler's part in a backend restarted without its data: it watches at the
    moments that matter (a leader's lease gone, every fresh take), keeps the positions of the
    last lease this node held, and says what to restore and what to count as lost."""

    def __init__(self, backend: Backend, lease_ttl: float) -> None:
        self._watch = (
            DataLossWatch(backend, backend.url, backend.persistence_warnings)
            if isinstance(backend, ForgetsOnRestart)
            else None
        )
        self._lease_ttl = lease_ttl
        self._loss: DataLoss | None = None  # found, not yet recovered from
        self._positions: dict[str, EntryState] = {}  # as this node last led, until recovered
        self._kept_at = 0.0  # monotonic: when the positions were kept
        self._whole_at: datetime | None = None  # when the backend last held beatd's data

    @property
    def losses(self) -> int:
        return self._watch.losses if self._watch is not None else 0

    @property
    def pending(self) -> bool:
        return self._loss is not None

    def check(self, epoch_seen: int, mono: float) -> bool:
        """Compare the backend's identity with the last reading. True when the data was lost
        and this node holds no positions: it should leave the lease for one TTL, so that the
        node that led last (and holds them) takes it first."""
        if self._watch is None:
            return False
        loss = self._watch.check(epoch_seen, self._whole_at, mono)
        if loss is None:
            return False
        self._loss = loss
        if self._positions:
            return False
        log.warning(
            "leaving the lease for %gs to a node that still holds the entries' positions",
            self._lease_ttl,
        )
        return True

    def seen_whole(self, now: datetime, mono: float) -> None:
        """The backend holds a lease (ours renewed, or another's): its data is there. Two TTLs
        after a loss was found, or after this node stepped down, recovering is the current
        leader's business: what this node kept is dropped."""
        self._whole_at = now
        since = self._loss.found_at if self._loss is not None else self._kept_at
        if mono - since > 2 * self._lease_ttl:
            self._loss, self._positions = None, {}

    def keep(self, planner: Planner, mono: float) -> None:
        """Stepping down: keep the positions a while, in case the backend lost them."""
        if self._watch is not None:
            positions = {name: planner.state(name) for name in planner.entries}
            self._positions = {n: p for n, p in positions.items() if p is not None}
            self._kept_at = mono

    def recover(
        self,
        states: Mapping[str, EntryState],
        entries: Mapping[str, Entry],
        now: datetime,
        walk_limit: int,
    ) -> tuple[list[EntryState], list[Decision]]:
        """After a loss: the positions to write back (entries the backend has no state for,
        whose schedule is unchanged), and for the others without a state, their slots since
        the data was last seen whole, missed as `state_lost`."""
        loss, positions = self._loss, self._positions
        self._loss, self._positions = None, {}
        if loss is None:
            return [], []
        restore = [
            p
            for name, p in positions.items()
            if name not in states and name in entries and p.identity == entries[name].identity
        ]
        restored = {p.entry for p in restore}
        lost: list[Decision] = []
        if loss.intact_at is not None:
            for entry in entries.values():
                if entry.name not in states and entry.name not in restored:
                    decision = state_lost(entry, loss.intact_at, now, walk_limit)
                    if decision is not None:
                        lost.append(decision)
        self._log_recovery(len(restore), sum(d.due_count for d in lost), loss)
        return restore, lost

    def _log_recovery(self, restored: int, missed: int, loss: DataLoss) -> None:
        if restored:
            log.warning("restored the positions of %d entries the backend lost", restored)
        if missed and loss.intact_at is not None:
            log.error(
                "counted %d slot(s) missed (state_lost) since %s: their positions were lost "
                "with the backend's data and no node held them",
                missed,
                loss.intact_at.isoformat(),
            )
