"""`beatd entries`: runtime entries (issue 18) from the command line, as the HTTP API and
`beatd.Client` write them (all three stand on beatd.operations.entries).

Bad input (a field `beatd check` would refuse, with the same words) exits 2 naming the entry
and the field, and the file's line for `--from-yaml`; a name taken or a version conflict exits
1. Each write is recorded in the audit log under `--by` (self-declared, as for the controls).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from beatd.backends import Backend
from beatd.cli.common import (
    EXIT_RUNTIME,
    SCHEDULE_FLAGS,
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
    read_optional_config,
    schedule_options,
)
from beatd.cli.controls import BY_HELP, default_by
from beatd.cli.entry_flags import field_flags
from beatd.config import Config
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.errors import BeatdError
from beatd.operations import entries as ops
from beatd.operations import entry_objects as shown
from beatd.operations.entries_files import FileDefinitions, write_export
from beatd.runtime_entries import FileEntryReadOnly, InvalidEntry, RuntimeEntry, UnknownEntry
from beatd.service import setup_logging

T = TypeVar("T")
BY_FLAG = click.option("--by", metavar="NAME", help=BY_HELP)
# --schedules: the queues' protocols (for an entry giving none) and the file entries' names
QUEUES_FLAG = SCHEDULE_FLAGS[0]


@main.group()
def entries() -> None:
    """Add, change, remove, list and export runtime entries: entries kept in the backend
    rather than in schedule files (docs/api.md)."""


def _writing(by: str | None, schedules: tuple[str, ...]) -> ops.Writing:
    settings = ScheduleSettings(schedules, "UTC", DEFAULT_MAX_BYTES, None)
    return ops.Writing.of(by or default_by(), read_optional_config(settings))


def _with_store(backend: BackendSettings, step: Callable[[Backend], T], **how: Any) -> T:
    store = open_broker(backend, **how)
    try:
        return step(store)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()


@entries.command(name="add")
@backend_options
@logging_options()
@click.argument("name", required=False)
@field_flags
@click.option(
    "--from-yaml",
    metavar="FILE",
    help="Add every entry of a schedule file (such as `beatd entries export` writes), all or "
    "none, instead of one entry from the flags.",
)
@BY_FLAG
@QUEUES_FLAG
def entries_add(
    backend: BackendSettings,
    log: LogSettings,
    name: str | None,
    fields: dict[str, Any],
    from_yaml: str | None,
    by: str | None,
    schedules: tuple[str, ...],
) -> None:
    """Add a runtime entry NAME with a flag for each field, as a schedule file gives them (or
    every entry of --from-yaml FILE); the schedule files' queues say an entry's protocol when
    it gives none."""
    setup_logging(log.level, log.format)
    writing = _writing(by, schedules)
    if from_yaml is not None:
        if name is not None or fields:
            bad_option("--from-yaml", "give a FILE or a NAME with its field flags, not both")
        _add_from_yaml(backend, from_yaml, writing)
        return
    if name is None:
        bad_option("NAME", "give the entry's name and its fields (or --from-yaml FILE)")
    added = _with_store(backend, lambda store: ops.add(store, name, fields, writing))
    click.echo(f"added {added.name} (version {added.version})")


def _add_from_yaml(backend: BackendSettings, path: str, writing: ops.Writing) -> None:
    try:
        found = FileDefinitions(path)
    except BeatdError as exc:
        fail(exc)
    writing = writing._replace(queues={**(writing.queues or {}), **found.queues})

    def add_all(store: Backend) -> list[RuntimeEntry]:
        try:
            return ops.add_many(store, list(found.items()), writing)
        except InvalidEntry as exc:
            fail(found.located(exc))

    added = _with_store(backend, add_all)
    click.echo(f"added {_count(len(added))} from {path}")


@entries.command(name="set")
@backend_options
@logging_options()
@click.argument("name")
@field_flags
@click.option(
    "--if-version",
    type=int,
    metavar="N",
    help="Change the entry only if it is at version N (as `entries list` shows it).",
)
@BY_FLAG
@QUEUES_FLAG
def entries_set(
    backend: BackendSettings,
    log: LogSettings,
    name: str,
    fields: dict[str, Any],
    if_version: int | None,
    by: str | None,
    schedules: tuple[str, ...],
) -> None:
    """Change the given fields of the runtime entry NAME, keeping the others; a new schedule
    (--every, --cron or --at) replaces the old one and what was derived from it."""
    setup_logging(log.level, log.format)
    if not fields:
        bad_option("NAME", f"give the fields of {name} to change, such as --every 1h")
    writing = _writing(by, schedules)
    changed = _with_store(
        backend, lambda store: ops.update(store, name, fields, writing, if_version)
    )
    click.echo(f"changed {changed.name} (version {changed.version})")


@entries.command(name="rm")
@backend_options
@logging_options()
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@BY_FLAG
def entries_rm(
    backend: BackendSettings, log: LogSettings, names: tuple[str, ...], by: str | None
) -> None:
    """Remove runtime entries; the leader stops publishing them at once. Each name that cannot
    be removed is said why, the others are removed (exit 1 if any could not be)."""
    setup_logging(log.level, log.format)
    who = by or default_by()

    def remove_all(store: Backend) -> list[BeatdError]:
        refused: list[BeatdError] = []
        for name in names:
            try:
                removed = ops.remove(store, name, who)
            except (UnknownEntry, FileEntryReadOnly) as exc:
                refused.append(exc)
                continue
            click.echo(f"removed {removed.name} (version {removed.version})")
        return refused

    refused = _with_store(backend, remove_all, create=False)
    for error in refused:
        click.echo(str(error), err=True)
    if refused:
        sys.exit(EXIT_RUNTIME)


@entries.command(name="list")
@schedule_options
@backend_options
@logging_options()
@click.option(
    "--source",
    type=click.Choice(shown.SOURCES),
    help="Only runtime entries (api) or only the schedule files' (file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entry objects.")
def entries_list(
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
    source: str | None,
    as_json: bool,
) -> None:
    """List runtime entries and the schedule files' entries by name, with their source and
    version (--json: every field, and when and by whom each was written)."""
    setup_logging(log.level, log.format)
    config = read_optional_config(schedule) if source != "api" else None
    found = _with_store(
        backend, lambda store: list(_every_entry(store, config, source)), read_only=True
    )
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [("NAME", "SOURCE", "VERSION", "SCHEDULE", "TASK")]
    rows += [
        (e["name"], e["source"], str(e["version"] or "-"), _schedule(e), e["definition"]["task"])
        for e in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    click.echo(_count(len(found)))


def _every_entry(
    store: Backend, config: Config | None, source: str | None
) -> Iterator[dict[str, Any]]:
    after: str | None = ""
    while after is not None:
        page = shown.list_entries(store, config, after=after, limit=1000, source=source)
        yield from page.entries
        after = page.next_after


def _schedule(entry: dict[str, Any]) -> str:
    definition = entry["definition"]
    for field in ("every", "cron", "at"):
        if field in definition:
            return f"{field} {definition[field]}"
    return "-"


@entries.command(name="export")
@backend_options
@logging_options()
@click.option(
    "--out",
    metavar="DIR",
    default=".",
    show_default=True,
    help="Write entries-0001.yaml, entries-0002.yaml, ... here.",
)
@click.option(
    "--max-file-size",
    envvar="BEATD_MAX_FILE_SIZE",
    type=int,
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Start a new file before one would grow larger than this many bytes.",
)
def entries_export(
    backend: BackendSettings, log: LogSettings, out: str, max_file_size: int
) -> None:
    """Write every runtime entry to schedule files that `beatd check` accepts and
    `beatd entries add --from-yaml` adds back as the same entries."""
    setup_logging(log.level, log.format)
    found = _with_store(backend, shown.all_runtime_entries, read_only=True)
    for path in write_export(found, Path(out), max_file_size):
        click.echo(str(path))
    click.echo(f"exported {_count(len(found))}")


def _count(number: int) -> str:
    return f"{number} entry" if number == 1 else f"{number} entries"
