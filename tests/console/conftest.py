"""The console under Flask's test client: `build_app` (the API and the console) on a real
backend (SQLite by default; `console_on` for another), a token file the test can change and
reread (as SIGHUP does), and a clock the test moves."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from beatd.backends import open_backend
from beatd.cli.api import allowed_hosts
from beatd.config import Config, load_config
from beatd.console.app import AddPages, register_console
from beatd.http import all_routes, build_app
from beatd.http.app import Access, create_app
from beatd.http.context import ApiContext
from beatd.http.tokens import NewToken, Scope, TokenSource, new_token
from tests.redis_server import RedisServer

HOST = "127.0.0.1:9479"
ORIGIN = f"http://{HOST}"
READER, WRITER = new_token("viewer", Scope.READ), new_token("ops", Scope.WRITE)
SCHEDULES = """
entries:
  nightly:
    task: reports.nightly
    cron: "0 3 * * *"
"""
T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


@dataclass
class Console:
    """A console app, its browser (a test client keeping cookies) and what the test controls."""

    app: Flask
    client: FlaskClient
    token_file: Path
    tokens: TokenSource
    context: ApiContext
    clock: list[datetime]
    refused: list[str] = field(default_factory=list)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, base_url=ORIGIN, **kwargs)

    def post(
        self, path: str, data: dict[str, str] | None = None, origin: str | None = ORIGIN
    ) -> TestResponse:
        headers = {} if origin is None else {"Origin": origin}
        return self.client.post(path, base_url=ORIGIN, data=data or {}, headers=headers)

    def sign_in(self, token: NewToken, next_page: str = "/ui/") -> TestResponse:
        return self.post("/ui/signin", {"token": token.token, "next": next_page})

    def csrf(self, page: str = "/ui/") -> str:
        """The CSRF token a page's forms carry."""
        found = re.search(r'name="csrf" value="([^"]*)"', self.get(page).text)
        assert found is not None, "the page has no form with a csrf field"
        return found.group(1)

    def write_tokens(self, *tokens: NewToken) -> None:
        """Replace the token file and reread it, as SIGHUP does."""
        self.token_file.write_text("".join(f"{t.line}\n" for t in tokens))
        self.token_file.chmod(0o600)
        self.tokens.reread()

    def move(self, seconds: float) -> None:
        self.clock[0] = datetime.fromtimestamp(self.clock[0].timestamp() + seconds, UTC)


def make_console(
    tmp_path: Path, broker: str, *, public_read: bool = False, extra: Sequence[AddPages] = ()
) -> Console:
    """The API and the console as `beatd run` serves them, with `extra` pages of the test's."""
    folder = tmp_path / "schedules"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s.yaml").write_text(SCHEDULES)
    config: Config = load_config([str(folder)])
    token_file = tmp_path / "api-tokens"
    token_file.write_text(f"{READER.line}\n{WRITER.line}\n")
    token_file.chmod(0o600)
    tokens = TokenSource(token_file)
    clock = [T0]
    context = ApiContext(lambda: open_backend(broker), lambda: config, now=lambda: clock[0])
    refused: list[str] = []
    hosts = allowed_hosts("127.0.0.1", 9479, ())
    access = Access(tokens, hosts, public_read, refused.append)
    if extra:
        app = create_app(all_routes(context), access)
        register_console(app, context, access, extra)
    else:
        app = build_app(context, access)
    return Console(app, app.test_client(), token_file, tokens, context, clock, refused)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture(params=["sqlite", "redis"])
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A real SQLite file, or a real Redis emptied after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'beatd.db'}"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    yield server.url
    server.client().flushall()


@pytest.fixture
def console(tmp_path: Path, broker: str) -> Iterator[Console]:
    made = make_console(tmp_path, broker)
    yield made
    made.context.close()


@pytest.fixture
def public_console(tmp_path: Path, broker: str) -> Iterator[Console]:
    made = make_console(tmp_path, broker, public_read=True)
    yield made
    made.context.close()
