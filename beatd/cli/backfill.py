"""`beatd backfill`: publish an entry's past slots under their scheduled ids, marked backfill
(docs/controls.md). A slot whose id already has a published record in the run history is not
published again, checked in the same atomic step as the enqueue, so a backfill over slots the
scheduler published, or the same backfill twice, publishes nothing more.

The range is bounded on both sides: slots after the entry's horizon are still the scheduler's
to publish, and slots older than what the run history vouches for cannot be checked against it.
"""

from __future__ import annotations

from datetime import timedelta

import click

from beatd.cli.common import (
    EXIT_RUNTIME,
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    fail,
    logging_options,
    main,
    open_broker,
    read_config,
    schedule_options,
    seconds_option,
)
from beatd.cli.controls import BY_HELP, asked, controls_of, default_by
from beatd.errors import BeatdError
from beatd.operations.backfill import (
    DEFAULT_MAX,
    BackfillRefused,
    backfill_range,
    parse_rate,
    plan_backfill,
    send,
)
from beatd.operations.controls import find_entry
from beatd.service import setup_logging


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
@click.option(
    "--force",
    is_flag=True,
    help="Publish even while the entry's run is busy under overlap: skip or buffer_one.",
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
    force: bool,
    by: str | None,
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Publish ENTRY's slots in [--from, --to) under their scheduled ids, marked backfill.

    Times without an offset are in the entry's timezone. A slot already published (by the
    scheduler or an earlier backfill) is not published again. Slots past the entry's horizon
    (the scheduler's), older than the run history's retention or before the entry's oldest
    record of a scheduled run are refused (exit 2); so is, under `overlap: skip` or
    `buffer_one`, a busy entry's backfill (exit 1) unless --force.
    """
    setup_logging(log.level, log.format)
    entry = asked(lambda: find_entry(read_config(schedule), entry_name))
    span = asked(lambda: backfill_range(entry, start, end, most))
    per_second = asked(lambda: parse_rate(rate))
    max_age = timedelta(seconds=seconds_option("--history-max-age", history_max_age))
    store = open_broker(backend)
    try:
        runs = asked(lambda: plan_backfill(store, entry, span, max_age, force))
        if dry_run:
            for run in runs:
                click.echo(run.id)
            click.echo(f"{len(runs)} slot(s) would be published unless already there")
            return
        controls, who = controls_of(store), by or default_by()
        published = asked(lambda: send(controls, entry, runs, per_second, who, span))
    except BackfillRefused as exc:
        click.echo(f"beatd: {exc}", err=True)
        raise SystemExit(EXIT_RUNTIME) from None
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for run in runs:
        click.echo(f"{'published' if run.id in published else 'already there'}  {run.id}")
    click.echo(f"published {len(published)}, already there {len(runs) - len(published)}")
