"""`beatd.Client` on a backend URL: beatd.operations on the backend itself, as the CLI does."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from beatd.backends import open_backend
from beatd.client.errors import error_for
from beatd.errors import BeatdError
from beatd.history import HistoryQuery
from beatd.operations import entries as ops
from beatd.operations.audit import audit_object
from beatd.operations.history import read_history, record_object

T = TypeVar("T")


def operator() -> str:
    """Who writes, for the audit log, when the caller does not say: user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


class LocalTransport:
    def __init__(self, url: str, *, by: str | None, namespace: str, timeout: float) -> None:
        self.store = open_backend(url, namespace=namespace, op_timeout=timeout)
        self.writing = ops.Writing(by or operator())

    def _do(self, step: Callable[[], T], *, conditional: bool = False) -> T:
        try:
            return step()
        except BeatdError as exc:
            refused = ops.refusal(exc, conditional=conditional)
            if refused is None:
                raise
            raise error_for(refused.status, refused.errors) from None

    def add(self, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return ops.entry_object(self._do(lambda: ops.add(self.store, name, fields, self.writing)))

    def add_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        added = self._do(lambda: ops.add_many(self.store, entries, self.writing))
        return [ops.entry_object(e) for e in added]

    def update(
        self, name: str, fields: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        changed = self._do(
            lambda: ops.update(self.store, name, fields, self.writing, if_version),
            conditional=True,
        )
        return ops.entry_object(changed)

    def replace(
        self, name: str, definition: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        stored = self._do(
            lambda: ops.replace(self.store, name, definition, self.writing, if_version),
            conditional=if_version is not None,
        )
        return ops.entry_object(stored)

    def remove(self, name: str, if_version: int | None) -> dict[str, Any]:
        removed = self._do(
            lambda: ops.remove(self.store, name, self.writing.by, if_version),
            conditional=if_version is not None,
        )
        return ops.entry_object(removed)

    def get(self, name: str) -> dict[str, Any]:
        return self._do(lambda: ops.get_entry(self.store, None, name))

    def list_page(
        self, after: str, limit: int, source: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        page = ops.list_entries(self.store, None, after=after, limit=limit, source=source)
        return page.entries, page.next_after

    def next_runs(self, name: str, count: int) -> list[str]:
        now = datetime.now(UTC)
        return self._do(lambda: ops.next_runs(self.store, None, name, count, now))

    def history(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        page = read_history(self.store, HistoryQuery(entry, None, limit), frozenset())
        return [record_object(record, {}) for record in page.records]

    def audit(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        return [audit_object(record) for record in self.store.audit(entry, None, limit)]

    def close(self) -> None:
        self.store.close()
