"""The run history as both ways in show it: the newest runs and missed-slot ranges, and one
JSON object per record (documented field by field in docs/history.md, "beatd history --json";
the HTTP API returns the same objects)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from beatd.backends import Backend
from beatd.config.convert import suggest
from beatd.controls import Pause, pause_of
from beatd.durations import read_duration
from beatd.history import ATTEMPT_OUTCOMES, HistoryQuery, MissedRecord, RunRecord, RunStatus
from beatd.timetext import local_stamp, seconds, stamp

MISSED = "missed"  # the outcome that chooses the missed-slot records
PAUSED = "paused"  # the missed reason of the slots a pause covered
AUDIT_READ = 1000  # audit records read per entry to find the pauses of paused ranges, at most
OUTCOMES = (*ATTEMPT_OUTCOMES, *(s.value for s in RunStatus), MISSED)
# Filtered by outcome, runs are read newest first in growing batches until N match, up to this.
SCAN_LIMIT = 20_000


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from `now` (30m, 2d) or an ISO 8601 time (UTC when it has no offset);
    ValueError with the reason when it is neither."""
    try:
        return now - read_duration(text, zero_ok=True)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: year 1 with a positive offset, say
        raise ValueError(
            f"cannot read {text!r}: give a duration back from now (such as 30m or 2d) or an ISO "
            "8601 time (such as 2026-12-05T01:00:00Z)"
        ) from None


def unknown_outcome(value: str) -> str | None:
    """Why `value` is not an outcome to filter by, or None when it is one."""
    if value in OUTCOMES:
        return None
    return f"unknown outcome {value!r}: use one of {', '.join(OUTCOMES)}" + suggest(value, OUTCOMES)


class PauseFound(NamedTuple):
    """The pause a range of slots missed (`paused`) was under, from its audit record."""

    pause: Pause
    audit: str  # the pause's audit record id


class HistoryPage(NamedTuple):
    """Runs and missed ranges together, newest written first; `cut_short` when the search by
    outcome stopped at SCAN_LIMIT runs before finding `limit`; `pauses`: the pause each range
    missed (`paused`) was under, by (entry, first slot), where the audit log still has it."""

    records: list[RunRecord | MissedRecord]
    cut_short: bool
    pauses: Mapping[tuple[str, datetime], PauseFound] = {}


def read_history(store: Backend, query: HistoryQuery, outcomes: frozenset[str]) -> HistoryPage:
    """The newest `query.limit` records: runs whose status is one of `outcomes` (any, when
    empty) and, unless `outcomes` leaves them out, missed-slot ranges."""
    runs, cut_short = read_runs(store, query, outcomes)
    missed: Sequence[MissedRecord] = []
    if not outcomes or MISSED in outcomes:
        missed = store.missed(query.entry, query.since, query.limit)
    records = newest_first(runs, missed, query.limit)
    return HistoryPage(records, cut_short, pauses_of(store, records))


def pauses_of(
    store: Backend, records: Sequence[RunRecord | MissedRecord]
) -> dict[tuple[str, datetime], PauseFound]:
    """The pause each range missed (`paused`) among `records` was under: the entry's newest
    pause record (one read of its audit log per entry) that began by the first slot and had not
    ended then (a range decided late, under a pause lifted since, is found all the same)."""
    paused = [r.slots for r in records if isinstance(r, MissedRecord) and r.slots.reason == PAUSED]
    found: dict[tuple[str, datetime], PauseFound] = {}
    for entry in sorted({slots.entry for slots in paused}):
        pauses = [
            (pause, record.id)
            for record in store.audit(entry, limit=AUDIT_READ)
            if record.action == "pause" and (pause := pause_of(record.after)) is not None
        ]  # newest first
        for slots in (s for s in paused if s.entry == entry):
            match = next(((p, i) for p, i in pauses if p.covers(slots.first)), None)
            if match is not None:
                found[(entry, slots.first)] = PauseFound(*match)
    return found


