"""The entries `beatd next` and `beatd check` know (issue 18): the schedule files', and with a
backend (--broker / BEATD_BROKER) its runtime entries, as the leader plans them: a runtime entry
named like a file entry is left out (the file wins), and such a file entry is the configuration
error the scheduler reports, in its words (`beatd.entry_feed.name_clashes`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import click

from beatd.backends import Backend
from beatd.cli.common import BackendSettings, open_broker
from beatd.config import Entry
from beatd.entry_feed import name_clashes
from beatd.errors import ConfigError
from beatd.runtime_entries import RuntimeEntry

PAGE = 1000
FILES_ONLY = "only the schedule files' entries are shown, not runtime entries"


def open_runtime(settings: BackendSettings | None) -> Backend | None:
    """The backend to read runtime entries from, read-only; None without --broker."""
    return None if settings is None else open_broker(settings, read_only=True, create=False)


def source_of(entry: Entry) -> str:
    """`api` for a runtime entry, the file for a file entry (its line left out)."""
    return entry.source.rpartition(":")[0] or entry.source


def runtime_entry(store: Backend, name: str) -> Entry | None:
    """The runtime entry `name`, if the backend holds one this beatd can build."""
    stored = store.get_entry(name)
    return None if stored is None else _built(stored)


def runtime_entries(store: Backend, files: Mapping[str, Entry]) -> Iterator[list[Entry]]:
    """The runtime entries by name, a page at a time, but those named like a file entry."""
    after = ""
    while True:
        page = store.list_entries(after, PAGE)
        built = (_built(s) for s in page if s.name not in files)
        yield [entry for entry in built if entry is not None]
        if len(page) < PAGE:
            return
        after = page[-1].name


def file_clashes(store: Backend, files: Mapping[str, Entry]) -> ConfigError | None:
    """The configuration error of file entries whose names runtime entries have: one read per
    file entry, as the leader's check costs work in proportion to the files."""
    return name_clashes(files, [name for name in files if store.get_entry(name) is not None])


def _built(stored: RuntimeEntry) -> Entry | None:
    try:
        return stored.entry()
    except ConfigError as exc:  # a definition written by a newer beatd
        click.echo(
            f"beatd: warning: runtime entry {stored.name} (version {stored.version}) cannot be "
            f"read by this beatd and is left out: {exc}",
            err=True,
        )
        return None
