"""Copying run state, dead letters, the run history, the operator controls and the runtime
entries from one backend to another, e.g. SQLite to Redis.

The source is only read, never changed; copying again adds nothing (states already on the
target are kept, dead letters and run records are keyed by run id, missed-slot records by entry,
reason and first slot, an entry's summary is replaced only by a newer one, and a runtime entry
the target holds by name is kept), so an
interrupted migration is run again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from beatd.backends.base import (
    BeatdQueue,
    Controls,
    DeadLetter,
    Lease,
    LeaseStore,
    Outgoing,
    QueueAdmin,
    RunHistory,
    RuntimeEntries,
    StateStore,
    StateWrite,
)
from beatd.celery_amqp import OUTBOX_QUEUE, UnreadableOutboxRun, decode
from beatd.controls import NO_CONTROL, EntryControl
from beatd.errors import BeatdError

log = logging.getLogger(__name__)
MIGRATE_NODE = "beatd-migrate"


QUEUED_REASON = (
    "queued in {source} when it was migrated, never run there; run it with `beatd dead retry`"
)


class MigrationEnd(
    LeaseStore, StateStore, QueueAdmin, RunHistory, Controls, RuntimeEntries, Protocol
):
    """What a migration reads and writes on either side: the lease (nobody may lead), the
    run state, the dead letters, the run history, the operator controls and the runtime
    entries; no work queue."""


@dataclass(frozen=True, slots=True)
class ControlKinds:
    """Entries' controls copied, by what each holds (an entry may hold more than one)."""

    pauses: int = 0
    busy_marks: int = 0
    held_runs: int = 0

    @classmethod
    def of(cls, controls: Sequence[EntryControl]) -> ControlKinds:
        return cls(
            sum(c.pause is not None for c in controls),
            sum(c.busy is not None for c in controls),
            sum(c.held is not None for c in controls),
        )

    def __add__(self, other: ControlKinds) -> ControlKinds:
        return ControlKinds(
            self.pauses + other.pauses,
            self.busy_marks + other.busy_marks,
            self.held_runs + other.held_runs,
        )


@dataclass(frozen=True, slots=True)
class MigrationReport:
    states: int  # copied
    dead_letters: int  # copied
    skipped: int  # states, dead letters and records the target already had, left as they are
    runs: int = 0  # run records copied
    missed: int = 0  # missed-slot records copied
    controls: int = 0  # entries' controls (pause, busy mark, held run) copied
    audit: int = 0  # audit records copied
    keys: int = 0  # idempotency keys and request ids copied
    entries: int = 0  # runtime entries copied, with their versions
    kinds: ControlKinds = ControlKinds()  # the controls copied, by kind
    outbox: int = 0  # undelivered runs for RabbitMQ carried to the target's outbox


@dataclass(frozen=True, slots=True)
class HistoryCopy:
    runs: int  # copied
    missed: int  # copied
    skipped: int  # run and missed records the target already held


@dataclass(frozen=True, slots=True)
class ControlsCopy:
    controls: int  # entries whose control was copied
    audit: int  # audit records copied
    keys: int  # trigger keys copied
    skipped: int  # of all three, those the target already held
    kinds: ControlKinds = ControlKinds()  # the controls copied, by kind


AUDIT_COPY_LIMIT = 100_000_000  # every audit record: Controls.audit reads newest first, bounded
HELD_BEHIND_QUEUED_REASON = (
    "held in {source} behind run {busy}, which was queued when it was migrated (copied as a "
    "dead letter); run it with `beatd dead retry` after that one"
)


class SettledControls(NamedTuple):
    """The source's controls as the target takes them, and the held runs that become dead
    letters with the queued runs they waited for."""

    controls: dict[str, EntryControl]
    held_letters: list[DeadLetter]


