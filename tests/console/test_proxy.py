"""Behind a reverse proxy that terminates TLS: with --api-trusted-proxy, the proxy's
X-Forwarded-Proto makes the request https, so the session cookie is Secure and the browser's
https Origin is the console's own; from anyone else the header is dropped. A real waitress
server on a free loopback port, asked with http.client."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from beatd.backends import open_backend
from beatd.cli.api import allowed_hosts
from beatd.http import build_app
from beatd.http.app import Access
from beatd.http.context import ApiContext
from beatd.http.server import ApiServer, ServerSettings
from beatd.http.tokens import TokenSource
from tests.console.conftest import WRITER

PUBLIC_NAME = "beatd.example.com"


def serve(tmp_path: Path, trusted_proxy: str | None) -> ApiServer:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(WRITER.line + "\n")
    tokens.chmod(0o600)
    context = ApiContext(lambda: open_backend(f"sqlite:///{tmp_path / 'beatd.db'}"), lambda: None)
    access = Access(TokenSource(tokens), allowed_hosts("127.0.0.1", 0, (PUBLIC_NAME,)))
    settings = ServerSettings("127.0.0.1", 0, threads=1, trusted_proxy=trusted_proxy)
    return ApiServer(build_app(context, access), settings).start()


def sign_in_through_the_proxy(server: ApiServer) -> http.client.HTTPResponse:
    """What nginx sends for a browser at https://beatd.example.com signing in."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = urlencode({"token": WRITER.token, "next": "/ui/"})
    connection.request(
        "POST",
        "/ui/signin",
        body,
        {
            "Host": PUBLIC_NAME,
            "Origin": f"https://{PUBLIC_NAME}",
            "X-Forwarded-Proto": "https",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer


@pytest.fixture
def trusting(tmp_path: Path) -> Iterator[ApiServer]:
    server = serve(tmp_path, "127.0.0.1")
    yield server
    server.stop()


@pytest.fixture
def not_trusting(tmp_path: Path) -> Iterator[ApiServer]:
    server = serve(tmp_path, None)
    yield server
    server.stop()


def test_behind_a_trusted_proxy_the_session_cookie_is_secure(trusting: ApiServer) -> None:
    answer = sign_in_through_the_proxy(trusting)
    assert answer.status == 303
    cookies = [v for k, v in answer.getheaders() if k.lower() == "set-cookie"]
    session = next(c for c in cookies if c.startswith("beatd_session="))
    assert "; Secure" in session and "; HttpOnly" in session


def test_without_trusting_the_proxy_its_https_is_not_believed(not_trusting: ApiServer) -> None:
    answer = sign_in_through_the_proxy(not_trusting)
    assert answer.status == 403  # the browser's https origin is not this http request's
