"""`beatd.Client`: runtime entries (issue 18) from Python, on a backend URL or the HTTP API.

    from beatd import Client

    with Client("redis://127.0.0.1:6379/0") as beat:        # or Client(url, token=...) for
        beat.add("report-acme", task="reports.run",          # http(s)://HOST:9479
                 cron="0 9 * * *", timezone="Europe/Paris", kwargs={"tenant": "acme"})
        beat.update("report-acme", cron="30 9 * * *")
        beat.next_runs("report-acme", 3)

A backend URL (sqlite://, redis://, postgresql://, memory://) writes through beatd.operations
as `beatd entries` does; an http(s):// URL asks a `beatd run`'s API with a token. Both give the
same entry objects (docs/api.md) and raise the same ClientError, with the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

from beatd.client.errors import (
    ClientError,
    Conflict,
    InvalidRequest,
    NotAllowed,
    NotFound,
    TooLarge,
    VersionConflict,
)
from beatd.client.local import BackfillAsk
from beatd.config import load_config
from beatd.operations.controls import TriggerAsk

EntryObject = dict[str, Any]  # name, source, version, definition, created/updated at and by
__all__ = [
    "Client",
    "ClientError",
    "Conflict",
    "EntryObject",
    "InvalidRequest",
    "NotAllowed",
    "NotFound",
    "TooLarge",
    "VersionConflict",
]


class _Transport(Protocol):
    def add(self, name: str, fields: Mapping[str, Any]) -> EntryObject: ...
    def add_many(self, entries: list[tuple[str, Mapping[str, Any]]]) -> list[EntryObject]: ...
    def update(
        self, name: str, fields: Mapping[str, Any], if_version: int | None
    ) -> EntryObject: ...
    def replace(
        self, name: str, definition: Mapping[str, Any], if_version: int | None
    ) -> EntryObject: ...
    def remove(self, name: str, if_version: int | None) -> EntryObject: ...
    def get(self, name: str) -> EntryObject: ...
    def list_page(
        self, after: str, limit: int, source: str | None
    ) -> tuple[list[EntryObject], str | None]: ...
    def next_runs(self, name: str, count: int) -> list[str]: ...
    def history(self, entry: str | None, limit: int) -> list[dict[str, Any]]: ...
    def audit(self, entry: str | None, limit: int) -> list[dict[str, Any]]: ...
    def trigger(self, name: str, ask: TriggerAsk) -> dict[str, Any]: ...
    def pause(self, name: str, reason: str, until: str | None) -> dict[str, Any] | None: ...
    def resume(self, name: str) -> str: ...
    def backfill(self, name: str, span: BackfillAsk) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Client:
    """Runtime entries, their next runs, the run history and the audit log.

    `url`: a backend URL, or the HTTP API's (`token`: a token of `beatd api token`, write
    scope to write). `by`: who writes, for the audit log, on a backend URL (default
    user@host; the API records the token's name). `timeout`: seconds per call. `schedules`:
    on a backend URL, schedule files whose entries `get`, `list` and the controls see too
    (over HTTP, the serving daemon's are)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        by: str | None = None,
        namespace: str = "beatd",
        timeout: float = 10.0,
        schedules: Sequence[str] = (),
    ) -> None:
        self._transport: _Transport
        if url.startswith(("http://", "https://")):
            from beatd.client.remote import RemoteTransport

            self._transport = RemoteTransport(url, token=token, timeout=timeout)
        else:
            from beatd.client.local import LocalTransport

            config = load_config(list(schedules)) if schedules else None
            self._transport = LocalTransport(
                url, by=by, namespace=namespace, timeout=timeout, config=config
            )

    def add(self, name: str, **fields: Any) -> EntryObject:
        """Create the runtime entry `name` with the fields of a schedule file's entry
        (`task=`, one of `every=`, `cron=`, `at=`, ...). Conflict when the name exists or is a
        file entry's; InvalidRequest for a field `beatd check` would refuse."""
        return self._transport.add(name, fields)

    def add_many(self, entries: Mapping[str, Mapping[str, Any]]) -> list[EntryObject]:
        """Create every entry of `entries` (name -> fields), or none of them if one is refused
        (docs/api.md, Bulk imports: Redis writes in steps, and over HTTP a batch above 5,000
        entries goes as several requests, each all or none)."""
        return self._transport.add_many(list(entries.items()))

    def update(self, name: str, *, if_version: int | None = None, **fields: Any) -> EntryObject:
        """Change the given fields of `name`, keeping the others (a new schedule replaces the
        old and what was derived from it); VersionConflict when `if_version` is given and the
        entry is at another, or when it changed between the read and the write."""
        return self._transport.update(name, fields, if_version)

    def replace(
        self, name: str, definition: Mapping[str, Any], *, if_version: int | None = None
    ) -> EntryObject:
        """Replace the whole definition of `name` (create it when there is none and no
        `if_version`)."""
        return self._transport.replace(name, definition, if_version)

    def remove(self, name: str, *, if_version: int | None = None) -> EntryObject:
        """Remove the runtime entry `name`; the entry as it was. NotFound when there is none."""
        return self._transport.remove(name, if_version)

    def get(self, name: str) -> EntryObject:
        """The entry `name`: every field, its source, version, and who wrote it when."""
        return self._transport.get(name)

    def iter(self, *, source: str | None = None, page_size: int = 1000) -> Iterable[EntryObject]:
        """`list`, a page at a time."""
        after: str | None = ""
        while after is not None:
            page, after = self._transport.list_page(after, page_size, source)
            yield from page

    def next_runs(self, name: str, n: int = 5) -> list[datetime]:
        """The next `n` slots of `name` from now, aware UTC."""
        slots = self._transport.next_runs(name, n)
        return [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in slots]

    def history(self, entry: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs and missed slots (of `entry`), as `beatd history --json` prints."""
        return self._transport.history(entry, limit)

    def audit(self, entry: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest audit records (of `entry`), as `beatd audit --json` prints them."""
        return self._transport.audit(entry, limit)

    def trigger(
        self,
        name: str,
        *,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Publish one manual run of `name` now, as `beatd trigger` does: `{"run_id",
        "status", "message"}`; Conflict when refused (paused, busy), naming why."""
        ask = TriggerAsk(None if args is None else list(args), kwargs, idempotency_key, force)
        return self._transport.trigger(name, ask)

    def pause(self, name: str, reason: str, *, until: str | None = None) -> dict[str, Any] | None:
        """Pause `name` (`until`: a duration such as 8h, or an ISO time with an offset): the
        pause as stored, `{"at", "until", "reason", "by"}`."""
        return self._transport.pause(name, reason, until)

    def resume(self, name: str) -> str:
        """Lift the pause of `name`: what was done, in `beatd resume`'s words."""
        return self._transport.resume(name)

    def backfill(
        self, name: str, start: str, end: str, *, dry_run: bool = False, max_runs: int = 1000
    ) -> dict[str, Any]:
        """Publish the slots of `name` from `start` to `end` (ISO times, without an offset in
        the entry's zone) that were not published, as `beatd backfill` does: `{"runs",
        "published", "already_there", "dry_run"}`."""
        return self._transport.backfill(name, BackfillAsk(start, end, dry_run, max_runs))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def list(self, *, source: str | None = None, page_size: int = 1000) -> list[EntryObject]:
        """Every entry by name (`source`: "api" or "file"; over HTTP the file entries are the
        serving daemon's, on a backend URL there are none to read)."""
        return _all(self.iter(source=source, page_size=page_size))


def _all(entries: Iterable[EntryObject]) -> list[EntryObject]:
    return list(entries)
