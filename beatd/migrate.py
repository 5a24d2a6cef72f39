"""Moving run state (and dead letters) from one backend to another, e.g. SQLite to Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from beatd.backends.base import Backend, StateWrite
from beatd.errors import BeatdError

log = logging.getLogger(__name__)
MIGRATE_NODE = "beatd-migrate"


@dataclass(frozen=True, slots=True)
class MigrationReport:
    states: int
    skipped: tuple[str, ...]  # entries the target already had state for
    dead_letters: int


def migrate(source: Backend, target: Backend, *, lease_ttl: float = 30.0) -> MigrationReport:
    """Copy every entry's state and every dead letter from `source` to `target`.

    Both must be quiet: no scheduler may lead on either (stop `beatd run` everywhere first), so
    nothing is published while the horizon moves. Entries that already have state on the target
    are left as they are and reported.
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
        letters = source.dead_letters()
        target.add_dead_letters(letters)
    finally:
        target.release_lease(lease)
    log.info(
        "migrated %d entry states and %d dead letters from %s to %s",
        len(states) - len(skipped),
        len(letters),
        source.url,
        target.url,
    )
    return MigrationReport(len(states) - len(skipped), tuple(sorted(skipped)), len(letters))
