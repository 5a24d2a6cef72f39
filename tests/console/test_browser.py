"""The console in Debian's chromium against a real `beatd run --with-worker` with 100,000
seeded entries (issue 19, "Tested in a real browser"). One server and one browser per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.console.browser import Browser, ConsoleServer, iter_requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    running = ConsoleServer(tmp_path_factory.mktemp("console"))
    try:
        running.wait_ready()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    try:
        yield chromium
    finally:
        chromium.close()


def test_the_browser_reaches_the_daemon_and_nothing_else(
    server: ConsoleServer, browser: Browser
) -> None:
    browser.driver.get(server.url("/v1/openapi.json"))
    assert "this request needs a token: Authorization: Bearer TOKEN" in browser.driver.page_source
    assert [u for u in iter_requests(browser.requests()) if not u.startswith(server.origin)] == []
