"""`beatd.Client` on an http(s):// URL: the HTTP API (docs/api.md) through urllib, with a
token. Every refusal arrives as `{"errors": [...]}` and is raised as its ClientError."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

from beatd.client.errors import ClientError, error_for
from beatd.client.local import BackfillAsk
from beatd.operations.controls import TriggerAsk
from beatd.operations.entries import merged_definition, refusal
from beatd.runtime_entries import VersionMismatch

Query = Mapping[str, str | int | None]
# A batch over HTTP: entries per request (about 560 KiB of a few fields each, under the API's
# 1 MiB), and requests in flight at once.
REQUEST_ENTRIES = 5000
IN_FLIGHT = 3


class RemoteTransport:
    request_entries: int = REQUEST_ENTRIES
    in_flight: int = IN_FLIGHT

    def __init__(self, url: str, *, token: str | None, timeout: float) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Query | None = None,
        if_match: int | None = None,
    ) -> Any:
        wanted = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.base + path + (f"?{urlencode(wanted)}" if wanted else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        if if_match is not None:
            request.add_header("If-Match", f'"{if_match}"')
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None

    def add(self, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.call("POST", "/v1/entries", {"name": name, **fields})
        return created

    def add_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """One request per `request_entries` entries (each all or none), `in_flight` at once:
        the server validates one while the backend writes another."""
        step = self.request_entries
        parts = [(i, entries[i : i + step]) for i in range(0, len(entries), step)]
        if len(parts) <= 1:
            return self._add_part(0, entries)
        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="beatd-client") as pool:
            done = list(pool.map(lambda part: self._try_part(*part), parts))
        refused = [d for d in done if isinstance(d, ClientError)]
        if refused:
            written = [e["name"] for d in done if not isinstance(d, ClientError) for e in d]
            raise _partly(refused, written, len(entries))
        return [e for d in done if not isinstance(d, ClientError) for e in d]

    def _add_part(
        self, offset: int, entries: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        body = {"entries": [{"name": name, **fields} for name, fields in entries]}
        try:
            created: list[dict[str, Any]] = self.call("POST", "/v1/entries/batch", body)["entries"]
        except ClientError as exc:
            if offset == 0:
                raise
            raise error_for(exc.status, [_shifted(e, offset) for e in exc.errors]) from None
        return created

    def _try_part(
        self, offset: int, entries: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]] | ClientError:
        try:
            return self._add_part(offset, entries)
        except ClientError as exc:
            return exc

    def update(
        self, name: str, fields: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        current = self.get(name)
        if current["version"] is None:  # a file entry: the server names the file to edit
            return self.replace(name, merged_definition(current["definition"], fields), None)
        if if_version is not None and if_version != current["version"]:
            mismatch = VersionMismatch(name, if_version, current["version"])
            refused = refusal(mismatch, conditional=True)
            assert refused is not None
            raise error_for(refused.status, refused.errors)
        merged = merged_definition(current["definition"], fields)
        return self.replace(name, merged, current["version"])

    def replace(
        self, name: str, definition: Mapping[str, Any], if_version: int | None
    ) -> dict[str, Any]:
        stored: dict[str, Any] = self.call(
            "PUT", _entry_path(name), dict(definition), if_match=if_version
        )
        return stored

    def remove(self, name: str, if_version: int | None) -> dict[str, Any]:
        removed: dict[str, Any] = self.call("DELETE", _entry_path(name), if_match=if_version)
        return removed

    def get(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", _entry_path(name))
        return found

    def list_page(
        self, after: str, limit: int, source: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        query = {"after": after or None, "limit": limit, "source": source}
        page = self.call("GET", "/v1/entries", query=query)
        return page["entries"], page["next_after"]

    def next_runs(self, name: str, count: int) -> list[str]:
        found = self.call("GET", f"/v1/next-runs/{quote(name, safe='')}", query={"count": count})
        slots: list[str] = found["slots"]
        return slots

    def history(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        records = self.call("GET", "/v1/history", query={"entry": entry, "limit": limit})
        found: list[dict[str, Any]] = records["records"]
        return found

    def audit(self, entry: str | None, limit: int) -> list[dict[str, Any]]:
        records = self.call("GET", "/v1/audit", query={"entry": entry, "limit": limit})
        found: list[dict[str, Any]] = records["records"]
        return found

    def trigger(self, name: str, ask: TriggerAsk) -> dict[str, Any]:
        given = {
            "args": ask.args,
            "kwargs": None if ask.kwargs is None else dict(ask.kwargs),
            "idempotency_key": ask.idempotency_key,
            "force": ask.force or None,
        }
        body = {key: value for key, value in given.items() if value is not None}
        done: dict[str, Any] = self.call("POST", _entry_path(name) + "/trigger", body)
        return done

    def pause(self, name: str, reason: str, until: str | None) -> dict[str, Any] | None:
        body = {"reason": reason} if until is None else {"reason": reason, "until": until}
        paused: dict[str, Any] | None = self.call("POST", _entry_path(name) + "/pause", body)[
            "paused"
        ][name]
        return paused

    def resume(self, name: str) -> str:
        (said,) = self.call("POST", _entry_path(name) + "/resume", {})["said"]
        return str(said)

    def backfill(self, name: str, span: BackfillAsk) -> dict[str, Any]:
        body = {"from": span.start, "to": span.end, "dry_run": span.dry_run, "max": span.most}
        done: dict[str, Any] = self.call("POST", _entry_path(name) + "/backfill", body)
        return done

    def close(self) -> None:
        """Nothing held open: each call is its own connection."""


def _shifted(error: Mapping[str, Any], offset: int) -> dict[str, Any]:
    """A batch request's error with its pointer into the whole batch (`/entries/N/...`)."""
    pointer = error.get("pointer")
    if not isinstance(pointer, str) or not pointer.startswith("/entries/"):
        return dict(error)
    index, _, rest = pointer[len("/entries/") :].partition("/")
    if not index.isdigit():
        return dict(error)
    return {**error, "pointer": f"/entries/{int(index) + offset}" + (f"/{rest}" if rest else "")}


def _partly(refused: Sequence[ClientError], written: Sequence[str], total: int) -> ClientError:
    """The first refusal among a batch's requests, saying what its other requests wrote."""
    first = refused[0]
    errors = [e for r in refused for e in r.errors]
    if written:
        message = (
            f"{len(written)} of the batch's {total} entries were written by its other requests "
            f"(first {written[0]}, last {written[-1]}), the other {total - len(written)} were not: "
            "add those again"
        )
        errors.append({"entry": None, "field": None, "message": message, "pointer": None})
    return error_for(first.status, errors)


def _entry_path(name: str) -> str:
    return f"/v1/entries/{quote(name, safe='')}"


def _refusal(error: urllib.error.HTTPError) -> ClientError:
    text = error.read()
    try:
        errors = json.loads(text)["errors"]
    except (ValueError, KeyError, TypeError):
        errors = [{"entry": None, "field": None, "message": f"HTTP {error.code}: {text[:200]!r}"}]
    return error_for(error.code, errors)
