"""WAIT after the writes a failover must not undo: each commit and each take of the lease.

Redis replicates asynchronously: a primary that dies right after a commit may take it with it,
and the replica Sentinel promotes then holds the slots as not yet published, so the next leader
publishes them again. After the commit script (or the lease's take) returns, beatd sends
`WAIT n timeout` on the same connection: Redis answers how many replicas acknowledged every
write of that connection so far. n is `wait_replicas` (`--redis-wait-replicas`): a number, or
None ("auto"): 1 while the primary reports a connected replica, else 0 (no wait).

A write no replica acknowledged in time is counted (`unacknowledged`) and reported as
OutcomeUnknown: it is applied on the primary, but a failover now could lose it. From then on
publishing pauses: every later replicated write is refused before it is sent (NotApplied) until
the replicas have acknowledged the primary's replication offset of that moment, or a failover
ended (the primary's replication id changed). The queue entries of the unacknowledged commit
are already visible to workers: that is the window docs/redis.md describes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from beatd.errors import BackendError, TransientBackendError

log = logging.getLogger(__name__)
AUTO_REFRESH = 5.0  # seconds between two looks at the primary's replicas in auto mode


@dataclass(frozen=True, slots=True)
class Replication:
    """What `INFO replication` says of the primary: its replication id and offset, and the
    offset each online replica acknowledged."""

    replid: str
    offset: int
    acknowledged: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Replication:
        """From the reply to `INFO replication` (`key:value` lines; a replica's line is
        `slaveN:ip=...,port=...,state=online,offset=N,lag=N`)."""
        fields = dict(line.partition(":")[::2] for line in text.splitlines() if ":" in line)
        acknowledged = []
        for key, value in fields.items():
            if key.startswith("slave") and key[5:].isdigit():
                replica = dict(pair.partition("=")[::2] for pair in value.split(","))
                if replica.get("state") == "online":
                    acknowledged.append(int(replica.get("offset", "0")))
        offset = int(fields.get("master_repl_offset", "0").strip() or 0)
        return cls(fields.get("master_replid", "").strip(), offset, tuple(acknowledged))

    def holding(self, offset: int) -> int:
        return sum(acked >= offset for acked in self.acknowledged)


class ReplicaWait:
    """The WAIT after a replicated write, and the pause after one no replica acknowledged."""

    def __init__(self, wait_replicas: int | None, wait_ms: int, where: str) -> None:
        if wait_replicas is not None and wait_replicas < 0:
            raise ValueError(f"wait_replicas must be 0 or more, got {wait_replicas}")
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self.where = where
        self.unacknowledged = 0  # writes no replica acknowledged within wait_ms
        self._pending: tuple[str, int] | None = None  # (replid, offset) to reach before resuming
        self._wanted: tuple[float, int] = (-AUTO_REFRESH, 0)  # (when looked, replicas wanted)
        self._info_refused = False  # said once

    def wanted(self, info: Callable[[], Replication]) -> int:
        """Replicas each write must reach: the setting, or in auto mode 1 while any is there."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        looked, wanted = self._wanted
        now = time.monotonic()
        if now - looked >= AUTO_REFRESH:
            wanted = min(1, len(self._replicas_seen(info)))
            self._wanted = (now, wanted)
        return wanted

    def forget(self) -> None:
        """The primary changed (a failover): look at its replicas again before the next wait."""
        self._wanted = (-AUTO_REFRESH, 0)

    def _replicas_seen(self, info: Callable[[], Replication]) -> tuple[int, ...]:
        try:
            return info().acknowledged
        except TransientBackendError:
            raise
        except BackendError as exc:  # INFO not allowed for this user
            if not self._info_refused:
                self._info_refused = True
                log.warning(
                    "%s: cannot see the primary's replicas (%s): commits do not wait for any "
                    "(WAIT); allow beatd's user INFO (+info), or set --redis-wait-replicas",
                    self.where,
                    exc,
                )
            return ()

    def gate(self, what: str, info: Callable[[], Replication]) -> str | None:
        """Why `what` must not be sent now (publishing paused), or None to go on."""
        if self._pending is None:
            return None
        replid, offset = self._pending
        now = info()
        wanted = self.wanted(info)
        if now.replid != replid:
            log.warning(
                "%s: a failover ended the wait for replicas (a new primary, replication id %s); "
                "publishing resumes",
                self.where,
                now.replid,
            )
        elif now.holding(offset) >= wanted:
            log.info("%s: replicas acknowledged the commits again; publishing resumes", self.where)
        else:
            return (
                f"{self.where}: {what}: publishing paused: the last commit is acknowledged by "
                f"{now.holding(offset)} of {wanted} replicas (WAIT); it resumes when "
                f"{_until(wanted)} or a failover ends (docs/redis.md, Sentinel)"
            )
        self._pending = None
        return None

    def acknowledged(
        self, what: str, acked: int, wanted: int, info: Callable[[], Replication]
    ) -> str | None:
        """After `WAIT wanted` answered `acked`: None, or why the write is in doubt (and
        publishing pauses from now on)."""
        if acked >= wanted:
            return None
        self.unacknowledged += 1
        if self._pending is None:
            now = info()
            self._pending = (now.replid, now.offset)
            said = "acknowledged by too few replicas"
            if acked == 0:
                said = "not acknowledged by any replica"
            log.warning(
                "%s: %s %s within %d ms (%d of %d): publishing pauses until %s or a failover ends",
                self.where,
                what,
                said,
                self.wait_ms,
                acked,
                wanted,
                _until(wanted),
            )
        return (
            f"{self.where}: {what}: applied on the primary but acknowledged by {acked} of "
            f"{wanted} replicas within {self.wait_ms} ms (WAIT): a failover now could lose it"
        )


def _until(wanted: int) -> str:
    return "a replica acknowledges it" if wanted == 1 else f"{wanted} replicas acknowledge it"
