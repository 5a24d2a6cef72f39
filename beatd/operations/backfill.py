"""Backfill as both ways in carry it out (docs/controls.md): an entry's past slots in
[from, to), published under their scheduled ids, marked backfill. A slot whose id already has a
published record in the run history is not published again, checked in the same atomic step as
the enqueue, so a backfill over slots the scheduler published, or the same backfill twice,
publishes nothing more.

The range is bounded on both sides: slots after the entry's horizon are still the scheduler's
to publish, and slots the run history cannot vouch for cannot be checked against it: older than
its retention, at or before the newest slot whose record a trim deleted, or any when it holds
no record of the entry's scheduled runs (a scheduler run with --no-history). Under `overlap:
skip` or `buffer_one` a busy entry's backfill is refused, as a trigger's is, unless forced.
"""

from __future__ import annotations

import functools
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from beatd.backends import Backend
from beatd.backends.base import Controls, HistoryTrimmed, Outgoing
from beatd.config import Entry
from beatd.controls import NO_CONTROL
from beatd.errors import BeatdError
from beatd.history import HistoryQuery, RunKind
from beatd.message import run_id
from beatd.operations.controls import BadRequest, backend_now, slot_text, with_retries
from beatd.publisher import encode_run

DEFAULT_MAX = 1_000
BATCH = 100  # runs per atomic step at most
VOUCH_READ_LIMIT = 1_000  # the entry's newest records read for one of its scheduled runs
SCHEDULER_KINDS = frozenset({RunKind.SCHEDULED, RunKind.CAUGHT_UP})  # written by a leader only


class BackfillRefused(BeatdError):
    """A backfill refused as a trigger would be (the entry is busy): `--force` sends it."""


@dataclass(frozen=True, slots=True)
class BackfillRange:
    """The slots asked for: [start, end) as aware UTC, at most `most` of them."""

    start: datetime
    end: datetime
    most: int


def parse_moment(field: str, option: str, text: str, zone: str) -> datetime:
    """An ISO 8601 time; one without an offset is in the entry's zone."""
    try:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=ZoneInfo(zone))
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadRequest(
            field, option, f"cannot read {text!r}: give an ISO 8601 time (2026-12-04T00:00)"
        ) from None


def backfill_range(entry: Entry, start: str, end: str, most: int) -> BackfillRange:
    """[start, end) read in the entry's zone; the end must come after the start."""
    asked = BackfillRange(
        parse_moment("from", "--from", start, entry.timezone),
        parse_moment("to", "--to", end, entry.timezone),
        most,
    )
    if asked.start >= asked.end:
        raise BadRequest("to", "--to", f"{end!r} is not after --from {start!r}")
    return asked


def parse_rate(text: str | None) -> float | None:
    """N/s (or N): runs per second; None: as fast as the backend takes them."""
    if text is None:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/s)?\s*", text)
    if found is None or float(found.group(1)) <= 0:
        message = f"cannot read {text!r}: give runs per second, such as 10/s"
        raise BadRequest("rate", "--rate", message)
    return float(found.group(1))


def slots_in(entry: Entry, asked: BackfillRange) -> list[datetime]:
    """The entry's slots in [start, end); more than `most` is refused."""
    slots: list[datetime] = []
    slot = entry.schedule.next_after(asked.start - timedelta(microseconds=1))
    while slot is not None and slot < asked.end:
        if len(slots) == asked.most:
            raise BadRequest(
                "max",
                "--max",
                f"[{slot_text(asked.start)}, {slot_text(asked.end)}) holds more than "
                f"{asked.most} slots of {entry.name}; narrow the range or raise --max",
            )
        slots.append(slot)
        slot = entry.schedule.next_after(slot)
    return slots


def check_bounds(
    entry: Entry, slots: list[datetime], horizon: datetime | None, oldest: datetime
) -> None:
    """Refuse slots the scheduler has yet to account for, or the history forgot."""
    if not slots:
        return
    if horizon is None:
        raise BadRequest(
            "to",
            "--to",
            f"{entry.name} has no persisted horizon yet (no scheduler has accounted for any "
            "of its slots): every slot is still the scheduler's",
        )
    if slots[-1] > horizon:
        raise BadRequest(
            "to",
            "--to",
            f"{slot_text(slots[-1])} is past {entry.name}'s horizon {slot_text(horizon)}: later "
            "slots are the scheduler's to publish; end the range at or before it",
        )
    if slots[0] < oldest:
        raise BadRequest(
            "from",
            "--from",
            f"{slot_text(slots[0])} is older than the run history's retention (since "
            f"{slot_text(oldest)}, --history-max-age): it could not be checked against what "
            "was published; start the range later",
        )


