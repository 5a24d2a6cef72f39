"""`beatd migrate`: copy the run state, dead letters and run history to another backend (SQLite
to Redis)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import click

from beatd.backends import Backend
from beatd.backends.base import DeadLetter, QueuedReads
from beatd.backends.sqlite import SQLiteBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.cli.common import (
    NAMESPACE_FLAG,
    BackendSettings,
    LogSettings,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
    url_with_password,
)
from beatd.errors import BeatdError
from beatd.migrate import QUEUED_REASON
from beatd.migrate import migrate as migrate_states
from beatd.service import setup_logging


@main.command()
@click.option(
    "--from",
    "source_url",
    envvar="BEATD_MIGRATE_FROM",
    callback=url_with_password("BEATD_MIGRATE_FROM"),
    required=True,
    metavar="URL",
    help="The backend to copy from (only read), e.g. sqlite:///beatd.db.",
)
@click.option(
    "--to",
    "target_url",
    envvar="BEATD_BROKER",
    callback=url_with_password("BEATD_BROKER"),
    required=True,
    metavar="URL",
    help="The backend to copy to, e.g. redis://host:6379/0: the --broker the daemons will use.",
)
@click.option(
    "--queued-as-dead-letters",
    "queued_as_dead",
    is_flag=True,
    help="Copy the runs still queued in a SQLite source as dead letters (for a damaged file "
    "no worker can empty), to run with `beatd dead retry` on the target. Runs waiting for "
    "RabbitMQ (the outbox) are carried as they are, with or without it.",
)
@click.option("--namespace", **NAMESPACE_FLAG)
@logging_options("warning", with_format=False)
def migrate(
    source_url: str, target_url: str, queued_as_dead: bool, namespace: str, log: LogSettings
) -> None:
    """Copy every entry's last published slot, the dead letters and the run history to another
    backend.

    Stop every `beatd run` on both sides first, and let the workers finish the runs already
    queued on the source (or, when they cannot, copy them as dead letters with
    --queued-as-dead-letters). Runs waiting in the outbox for RabbitMQ are carried to the
    target's outbox, for its leader's relay. Then start every `beatd run` and `beatd worker`
    with the new --broker: each entry goes on from the slot after its last published one, so
    no run is repeated or skipped. The source is only read; running the copy again adds
    nothing twice.
    """
    setup_logging(log.level, log.format)
    if source_url == target_url:
        bad_option("--to", f"is the same backend as --from ({source_url!r})")
    _require_existing_sqlite("--from", source_url)
    # what is readable, even if damaged
    source = open_broker(BackendSettings(source_url, namespace), read_only=True)
    target = open_broker(BackendSettings(target_url, namespace))
    try:
        depths = source.queue_depths()
        outbox = _outbox_runs(source, depths.pop(OUTBOX_QUEUE, 0))
        queued = _queued_runs(source, depths, queued_as_dead)
        report = migrate_states(source, target, queued=queued, outbox=outbox)
    except BeatdError as exc:
        fail(exc)
    finally:
        source.close()
        target.close()
    kinds = report.kinds
    click.echo(
        f"copied {report.states} state(s), {report.dead_letters} dead letter(s), {report.runs} "
        f"run record(s), {report.missed} missed-slot record(s), {kinds.pauses} pause(s), "
        f"{kinds.busy_marks} busy mark(s), {kinds.held_runs} held run(s), {report.audit} audit "
        f"record(s), {report.keys} trigger key(s); skipped {report.skipped} already on the target"
    )
    if report.entries:
        click.echo(f"copied {report.entries} runtime entr(ies) with their versions")
    if outbox:
        click.echo(
            f"carried {report.outbox} undelivered run(s) to the target's outbox ({OUTBOX_QUEUE}) "
            "for its relay"
        )
    if queued:
        click.echo(
            f"{len(queued)} queued run(s) read as dead letters: see them with `beatd dead list` "
            "and run them with `beatd dead retry ID` or `--all`"
        )


def _require_existing_sqlite(option: str, url: str) -> None:
    """Opening a missing SQLite file would create an empty one and move nothing."""
    if urlsplit(url).scheme != "sqlite":
        return
    path = url.removeprefix("sqlite:///")
    if path and not os.path.exists(path):
        bad_option(option, f"no database at {path} (from {url}); check the path")


def _outbox_runs(source: Backend, waiting: int) -> list[DeadLetter]:
    """The runs in the source's outbox, not yet relayed to RabbitMQ (read as dead letters): no
    worker empties it, only a leader's relay, so they are carried to the target's outbox."""
    if not waiting:
        return []
    if isinstance(source, QueuedReads):
        return source.queued_as_dead_letters("", lambda queue: queue == OUTBOX_QUEUE)
    raise BeatdError(
        f"{source.url} holds {waiting} run(s) not yet relayed to RabbitMQ ({OUTBOX_QUEUE}="
        f"{waiting}), which migrate cannot read from this backend: start one `beatd run` on "
        f"{source.url} until its relay has emptied the outbox (`beatd status`), stop it, then "
        "migrate again"
    )


def _queued_runs(
    source: Backend, depths: dict[str, int], as_dead_letters: bool
) -> list[DeadLetter]:
    """The runs queued on the source (`depths`: outside the outbox), as dead letters when
    asked; else none may be queued: they would be stranded there once the workers move."""
    if not depths:
        return []
    if as_dead_letters and isinstance(source, SQLiteBackend):
        reason = QUEUED_REASON.format(source=source.url)
        return source.queued_as_dead_letters(reason, lambda queue: queue != OUTBOX_QUEUE)
    if as_dead_letters:
        bad_option("--queued-as-dead-letters", f"reads a SQLite source only, not {source.url}")
    waiting = " ".join(f"{queue}={n}" for queue, n in sorted(depths.items()))
    raise BeatdError(
        f"{source.url} still holds {sum(depths.values())} undone run(s) ({waiting}); once the "
        "workers use the target, no worker would run them: stop every `beatd run`, let the "
        f"workers on {source.url} finish them, then migrate again; or, if no worker can (a "
        "damaged file), add --queued-as-dead-letters to copy them as dead letters"
    )