def read_runs(
    store: Backend, query: HistoryQuery, outcomes: frozenset[str]
) -> tuple[list[RunRecord], bool]:
    """The newest `query.limit` runs whose status is one of `outcomes` (any, when empty), and
    whether the scan stopped at SCAN_LIMIT before finding them all."""
    if outcomes and not outcomes - {MISSED}:
        return [], False
    size = query.limit
    while True:
        runs = store.runs(query._replace(limit=size))
        chosen = [run for run in runs if not outcomes or run.status in outcomes]
        if len(chosen) >= query.limit or len(runs) < size:
            return chosen[: query.limit], False
        if size >= SCAN_LIMIT:
            return chosen, True
        size = min(size * 4, SCAN_LIMIT)


def newest_first(
    runs: Sequence[RunRecord], missed: Sequence[MissedRecord], limit: int
) -> list[RunRecord | MissedRecord]:
    """Runs (by publication) and missed ranges (by recording) together, newest first."""
    records: list[tuple[Any, str, RunRecord | MissedRecord]] = [
        (run.published_at, run.id, run) for run in runs
    ]
    records += [(m.recorded_at, m.slots.first.isoformat(), m) for m in missed]
    records.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [record for _, _, record in records[:limit]]


def record_object(
    record: RunRecord | MissedRecord,
    zones: Mapping[str, str],
    pauses: Mapping[tuple[str, datetime], PauseFound] | None = None,
) -> dict[str, Any]:
    """One record as JSON, with the entry's zone when the schedule files name it (and a paused
    range's pause, when `pauses` has it)."""
    if isinstance(record, RunRecord):
        return run_object(record, zones.get(record.entry))
    slots = record.slots
    found = (pauses or {}).get((slots.entry, slots.first))
    return missed_object(record, zones.get(slots.entry), found)


def run_object(run: RunRecord, zone: str | None) -> dict[str, Any]:
    """One run, as `--json` prints it (docs/history.md, "beatd history --json")."""
    first = run.attempts[0] if run.attempts else None
    last = run.attempts[-1] if run.attempts else None
    return {
        "type": "run",
        "id": run.id,
        "entry": run.entry,
        "kind": str(run.kind),
        "audit": run.audit,
        "status": str(run.status),
        "slot": stamp(run.slot),
        "slot_local": local_stamp(run.slot, zone),
        "timezone": zone,
        "due": stamp(run.due),
        "published_at": stamp(run.published_at),
        "started_at": stamp(first.started_at) if first else None,
        "ended_at": stamp(last.ended_at) if last else None,
        "delay_seconds": seconds(first.started_at - run.due) if first else None,
        "duration_seconds": seconds(last.duration) if last else None,
        "node": run.node,
        "epoch": run.epoch,
        "celery": run.celery,
        "received_at": stamp(run.received_at),
        "overdue_at": stamp(run.overdue_at),
        "attempts": [
            {
                "number": a.number,
                "consumer": a.consumer,
                "host": a.host,
                "pid": a.pid,
                "started_at": stamp(a.started_at),
                "ended_at": stamp(a.ended_at),
                "duration_seconds": seconds(a.duration),
                "outcome": a.outcome,
                "reason": a.reason or None,
                "error_type": a.error_type or None,
                "error": a.error or None,
            }
            for a in run.attempts
        ],
    }


def missed_object(
    record: MissedRecord, zone: str | None, found: PauseFound | None = None
) -> dict[str, Any]:
    """One missed-slot range, as `--json` prints it (docs/history.md)."""
    slots = record.slots
    pause = None
    if found is not None:
        p = found.pause
        pause = {
            "at": stamp(p.at),
            "until": stamp(p.until),
            "reason": p.reason,
            "by": p.by,
            "audit": found.audit,
        }
    return {
        "type": "missed",
        "entry": slots.entry,
        "reason": slots.reason,
        "first_slot": stamp(slots.first),
        "first_slot_local": local_stamp(slots.first, zone),
        "last_slot": stamp(slots.last),
        "timezone": zone,
        "slots": slots.total,
        "recorded_at": stamp(record.recorded_at),
        "node": record.node,
        "epoch": record.epoch,
        "overdue_at": stamp(record.overdue_at),
        "pause": pause,
    }