def settle_dead_lettered(
    controls: Mapping[str, EntryControl], dead: Sequence[DeadLetter], source: str
) -> SettledControls:
    """A run copied as a dead letter has reached a final outcome: the busy mark it holds is
    not copied (the entry would stay busy until overlap_timeout), and the run held behind it,
    which its end would have published, is copied as a dead letter too."""
    ended = {letter.id for letter in dead}
    settled: dict[str, EntryControl] = {}
    letters: list[DeadLetter] = []
    for name, control in controls.items():
        busy = control.busy
        if busy is not None and busy.run_id in ended:
            held = control.held
            if held is not None:
                reason = HELD_BEHIND_QUEUED_REASON.format(source=source, busy=busy.run_id)
                letter = DeadLetter(
                    held.run_id, held.destination_queue, held.body, reason, dead[0].failed_at, 0
                )
                letters.append(letter)
            control = control._replace(busy=None, held=None)
        if control != NO_CONTROL:
            settled[name] = control
    return SettledControls(settled, letters)


def copy_controls(
    source: Controls,
    target: Controls,
    batch: int = 1000,
    controls: Mapping[str, EntryControl] | None = None,
) -> ControlsCopy:
    """Copy every entry's control (pause, busy mark, held run) — `controls` when given, else
    the source's — the audit log and the remembered trigger keys as they are, each kind
    counted; what the target already holds is kept (`Controls.import_controls`)."""
    chosen = sorted((source.load_controls() if controls is None else controls).items())
    audit = source.audit(limit=AUDIT_COPY_LIMIT)
    keys = source.trigger_keys()
    copied = [0, 0, 0]
    kinds = ControlKinds()
    for start in range(0, len(chosen), batch):
        page = dict(chosen[start : start + batch])
        held_there = target.load_controls(list(page))
        kinds += ControlKinds.of([c for n, c in page.items() if n not in held_there])
        copied[0] += target.import_controls(page)
    for start in range(0, len(audit), batch):
        copied[1] += target.import_controls({}, audit[start : start + batch])
    for start in range(0, len(keys), batch):
        copied[2] += target.import_controls({}, (), keys[start : start + batch])
    seen = len(chosen) + len(audit) + len(keys)
    return ControlsCopy(copied[0], copied[1], copied[2], seen - sum(copied), kinds)


def copy_entries(
    source: RuntimeEntries, target: RuntimeEntries, batch: int = 1000
) -> tuple[int, int]:
    """Copy every runtime entry as it is (version, times and authors), page by page by name;
    a name the target holds is kept (`RuntimeEntries.import_entries`). How many were copied,
    and how many skipped."""
    copied = seen = 0
    after = ""
    while page := source.list_entries(after, batch):
        copied += target.import_entries(page)
        seen += len(page)
        after = page[-1].name
    return copied, seen - copied


def copy_history(source: RunHistory, target: RunHistory, batch: int = 1000) -> HistoryCopy:
    """Copy every run record and missed-slot record, and each entry's summary, as they are;
    what the target already holds is kept (`RunHistory.import_history`)."""
    runs = seen = 0
    for records in source.export_runs(batch):
        seen += len(records)
        runs += target.import_history(records)
    missed = source.export_missed()
    missed_copied = 0
    for start in range(0, len(missed), batch):
        missed_copied += target.import_history((), missed[start : start + batch])
    summaries = list(source.summaries().values())
    for start in range(0, len(summaries), batch):
        target.import_history((), (), summaries[start : start + batch])
    return HistoryCopy(runs, missed_copied, seen - runs + len(missed) - missed_copied)