def trimmed_refusal(entry: str, first: datetime, trimmed: datetime) -> BadRequest:
    return BadRequest(
        "from",
        "--from",
        f"{slot_text(first)} is not after {slot_text(trimmed)}, the newest slot of {entry} whose "
        "run record the history's retention trimmed (--history-keep, --history-max-records): "
        "what was published up to it can no longer be checked; start the range after it",
    )


def check_vouched(store: Backend, entry: Entry, slots: list[datetime]) -> None:
    """Refuse slots the history cannot vouch for: at or before the newest slot whose record a
    trim deleted (one published there has no record left to find, and would go out twice),
    or any when it holds no record of the entry's scheduled runs (its scheduler runs with
    --no-history: nothing it published can be found)."""
    if not slots:
        return
    trimmed = store.trimmed_up_to(entry.name)
    if trimmed is not None and slots[0] <= trimmed:
        raise trimmed_refusal(entry.name, slots[0], trimmed)
    records = store.runs(HistoryQuery(entry=entry.name, limit=VOUCH_READ_LIMIT))
    if not any(record.kind in SCHEDULER_KINDS for record in records):
        raise BadRequest(
            "from",
            "--from",
            f"the run history holds no record of a scheduled run of {entry.name}: if its "
            "scheduler runs with --no-history, what it published cannot be checked, and every "
            "slot would go out again; run the scheduler with the history on, then backfill",
        )


def check_not_busy(store: Backend, entry: Entry, now: datetime) -> None:
    """Under `skip` or `buffer_one`, refuse while the entry's run is busy (its mark fresh)."""
    guard = entry.guard
    if guard is None:
        return
    busy = store.load_controls([entry.name]).get(entry.name, NO_CONTROL).busy
    if busy is not None and (now - busy.since).total_seconds() < guard.timeout:
        raise BackfillRefused(
            f"{entry.name} is busy: run {busy.run_id} has not ended, and its overlap is "
            f"{guard.overlap}; nothing was published: wait for it, or add --force"
        )


def plan_backfill(
    store: Backend, entry: Entry, asked: BackfillRange, max_age: timedelta, force: bool = False
) -> list[Outgoing]:
    """The runs a backfill would send, checked against the entry's horizon and what the
    history vouches for (BadRequest naming the bound crossed) and, unless `force`, its busy
    run (BackfillRefused)."""
    slots = slots_in(entry, asked)
    now = backend_now(store)
    state = store.states_of([entry.name]).get(entry.name)  # one entry's, not every one's
    check_bounds(entry, slots, state.last_slot if state else None, now - max_age)
    if slots and not force:
        check_not_busy(store, entry, now)
    check_vouched(store, entry, slots)
    host = socket.gethostname()
    return [encode_run(entry, run_id(entry.name, s), s, now, RunKind.BACKFILL, host) for s in slots]


def batches(runs: list[Outgoing], rate: float | None) -> Iterator[list[Outgoing]]:
    """`runs` in atomic steps, paced to `rate` runs per second (None: unpaced)."""
    size = BATCH if rate is None else max(1, min(BATCH, int(rate)))
    started = time.monotonic()
    for first in range(0, len(runs), size):
        if rate is not None:
            ahead = first / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        yield runs[first : first + size]


def send(
    controls: Controls,
    entry: Entry,
    runs: list[Outgoing],
    rate: float | None,
    by: str,
    asked: BackfillRange,
) -> set[str]:
    """Each batch in one atomic step (retried: a repeat publishes nothing more); the ids
    published."""
    published: set[str] = set()
    detail = {"from": slot_text(asked.start), "to": slot_text(asked.end), "slots": len(runs)}
    for batch in batches(runs, rate):
        step = functools.partial(controls.backfill, entry.name, batch, by, detail)
        try:
            ids, _ = with_retries(step)
        except HistoryTrimmed as exc:  # a trim since the plan: the step published nothing
            first = min(m.slot for m in batch if m.slot is not None)
            raise trimmed_refusal(entry.name, first, exc.bound) from None
        published.update(ids)
    return published
