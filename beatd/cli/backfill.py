"""`beatd backfill`: publish an entry's past slots under their scheduled ids, marked backfill
(docs/controls.md). A slot whose id already has a published record in the run history is not
published again, checked in the same atomic step as the enqueue, so a backfill over slots the
scheduler published, or the same backfill twice, publishes nothing more.

The range is bounded on both sides: slots after the entry's horizon are still the scheduler's
to publish, and slots older than the run history's retention cannot be checked against it.
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

import click

from beatd.backends.base import Controls, Outgoing
from beatd.cli.common import (
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
    read_config,
    schedule_options,
    seconds_option,
    slot_text,
)
from beatd.cli.controls import (
    BY_HELP,
    backend_now,
    controls_of,
    default_by,
    find_entry,
    with_retries,
)
from beatd.config import Entry
from beatd.errors import BeatdError
from beatd.history import RunKind
from beatd.message import run_id
from beatd.publisher import encode_run
from beatd.service import setup_logging

DEFAULT_MAX = 1_000
BATCH = 100  # runs per atomic step at most


@dataclass(frozen=True, slots=True)
class BackfillRange:
    """The slots asked for: [start, end) as aware UTC, at most `most` of them."""

    start: datetime
    end: datetime
    most: int


def read_moment(option: str, text: str, zone: str) -> datetime:
    """An ISO 8601 time; one without an offset is in the entry's zone."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        bad_option(option, f"cannot read {text!r}: give an ISO 8601 time (2026-12-04T00:00)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(UTC)


def read_rate(text: str | None) -> float | None:
    """--rate N/s (or N): runs per second; None: as fast as the backend takes them."""
    if text is None:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/s)?\s*", text)
    if found is None or float(found.group(1)) <= 0:
        bad_option("--rate", f"cannot read {text!r}: give runs per second, such as 10/s")
    return float(found.group(1))


def slots_in(entry: Entry, asked: BackfillRange) -> list[datetime]:
    """The entry's slots in [start, end); more than `most` ends the command (exit 2)."""
    slots: list[datetime] = []
    slot = entry.schedule.next_after(asked.start - timedelta(microseconds=1))
    while slot is not None and slot < asked.end:
        if len(slots) == asked.most:
            bad_option(
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
    """Refuse (exit 2) slots the scheduler has yet to account for, or the history forgot."""
    if not slots:
        return
    if horizon is None:
        bad_option(
            "--to",
            f"{entry.name} has no persisted horizon yet (no scheduler has accounted for any "
            "of its slots): every slot is still the scheduler's",
        )
    if slots[-1] > horizon:
        bad_option(
            "--to",
            f"{slot_text(slots[-1])} is past {entry.name}'s horizon {slot_text(horizon)}: later "
            "slots are the scheduler's to publish; end the range at or before it",
        )
    if slots[0] < oldest:
        bad_option(
            "--from",
            f"{slot_text(slots[0])} is older than the run history's retention (since "
            f"{slot_text(oldest)}, --history-max-age): it could not be checked against what "
            "was published; start the range later",
        )


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


@main.command()
@click.argument("entry_name", metavar="ENTRY")
@click.option("--from", "start", required=True, metavar="ISO", help="First slot (inclusive).")
@click.option("--to", "end", required=True, metavar="ISO", help="End of the range (exclusive).")
@click.option("--dry-run", is_flag=True, help="List the run ids that would go out; send none.")
@click.option("--rate", metavar="N/s", help="Publish at most N runs a second.")
@click.option(
    "--max",
    "most",
    type=click.IntRange(1),
    default=DEFAULT_MAX,
    show_default=True,
    help="Refuse a range of more slots than this.",
)
@click.option(
    "--history-max-age",
    envvar="BEATD_HISTORY_MAX_AGE",
    default="30d",
    show_default=True,
    help="The run history's retention (as `beatd run` was given): older slots are refused.",
)
@click.option("--by", metavar="NAME", help=BY_HELP)
@schedule_options
@backend_options
@logging_options("warning", with_format=False)
def backfill(
    entry_name: str,
    start: str,
    end: str,
    dry_run: bool,
    rate: str | None,
    most: int,
    history_max_age: str,
    by: str | None,
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Publish ENTRY's slots in [--from, --to) under their scheduled ids, marked backfill.

    Times without an offset are in the entry's timezone. A slot already published (by the
    scheduler or an earlier backfill) is not published again. Slots past the entry's horizon
    (the scheduler's) or older than the run history's retention are refused (exit 2).
    """
    setup_logging(log.level, log.format)
    entry = find_entry(read_config(schedule), entry_name)
    asked = BackfillRange(
        read_moment("--from", start, entry.timezone), read_moment("--to", end, entry.timezone), most
    )
    if asked.start >= asked.end:
        bad_option("--to", f"{end!r} is not after --from {start!r}")
    per_second = read_rate(rate)
    max_age = timedelta(seconds=seconds_option("--history-max-age", history_max_age))
    slots = slots_in(entry, asked)
    store = open_broker(backend)
    try:
        controls = controls_of(store)
        now = backend_now(store)
        state = store.load_states().get(entry.name)
        check_bounds(entry, slots, state.last_slot if state else None, now - max_age)
        if dry_run:
            for slot in slots:
                click.echo(run_id(entry.name, slot))
            click.echo(f"{len(slots)} slot(s) would be published unless already there")
            return
        runs = [
            encode_run(entry, run_id(entry.name, s), s, now, RunKind.BACKFILL, socket.gethostname())
            for s in slots
        ]
        published = send(controls, entry, runs, per_second, by or default_by(), asked)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for run in runs:
        click.echo(f"{'published' if run.id in published else 'already there'}  {run.id}")
    click.echo(f"published {len(published)}, already there {len(runs) - len(published)}")


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
        ids, _ = with_retries(functools.partial(controls.backfill, entry.name, batch, by, detail))
        published.update(ids)
    return published
