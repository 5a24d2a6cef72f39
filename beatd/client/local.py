"""`beatd.Client` on a backend URL: beatd.operations on the backend itself, as the CLI does."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from beatd.backends import open_backend
from beatd.client.errors import ClientError, error_for
from beatd.config import Config, Entry
from beatd.errors import BeatdError
from beatd.history import HistoryQuery
from beatd.operations import entries as ops
from beatd.operations import entry_objects as shown
from beatd.operations.audit import audit_object
from beatd.operations.backfill import DEFAULT_MAX, backfill_range, plan_backfill, send
from beatd.operations.controls import (
    MAX_RECORDS,
    BadRequest,
    TriggerAsk,
    UnknownName,
    backend_now,
    find_entry,
    parse_until,
    pause,
    pause_object,
    resume,
    select_entries,
    trigger,
    trigger_words,
    whole_number,
)
from beatd.operations.history import read_history, record_object

T = TypeVar("T")


def operator() -> str:
    """Who writes, for the audit log, when the caller does not say: user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


class LocalTransport:
    def __init__(
        self, url: str, *, by: str | None, namespace: str, timeout: float, config: Config | None
    ) -> None:
        self.store = open_backend(url, namespace=namespace, op_timeout=timeout)
        self.config = config
        self.writing = ops.Writing.of(by or operator(), config)
        self.controls = LocalControls(self, config)

    def _do(self, step: Callable[[], T], *, conditional: bool = False) -> T:
        try:
            return step()
        except BeatdError as exc:
            refused = ops.refusal(exc, conditional=conditional)
            if refused is None:
                raise
            raise error_for(refused.status, refused.errors) from None

    def add(self, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return shown.entry_object(self._do(lambda: ops.add(self.store, name, fields, self.writing)))

    def add_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        added = self._do(lambda: ops.add_many(self.store, entries, self.writing))
        return [shown.entry_object(e) for e in added]

    def update(
        self, name: str, fields: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        changed = self._do(
            lambda: ops.update(self.store, name, fields, self.writing, if_version),
            conditional=True,
        )
        return shown.entry_object(changed)

    def replace(
        self, name: str, definition: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        stored = self._do(
            lambda: ops.replace(self.store, name, definition, self.writing, if_version),
            conditional=if_version is not None,
        )
        return shown.entry_object(stored)

    def remove(self, name: str, if_version: int | None) -> dict[str, Any]:
        removed = self._do(
            lambda: ops.remove(self.store, name, self.writing.by, if_version),
            conditional=if_version is not None,
        )
        return shown.entry_object(removed)

    def get(self, name: str) -> dict[str, Any]:
        return self._do(lambda: shown.get_entry(self.store, self.config, name))

    def list_page(
        self, after: str, limit: int, source: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        page = shown.list_entries(self.store, self.config, after=after, limit=limit, source=source)
        return page.entries, page.next_after

    def next_runs(self, name: str, count: int) -> list[str]:
        _number("count", count, shown.MAX_NEXT_RUNS)
        now = datetime.now(UTC)
        runs = self._do(lambda: shown.next_runs(self.store, self.config, name, count, now))
        return [run["slot"] for run in runs]

    def history(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        _number("limit", limit, MAX_RECORDS)
        page = read_history(self.store, HistoryQuery(entry, None, limit), frozenset())
        zones = (
            {} if self.config is None else {n: e.timezone for n, e in self.config.entries.items()}
        )
        return [record_object(record, zones, page.pauses) for record in page.records]

    def audit(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        _number("limit", limit, MAX_RECORDS)
        return [audit_object(record) for record in self.store.audit(entry, None, limit)]

    def trigger(self, name: str, ask: TriggerAsk) -> dict[str, Any]:
        return self.controls.trigger(name, ask)

    def pause(self, name: str, reason: str, until: str | None) -> dict[str, Any] | None:
        return self.controls.pause(name, reason, until)

    def resume(self, name: str) -> str:
        return self.controls.resume(name)

    def backfill(self, name: str, span: BackfillAsk) -> dict[str, Any]:
        return self.controls.backfill(name, span)

    def close(self) -> None:
        self.store.close()


class LocalControls:
    """Trigger, pause, resume and backfill on a backend URL, as the command line does them:
    on a runtime entry, or one of the schedule files the client was given."""

    def __init__(self, transport: LocalTransport, config: Config | None) -> None:
        self.store = transport.store
        self.by = transport.writing.by
        self.config = config

    def entry(self, name: str) -> Entry:
        try:
            return find_entry(self.config or Config({}), name)
        except UnknownName as exc:
            stored = self.store.get_entry(name)
            if stored is None:
                raise error_for(404, [_error(name, "name", exc.message)]) from None
            return stored.entry()

    def trigger(self, name: str, ask: TriggerAsk) -> dict[str, Any]:
        done = trigger(self.store, backend_now(self.store), self.entry(name), ask, self.by)
        words = trigger_words(done, name)
        if words.refused:
            raise error_for(409, [_error(name, None, words.note or "refused")])
        return {"run_id": words.run_id, "status": str(done.result.status), "message": words.note}

    def pause(self, name: str, reason: str, until: str | None) -> dict[str, Any] | None:
        known = [] if self.config is None else sorted(self.config.entries)
        if name not in known and self.store.get_entry(name) is not None:
            known.append(name)
        try:
            select_entries([name], False, None, known)  # the API's refusal of an unknown name
            end = None if until is None else parse_until(until, backend_now(self.store))
            paused = pause(self.store, [name], reason, end, self.by)
        except BadRequest as exc:
            raise _bad(exc) from None
        return pause_object(paused[name])

    def resume(self, name: str) -> str:
        self.entry(name)
        (said,) = resume(self.store, backend_now(self.store), [name], self.by)
        return said

    def backfill(self, name: str, span: BackfillAsk) -> dict[str, Any]:
        entry = self.entry(name)
        try:
            asked = backfill_range(entry, span.start, span.end, span.most)
            runs = plan_backfill(self.store, entry, asked, span.history_max_age)
        except BadRequest as exc:
            raise _bad(exc) from None
        if span.dry_run:
            listed: list[dict[str, Any]] = [{"id": run.id, "published": None} for run in runs]
            return {"runs": listed, "published": None, "already_there": None, "dry_run": True}
        published = send(self.store, entry, runs, None, self.by, asked)
        listed = [{"id": run.id, "published": run.id in published} for run in runs]
        already = len(runs) - len(published)
        return {
            "runs": listed,
            "published": len(published),
            "already_there": already,
            "dry_run": False,
        }


class BackfillAsk(NamedTuple):
    start: str
    end: str
    dry_run: bool = False
    most: int = DEFAULT_MAX
    history_max_age: timedelta = timedelta(days=30)  # `beatd run`'s default retention


def _error(entry: str, field: str | None, message: str) -> dict[str, Any]:
    pointer = None if field is None else f"/{field}"
    return {"entry": entry, "field": field, "message": message, "pointer": pointer}


def _bad(exc: BadRequest) -> ClientError:
    """As the API answers a BadRequest: 404 for an unknown name, else 422."""
    status = 404 if isinstance(exc, UnknownName) else 422
    return error_for(status, [{"entry": None, "field": exc.field, "message": exc.message,
                               "pointer": f"/{exc.field}"}])  # fmt: skip


def _number(field: str, value: int, high: int) -> None:
    """A count the API would refuse (from 1 to `high`), refused in its words."""
    try:
        whole_number(field, value, 1, high)
    except BadRequest as exc:
        raise _bad(exc) from None
