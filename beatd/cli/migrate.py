"""`beatd migrate`: copy the run state and dead letters to another backend (SQLite to Redis)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import click

from beatd.backends import Backend
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
@click.option("--namespace", **NAMESPACE_FLAG)
@logging_options("warning", with_format=False)
def migrate(source_url: str, target_url: str, namespace: str, log: LogSettings) -> None:
    """Copy every entry's last published slot and the dead letters to another backend.

    Stop every `beatd run` on both sides first, and let the workers finish the runs already
    queued on the source. Then start every `beatd run` and `beatd worker` with the new
    --broker: each entry goes on from the slot after its last published one, so no run is
    repeated or skipped. The source is only read; running the copy again adds nothing twice.
    """
    setup_logging(log.level, log.format)
    if source_url == target_url:
        bad_option("--to", f"is the same backend as --from ({source_url!r})")
    _require_existing_sqlite("--from", source_url)
    # what is readable, even if damaged
    source = open_broker(BackendSettings(source_url, namespace), read_only=True)
    target = open_broker(BackendSettings(target_url, namespace))
    try:
        _refuse_undone_runs(source)
        report = migrate_states(source, target)
    except BeatdError as exc:
        fail(exc)
    finally:
        source.close()
        target.close()
    click.echo(
        f"copied {report.states} state(s), {report.dead_letters} dead letter(s); skipped "
        f"{report.skipped} already on the target"
    )


def _require_existing_sqlite(option: str, url: str) -> None:
    """Opening a missing SQLite file would create an empty one and move nothing."""
    if urlsplit(url).scheme != "sqlite":
        return
    path = url.removeprefix("sqlite:///")
    if path and not os.path.exists(path):
        bad_option(option, f"no database at {path} (from {url}); check the path")


def _refuse_undone_runs(source: Backend) -> None:
    """Runs still queued on the source would be stranded there once the workers move."""
    depths = source.queue_depths()
    if depths:
        waiting = " ".join(f"{queue}={n}" for queue, n in sorted(depths.items()))
        raise BeatdError(
            f"{source.url} still holds {sum(depths.values())} undone run(s) ({waiting}); "
            "after the move no worker would run them: stop every `beatd run`, let the workers "
            f"on {source.url} finish them, then migrate again"
        )
