"""The console's only way to data: the public API's routes, called in process.

`ApiCaller(app, request)` finds a route by its name (the OpenAPI operationId), builds its URL
with Flask's `url_for`, and runs the API's WSGI application on a fresh environ carrying the
incoming request's Host (so the API's Host check applies) and, when someone is signed in, the
session's token in `environ["beatd.session_token"]` (beatd.http.app.SESSION_TOKEN): the API
checks the route's scope and records actions under the token's name exactly as for a bearer
token. Nothing is reached around the API, so a page shows what `curl` would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Request, current_app, request, url_for
from werkzeug.test import EnvironBuilder, run_wsgi_app

from beatd.http.app import NOT_MODIFIED, SESSION_TOKEN

CONSOLE_TOKEN = "beatd.console.token"  # environ key: the signed-in session's ApiToken, if any
Query = Mapping[str, str | int | bool | Sequence[str] | None]


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """An API answer: its status, its JSON body (None when empty) and its headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The API's `errors` list of a refusal (empty for a success)."""
        if self.ok or not isinstance(self.body, dict):
            return []
        return list(self.body.get("errors", []))


class ApiFailure(Exception):
    """A GET the API refused: its status and the API's `{"errors": [...]}` list, whose messages
    a page shows as they are."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        self.status = status
        self.errors = errors
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(str(e.get("message", "")) for e in self.errors) or f"HTTP {self.status}"


class ApiCaller:
    """Calls the API routes of `app` for the console request `request`."""

    def __init__(self, app: Flask, request: Request) -> None:
        self.app = app
        self.request = request

    def get(
        self, route_name: str, path: Mapping[str, str] | None = None, query: Query | None = None
    ) -> Any:
        """The JSON body of a GET route's answer; ApiFailure for anything but 2xx."""
        answer = self.call("GET", route_name, path, query=query)
        if not answer.ok:
            raise ApiFailure(answer.status, answer.errors)
        return answer.body

    def get_unless(
        self, route_name: str, tag: str | None, query: Query | None = None
    ) -> ApiAnswer | None:
        """A GET's answer, sent with If-None-Match `tag` (None: none): None when the API
        answers 304 (nothing changed since the answer of that ETag); ApiFailure for an
        answer other than 2xx and 304 (the token is checked either way)."""
        headers = {} if tag is None else {"If-None-Match": tag}
        answer = self.call("GET", route_name, query=query, headers=headers)
        if answer.status == NOT_MODIFIED:
            return None
        if not answer.ok:
            raise ApiFailure(answer.status, answer.errors)
        return answer

    def send(
        self,
        route_name: str,
        path: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        method: str | None = None,
    ) -> ApiAnswer:
        """The answer of a writing route (POST unless `method`: PUT, DELETE), refusals
        included: the page shows the API's own messages."""
        return self.call(method or self.method_of(route_name), route_name, path, body, headers)

    def method_of(self, route_name: str) -> str:
        """The method the route is served with (each route takes exactly one)."""
        try:
            rules = list(self.app.url_map.iter_rules(route_name))
        except KeyError:
            rules = []
        for rule in rules:
            methods = (rule.methods or set()) - {"HEAD", "OPTIONS"}
            if len(methods) == 1:
                return methods.pop()
        raise LookupError(f"the API has no route named {route_name!r}")

    def call(
        self,
        method: str,
        route_name: str,
        path: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        query: Query | None = None,
    ) -> ApiAnswer:
        values: dict[str, Any] = dict(path or {})
        url = url_for(route_name, **values)
        builder = EnvironBuilder(
            path=url,
            base_url=f"{self.request.scheme}://{self.request.host}{self.request.root_path}",
            method=method,
            query_string=encode_query(query),
            data=None if body is None else json.dumps(body),
            content_type=None if body is None else "application/json",
            headers=list((headers or {}).items()),
            environ_base={"REMOTE_ADDR": self.request.remote_addr or ""},
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        token = self.request.environ.get(CONSOLE_TOKEN)
        if token is not None:
            environ[SESSION_TOKEN] = token
        chunks, status, answer_headers = run_wsgi_app(self.app.wsgi_app, environ, buffered=True)
        data = b"".join(chunks)
        return ApiAnswer(
            int(status.split(" ", 1)[0]),
            json.loads(data) if data.strip() else None,
            dict(answer_headers.items()),
        )


def encode_query(query: Query | None) -> str:
    """`query` as a query string: None values left out, booleans as true/false, sequences as
    repeated parameters."""
    pairs: list[tuple[str, str]] = []
    for name, value in (query or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        elif isinstance(value, str | int):
            pairs.append((name, str(value)))
        else:
            pairs.extend((name, str(item)) for item in value)
    return urlencode(pairs)


def api() -> ApiCaller:
    """The caller for the console request being served."""
    return ApiCaller(current_app, request)
