"""Operating commands: dead letters."""

from __future__ import annotations

import json

import click

from beatd.cli.common import (
    BackendSettings,
    LogSettings,
    backend_options,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
)
from beatd.cli.controls import BY_HELP, default_by
from beatd.errors import BeatdError
from beatd.operations.dead_letters import dead_letter_object, delete_dead, requeue_dead
from beatd.service import setup_logging


@main.group()
def dead() -> None:
    """Inspect, requeue and delete dead letters: runs that failed for good or could not run."""


@dead.command(name="list")
@backend_options
@logging_options()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def dead_list(backend: BackendSettings, log: LogSettings, as_json: bool) -> None:
    """Show the dead-letter queue, oldest first, with the reason of each."""
    setup_logging(log.level, log.format)
    store = open_broker(backend, read_only=True)
    try:
        letters = store.dead_letters()
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    rows = [dead_letter_object(d) for d in letters]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("ID", "TASK", "QUEUE", "FAILED AT (UTC)", "DELIVERIES", "REASON")]
    table += [
        (r["id"], r["task"], r["queue"], r["failed_at"], str(r["deliveries"]), r["reason"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))
    click.echo(f"{len(rows)} dead letter(s)")


@dead.command(name="retry")
@backend_options
@logging_options()
@click.argument("message_id", metavar="ID", required=False)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@click.option("--by", metavar="NAME", help=BY_HELP)
def dead_retry(
    backend: BackendSettings,
    log: LogSettings,
    message_id: str | None,
    everything: bool,
    by: str | None,
) -> None:
    """Put a dead letter (by run ID) or all of them back on their queues; the audit log
    records who did."""
    setup_logging(log.level, log.format)
    if (message_id is None) == (not everything):
        bad_option("ID/--all", "give a run ID or --all, not both and not neither")
    store = open_broker(backend, create=False)
    try:
        moved = requeue_dead(store, None if everything else message_id, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    if message_id is not None and moved == 0:
        bad_option("ID", f"no dead letter with id {message_id!r} (see beatd dead list)")
    click.echo(f"requeued {moved} dead letter(s)")


@dead.command(name="rm")
@backend_options
@logging_options()
@click.argument("message_ids", metavar="ID...", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter.")
@click.option("--by", metavar="NAME", help=BY_HELP)
def dead_rm(
    backend: BackendSettings,
    log: LogSettings,
    message_ids: tuple[str, ...],
    everything: bool,
    by: str | None,
) -> None:
    """Delete dead letters (by run ID) or all of them for good, without running them; the
    audit log records each deletion and who did it."""
    setup_logging(log.level, log.format)
    if bool(message_ids) == everything:
        bad_option("ID/--all", "give run IDs or --all, not both and not neither")
    store = open_broker(backend, create=False)
    try:
        gone = delete_dead(store, None if everything else message_ids, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    unknown = [i for i in dict.fromkeys(message_ids) if i not in gone]
    if unknown:
        click.echo(f"deleted {len(gone)} dead letter(s)")
        listed = ", ".join(repr(i) for i in unknown)
        ids = "ids" if len(unknown) > 1 else "id"
        bad_option("ID", f"no dead letter with {ids} {listed} (see beatd dead list)")
    click.echo(f"deleted {len(gone)} dead letter(s)")
