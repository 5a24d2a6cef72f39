"""The backend's outages as the scheduling loop lives them: each step after a failure waits a
bounded, doubling backoff; an outage is logged once when it begins and once when it ends."""

from __future__ import annotations

import logging

from beatd.backends.base import StorageFailed
from beatd.backoff import Backoff
from beatd.clock import Clock
from beatd.errors import BackendError
from beatd.events import Totals

# the loop's log lines keep the logger name operators filter on
log = logging.getLogger("beatd.scheduler")


class BackendOutage:
    """Whether the backend is down for the loop (`totals.backend_up`), and when to try again."""

    def __init__(self, clock: Clock, url: str, totals: Totals, max_backoff: float) -> None:
        self.clock = clock
        self.url = url
        self.totals = totals
        self._backoff = Backoff(maximum=max_backoff)
        self.retry_at = 0.0  # monotonic: the loop asks the backend again from then

    def failed(self, exc: BackendError) -> bool:
        """A step failed; True when that begins an outage."""
        began = not self._backoff.failing
        self.retry_at = self.clock.monotonic() + self._backoff.failed()
        self.totals.backend_up = False
        if began:
            log.error("backend %s unavailable, retrying with backoff: %s", self.url, exc)
        else:
            delay = self._backoff.delay
            log.debug("backend %s still unavailable; next try in %.1f s", self.url, delay)
        return began

    def recovered(self) -> bool:
        """A step reached the backend; True when that ends an outage."""
        ended = self._backoff.failing
        self._backoff.succeeded()
        self.totals.backend_up = True
        if ended:
            log.info("backend %s reachable again", self.url)
        return ended

    def storage_failed(self, exc: StorageFailed) -> None:
        """Gone or damaged storage: no outage to wait out (the loop steps down and stops)."""
        self.totals.backend_up = False
        log.error(
            "storage failed, stepping down and exiting with status %d: %s", exc.exit_status, exc
        )
