"""Copying run state (and dead letters) from one backend to another, e.g. SQLite to Redis.

The source is only read, never changed; copying again adds nothing (states already on the
target are kept, dead letters are keyed by run id), so an interrupted migration is run again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from beatd.backends.base import DeadLetter, LeaseStore, QueueAdmin, StateStore, StateWrite
from beatd.errors import BeatdError

log = logging.getLogger(__name__)
MIGRATE_NODE = "beatd-migrate"


QUEUED_REASON = (
    "queued in {source} when it was migrated, never run there; run it with `beatd dead retry`"
)


class MigrationEnd(LeaseStore, StateStore, QueueAdmin, Protocol):
    """What a migration reads and writes on either side: the lease (nobody may lead), the
    run state and the dead letters; no work queue."""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    states: int  # copied
    dead_letters: int  # copied
    skipped: int  # states and dead letters the target already had, left as they are


def migrate(
    source: MigrationEnd,
    target: MigrationEnd,
    *,
    lease_ttl: float = 30.0,
    queued: Sequence[DeadLetter] = (),
) -> MigrationReport:
    """Copy every entry's state and every dead letter from `source` to `target`, and the
    `queued` runs (read from the source) as dead letters too.

    Both must be quiet: no scheduler may lead on either (stop `beatd run` everywhere first), so
    nothing is published while the horizon moves. Entries that already have state on the target,
    and dead letters whose run id it already holds, are left as they are and counted skipped.
    """
    for backend, role in ((source, "source"), (target, "target")):
        leader = backend.leader()
        if leader is not None:
            raise BeatdError(
                f"the {role} {backend.url} has a running leader (node={leader.node}); stop every "
                "`beatd run` before migrating"
            )
    lease = target.acquire_lease(MIGRATE_NODE, lease_ttl)
    if lease is None:
        raise BeatdError(f"could not take the lease on {target.url}; is a scheduler running?")
    try:
        states = source.load_states()
        writes = [StateWrite(state, None) for state in states.values()]
        skipped: set[str] = set()
        for start in range(0, len(writes), 1000):
            skipped |= target.commit(lease, writes[start : start + 1000], [])
        letters = [*source.dead_letters(), *queued]
        copied = target.add_dead_letters(letters)
    finally:
        target.release_lease(lease)
    report = MigrationReport(
        len(states) - len(skipped), copied, len(skipped) + len(letters) - copied
    )
    log.info(
        "copied %d entry states and %d dead letters from %s to %s; skipped=%d",
        report.states,
        report.dead_letters,
        source.url,
        target.url,
        report.skipped,
    )
    return report
