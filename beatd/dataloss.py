"""Noticing a backend that restarted without its data (Redis without AOF or RDB).

Such a restart raises no error: the daemons reconnect and find no lease, no epoch, no entry
positions and no queued runs, and would start over from epoch 1 and from now. `DataLossWatch`
compares the server's run id with the one seen before: a new run id with beatd's format marker
gone, or with an epoch below the highest this node has seen, means the data was lost. A new run
id with the data intact (a restart with AOF) is only logged. The scheduler asks it when its
lease is gone or it is about to take one it saw held, and when the backend answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from beatd.backends.base import ForgetsOnRestart, StoreIdentity

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
        if before is None or now.run_id == before.run_id:
            return None
        if now.marked and now.epoch >= epoch_seen:
            log.warning(
                "Redis at %s restarted (run id changed) with beatd's data: epoch=%d",
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
