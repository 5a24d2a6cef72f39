"""The console's frame: where it is served, its headers, its assets in the package."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

from prometheus_client import CollectorRegistry
from werkzeug.test import Client

from beatd.http.metrics import ApiMetrics
from tests.console.conftest import ORIGIN, WRITER, Console

REPO = Path(__file__).resolve().parents[2]
CONSOLE = REPO / "beatd" / "console"
CSP = "default-src 'self'"


def test_the_root_redirects_to_the_console(console: Console) -> None:
    answer = console.get("/")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/")
    assert answer.headers["Content-Security-Policy"] == CSP


def test_every_console_answer_has_the_security_headers(console: Console) -> None:
    console.sign_in(WRITER)
    answers = {
        path: console.get(path)
        for path in ("/ui/", "/ui/signin", "/ui/static/console.css", "/ui/no-such-page")
    }
    answers["/ui/signout (GET)"] = console.get("/ui/signout")
    answers["/ui/signin (POST, cross-origin)"] = console.post("/ui/signin", origin="http://x.test")
    for path, answer in answers.items():
        headers = {
            name: answer.headers.get(name)
            for name in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")
        }
        assert headers == {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }, path
    statuses = {path: answer.status_code for path, answer in answers.items()}
    assert statuses == {
        "/ui/": 200,
        "/ui/signin": 200,
        "/ui/static/console.css": 200,
        "/ui/no-such-page": 404,
        "/ui/signout (GET)": 405,
        "/ui/signin (POST, cross-origin)": 403,
    }
    assert answers["/ui/"].headers["Cache-Control"] == "no-store"
    assert answers["/ui/no-such-page"].mimetype == "text/html"


def test_the_api_keeps_its_json_errors(console: Console) -> None:
    answer = console.get("/v1/no-such-route")
    assert answer.status_code == 404
    assert answer.json == {
        "errors": [
            {
                "entry": None,
                "field": None,
                "message": "no such path in the API: GET /v1/openapi.json lists them",
                "pointer": None,
            }
        ]
    }
    assert "Content-Security-Policy" not in answer.headers


def test_another_host_is_refused_with_a_page(console: Console) -> None:
    answer = console.client.get("/ui/signin", base_url="http://rebound.example:9479")
    assert answer.status_code == 421
    assert (
        "this server does not answer to the host &#39;rebound.example:9479&#39;; add it to "
        "--api-allowed-hosts if that is the name clients use"
    ) in answer.text


def test_pages_have_no_inline_script_or_style(console: Console) -> None:
    """The CSP forbids them: a page that used one would break in the browser."""
    for template in (CONSOLE / "templates").glob("*.html"):
        text = template.read_text()
        assert "<style" not in text and "style=" not in text, template.name
        assert "<script>" not in text and "<script " not in text.replace("<script src=", ""), (
            template.name
        )


def test_the_wheel_ships_every_template_and_asset() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = declared["package-data"]["beatd.console"]
    files = [
        p.relative_to(CONSOLE).as_posix()
        for folder in ("templates", "static")
        for p in (CONSOLE / folder).iterdir()
    ]
    assert files
    assert [f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)] == []


def test_console_pages_are_counted_under_their_endpoint(console: Console) -> None:
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    browser = Client(metrics.wrap(console.app))
    browser.get("/ui/signin", base_url=ORIGIN)
    browser.post(
        "/ui/signin",
        base_url=ORIGIN,
        data={"token": WRITER.token},
        headers={"Origin": ORIGIN},
    )
    browser.get("/ui/", base_url=ORIGIN)

    def count(route: str, code: str) -> float | None:
        return registry.get_sample_value("beatd_api_requests_total", {"route": route, "code": code})

    assert [count("ui.signin", "200"), count("ui.signin_submit", "303")] == [1.0, 1.0]
    assert [count("ui.overview", "200"), count("status", "200")] == [1.0, None]
