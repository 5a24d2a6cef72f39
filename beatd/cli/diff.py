"""`beatd diff OLD NEW`: review a schedule change before deploying it.

Unlike the other commands, its exit status says the answer: 0 the sets are the same, 1 they
differ, 2 bad input or any error (so CI can gate a deploy on it).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click

from beatd.backends import open_backend
from beatd.cli.common import (
    NAMESPACE_FLAG,
    ScheduleSettings,
    main,
    schedule_reading_options,
    slot_text,
)
from beatd.config import Config, load_config
from beatd.config.compare import RUN_LIMIT, Comparison, RunChanges, compare
from beatd.config.convert import to_datetime, to_timezone
from beatd.core import Planner, Run
from beatd.durations import format_duration, read_duration
from beatd.errors import BeatdError

logger = logging.getLogger(__name__)
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
T = TypeVar("T")
SHOWN_RUNS = 5  # per entry and direction in the text; --json lists them all
CANNOT_TELL = "cannot tell what would publish at once on reload: give --broker to read the horizons"


def _error(option: str, message: str) -> NoReturn:
    click.echo(f"beatd: {option}: {message}", err=True)
    sys.exit(EXIT_ERROR)


@main.command()
@click.argument("old")
@click.argument("new")
@click.option("--window", default="24h", show_default=True, help="Compare the runs due this soon.")
@click.option("--after", help="Compare as if now were this ISO time; naive is in --timezone.")
@click.option(
    "--broker",
    envvar="BEATD_BROKER",
    help="Read the entries' horizons here (read-only) to list what NEW would publish at once.",
)
@click.option("--namespace", **NAMESPACE_FLAG)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@schedule_reading_options
def diff(
    old: str,
    new: str,
    window: str,
    after: str | None,
    broker: str | None,
    namespace: str,
    as_json: bool,
    schedule: ScheduleSettings,
) -> None:
    """Compare two schedule sets (files or directories): entries added, removed and changed,
    the runs that appear or disappear, and with --broker what would publish at once on reload.

    Exit status: 0 the same, 1 different, 2 bad input or any error.
    """
    zone = _checked(lambda: to_timezone(schedule.timezone), "--timezone")
    span = _checked(lambda: read_duration(window), "--window")
    now = (
        datetime.now(UTC)
        if after is None
        else _checked(lambda: to_datetime(after, zone), "--after")
    )
    if datetime.max.replace(tzinfo=UTC) - now < span:
        _error(
            "--window",
            f"the window from {slot_text(now)} for {format_duration(span)} runs past the end of "
            "year 9999; give an earlier --after or a shorter --window",
        )
    settings = replace(schedule, timezone=zone)
    old_config = _load(replace(settings, paths=(old,)))
    new_config = _load(replace(settings, paths=(new,)))
    try:
        comparison = compare(old_config, new_config, now, span)
        catch_up = None if broker is None else _catch_up(new_config, broker, namespace, now)
    except Exception as exc:  # 1 would tell a CI gate "different": any failure is 2
        logger.debug("diff failed old=%s new=%s", old, new, exc_info=True)
        _error("diff", f"cannot compare the schedule sets: {type(exc).__name__}: {exc}")
    if as_json:
        click.echo(json.dumps(_as_json(comparison, catch_up, now, span)))
    else:
        for line in _as_text(comparison, catch_up, now, span):
            click.echo(line)
    sys.exit(EXIT_SAME if comparison.same else EXIT_DIFFERENT)


def _checked(read: Callable[[], T], option: str) -> T:
    try:
        return read()
    except ValueError as exc:
        _error(option, str(exc))


def _load(settings: ScheduleSettings) -> Config:
    try:
        return load_config(
            settings.paths,
            default_timezone=settings.timezone,
            max_bytes=settings.max_file_size,
            celery_config=settings.celery_config,
        )
    except BeatdError as exc:
        for line in str(exc).splitlines():
            click.echo(line, err=True)
        sys.exit(EXIT_ERROR)


def _catch_up(config: Config, url: str, namespace: str, now: datetime) -> list[Run]:
    """What a scheduler reloading `config` at `now` would publish at once: the planner run on
    the persisted horizons, nothing written."""
    try:
        store = open_backend(url, namespace=namespace, read_only=True, create=False)
        try:
            states = store.load_states()
        finally:
            store.close()
    except BeatdError as exc:
        _error("--broker", str(exc))
    planner = Planner()
    planner.load(config.entries, states, now)
    runs: list[Run] = []
    for _ in range(10_000):  # each round settles every entry it decides; a bound all the same
        decisions = planner.tick(now)
        if not decisions:
            break
        runs += [run for decision in decisions for run in decision.runs]
        planner.settle(decisions)
    return sorted(runs, key=lambda run: (run.slot, run.entry.name))


def _as_text(
    comparison: Comparison, catch_up: list[Run] | None, now: datetime, span: timedelta
) -> list[str]:
    lines = [f"+ {name}: added" for name in comparison.added]
    lines += [f"- {name}: removed" for name in comparison.removed]
    for name, changes in comparison.changed.items():
        lines.append(f"~ {name}:")
        lines += [f"    {c.field}: {c.old} -> {c.new}" for c in changes]
    if comparison.same:
        lines.append("the schedule sets are the same")
    lines.append(f"runs from {slot_text(now)} for {format_duration(span)}:")
    lines += [line for runs in comparison.runs for line in _run_lines(runs)]
    if not comparison.runs:
        lines.append("  no run appears or disappears")
    if catch_up is None:
        lines.append(CANNOT_TELL)
    else:
        lines.append(f"on reload, {len(catch_up)} run(s) would publish at once:")
        lines += [f"  {run.entry.name} {slot_text(run.slot)}" for run in catch_up]
    return lines


def _run_lines(runs: RunChanges) -> list[str]:
    lines = []
    for sign, slots in (("+", runs.appear), ("-", runs.disappear)):
        if slots:
            shown = ", ".join(slot_text(t) for t in slots[:SHOWN_RUNS])
            more = f" and {len(slots) - SHOWN_RUNS} more" if len(slots) > SHOWN_RUNS else ""
            lines.append(f"  {sign} {runs.entry}: {len(slots)} run(s): {shown}{more}")
    if runs.cut is not None:
        lines.append(
            f"  ! {runs.entry}: more than {RUN_LIMIT:,} runs in the window: compared only up to "
            f"{slot_text(runs.cut)}"
        )
    return lines


def _as_json(
    comparison: Comparison, catch_up: list[Run] | None, now: datetime, span: timedelta
) -> dict[str, Any]:
    return {
        "same": comparison.same,
        "added": list(comparison.added),
        "removed": list(comparison.removed),
        "changed": {
            name: {c.field: {"old": c.old, "new": c.new} for c in changes}
            for name, changes in comparison.changed.items()
        },
        "window": {"from": slot_text(now), "seconds": span.total_seconds()},
        "runs": {
            runs.entry: {
                "appear": [slot_text(t) for t in runs.appear],
                "disappear": [slot_text(t) for t in runs.disappear],
                "truncated": runs.cut is not None,
                "compared_until": None if runs.cut is None else slot_text(runs.cut),
            }
            for runs in comparison.runs
        },
        "catch_up": None
        if catch_up is None
        else [{"entry": run.entry.name, "slot": slot_text(run.slot)} for run in catch_up],
    }
