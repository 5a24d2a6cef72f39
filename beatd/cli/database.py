"""`beatd db upgrade`: create or upgrade beatd's schema in a database before any daemon starts
(PostgreSQL); SQLite and Redis are upgraded by the leader as it takes the lease."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import click

from beatd.cli.common import (
    BackendSettings,
    LogSettings,
    backend_options,
    fail,
    logging_options,
    main,
    open_broker,
)
from beatd.errors import BeatdError
from beatd.service import setup_logging


@runtime_checkable
class OwnsSchema(Protocol):
    """A backend whose tables beatd creates and upgrades in a schema of their own."""

    where: str  # the schema and the database, for messages
    format_found: int  # the format the schema held when this handle opened it
    format_known: int  # the format this beatd writes

    def upgrade(self) -> int:
        """Bring the schema to this beatd's format; the format found before."""


@main.group()
def db() -> None:
    """Look after beatd's schema in the broker's database."""


@db.command(name="upgrade")
@backend_options
@logging_options("warning")  # what was done is the command's output
def db_upgrade(backend: BackendSettings, log: LogSettings) -> None:
    """Create beatd's schema, or upgrade it to this beatd's format (PostgreSQL).

    Run it as a role that may create in the database, before daemons whose role may not; a
    schema in a newer format than this beatd knows is refused (exit status 2)."""
    setup_logging(log.level, log.format)
    store = open_broker(backend)  # opening upgrades a schema the role may change
    try:
        if not isinstance(store, OwnsSchema):
            click.echo(
                f"{store.url}: nothing to do here; the leader upgrades it as it takes the lease"
            )
            return
        store.upgrade()  # again: another host may have written a newer format since
        found, known = store.format_found, store.format_known
        if found == known:
            click.echo(f"{store.where}: at format {known}, nothing to upgrade")
        else:
            click.echo(f"{store.where}: upgraded from format {found} to {known}")
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