def carry_outbox(
    target: MigrationEnd, lease: Lease, waiting: Sequence[DeadLetter]
) -> tuple[int, list[DeadLetter]]:
    """Commit the source's undelivered outbox runs (`waiting`, read as dead letters) to the
    target's outbox as they are, for its leader's relay; a run whose published record the
    target holds was carried by an earlier copy and is skipped. How many were carried, and the
    runs that cannot be read (left to be copied as dead letters, saying why)."""
    carried: list[Outgoing] = []
    unreadable: list[DeadLetter] = []
    for letter in waiting:
        try:
            run = decode(letter.body)
        except UnreadableOutboxRun as exc:
            unreadable.append(replace(letter, reason=f"unreadable outbox run: {exc}"))
            continue
        if target.run(letter.id) is None:
            outbox = BeatdQueue(OUTBOX_QUEUE, run.priority)
            carried.append(Outgoing(run.entry, letter.id, outbox, letter.body))
    for start in range(0, len(carried), 1000):
        target.commit(lease, [], carried[start : start + 1000])
    return len(carried), unreadable


def migrate(
    source: MigrationEnd,
    target: MigrationEnd,
    *,
    lease_ttl: float = 30.0,
    queued: Sequence[DeadLetter] = (),
    outbox: Sequence[DeadLetter] = (),
) -> MigrationReport:
    """Copy every entry's state and every dead letter from `source` to `target`, the
    `queued` runs (read from the source) as dead letters too, and the undelivered `outbox`
    runs (read from the source) to the target's outbox (`carry_outbox`).

    Both must be quiet: no scheduler may lead on either (stop `beatd run` everywhere first), so
    nothing is published while the horizon moves. Entries that already have state on the target,
    and dead letters whose run id it already holds, are left as they are and counted skipped.
    """
    _require_quiet(source, target)
    lease = target.acquire_lease(MIGRATE_NODE, lease_ttl)
    if lease is None:
        raise BeatdError(f"could not take the lease on {target.url}; is a scheduler running?")
    try:
        states = source.load_states()
        writes = [StateWrite(state, None) for state in states.values()]
        skipped: set[str] = set()
        for start in range(0, len(writes), 1000):
            skipped |= target.commit(lease, writes[start : start + 1000], [])
        carried, unreadable = carry_outbox(target, lease, outbox)
        dead = [*queued, *unreadable]
        settled = settle_dead_lettered(source.load_controls(), dead, source.url)
        letters = [*source.dead_letters(), *dead, *settled.held_letters]
        copied = target.add_dead_letters(letters)
        history = copy_history(source, target)
        controls = copy_controls(source, target, controls=settled.controls)
        entries, entries_skipped = copy_entries(source, target)
    finally:
        target.release_lease(lease)
    report = MigrationReport(
        len(states) - len(skipped),
        copied,
        len(skipped)
        + len(letters)
        - copied
        + history.skipped
        + controls.skipped
        + entries_skipped
        + len(outbox)
        - len(unreadable)
        - carried,
        history.runs,
        history.missed,
        controls.controls,
        controls.audit,
        controls.keys,
        entries,
        controls.kinds,
        carried,
    )
    _log_report(report, source.url, target.url)
    return report


def _log_report(report: MigrationReport, source: str, target: str) -> None:
    log.info(
        "copied %d controls (%d pauses, %d busy marks, %d held runs), %d audit records, %d "
        "trigger keys and %d runtime entries; carried %d undelivered runs to the outbox",
        report.controls,
        report.kinds.pauses,
        report.kinds.busy_marks,
        report.kinds.held_runs,
        report.audit,
        report.keys,
        report.entries,
        report.outbox,
    )
    log.info(
        "copied %d entry states, %d dead letters, %d run records and %d missed-slot records "
        "from %s to %s; skipped=%d",
        report.states,
        report.dead_letters,
        report.runs,
        report.missed,
        source,
        target,
        report.skipped,
    )


def _require_quiet(source: MigrationEnd, target: MigrationEnd) -> None:
    for backend, role in ((source, "source"), (target, "target")):
        leader = backend.leader()
        if leader is not None:
            raise BeatdError(
                f"the {role} {backend.url} has a running leader (node={leader.node}); stop every "
                "`beatd run` before migrating"
            )
