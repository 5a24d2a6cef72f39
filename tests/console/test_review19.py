"""review19: an independent review of issue 19 (the web console), without a browser: HTML,
headers and forms under Flask's test client on real SQLite and Redis, and a real
`beatd run --with-worker` over HTTP. Promises that hold are pinned; defects are strict xfails
whose reason starts with "review19:"."""

from __future__ import annotations

import html
import http.client
import json
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest

from beatd.backends import DeadLetter, open_backend
from beatd.cli.api import allowed_hosts
from beatd.config import load_config
from beatd.console.app import register_console
from beatd.http import all_routes
from beatd.http.app import Access, create_app
from beatd.http.context import ApiContext
from beatd.http.tokens import TokenSource
from beatd.runtime_entries import resolve_entry
from tests.console.conftest import ORIGIN, READER, T0, WRITER, Console
from tests.console.seeds import add_entries, seed_dead_letters, seed_runs
from tests.processes import Processes
from tests.redis_server import free_port
from tests.test_controls_cli import arrange_horizon
from tests.waiting import wait_for

CONSOLE = Path(__file__).resolve().parents[2] / "beatd" / "console"
TEMPLATES = sorted((CONSOLE / "templates").glob("*.html"))
STATIC = sorted((CONSOLE / "static").iterdir())
SECURITY = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def act(console: Console, path: str, form: dict[str, str] | None = None, page: str = "/ui/") -> Any:
    return console.post(path, {"csrf": console.csrf(page), **(form or {})})


def runtime(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "task": "reports.daily", "cron": "0 4 * * *", **fields}


# --- templates and assets: nothing the CSP would block, nothing from another site ------------


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_no_template_has_inline_script_style_or_handlers(template: Path) -> None:
    text = template.read_text()
    assert not re.search(r"\sstyle\s*=", text, re.I), "a style= attribute"
    assert not re.search(r"<style\b", text, re.I), "a <style> element"
    for tag in re.findall(r"<script\b[^>]*>", text, re.I):
        assert "src=" in tag, f"an inline script: {tag}"
    assert not re.search(r"\son[a-z]+\s*=", text, re.I), "an on...= handler"
    assert "javascript:" not in text.lower()


@pytest.mark.parametrize("asset", [*TEMPLATES, *STATIC], ids=lambda p: p.name)
def test_no_template_or_asset_names_another_site(asset: Path) -> None:
    text = asset.read_text()
    urls = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text)
    assert urls == [], urls
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text)


def test_the_css_follows_the_systems_light_or_dark_setting() -> None:
    css = (CONSOLE / "static" / "console.css").read_text()
    assert "@media (prefers-color-scheme: dark)" in css
    assert re.search(r"color-scheme:\s*light dark", css)


def test_the_chart_svg_has_no_script_style_or_external_reference() -> None:
    text = (CONSOLE / "chart.py").read_text()
    assert "style=" not in text and "<script" not in text and "href" not in text


# --- headers: the CSP on every answer under /ui ------------------------------------------------


def test_every_kind_of_console_answer_has_the_security_headers(console: Console) -> None:
    seen = {
        "/ui": console.get("/ui"),  # the trailing-slash redirect
        "/": console.get("/"),
        "/ui/ signed out": console.get("/ui/"),  # 303 to sign-in
        "/ui/signin": console.get("/ui/signin"),
        "/ui/no-such-page": console.get("/ui/no-such-page"),
        "/ui/static/console.css": console.get("/ui/static/console.css"),
        "/ui/static/nope.css": console.get("/ui/static/nope.css"),
        "POST /ui/entries (405)": console.post("/ui/entries"),
        "POST /ui/signin other origin": console.post("/ui/signin", {}, origin="http://evil.test"),
        "wrong Host": console.client.get("/ui/", base_url="http://evil.test"),
    }
    console.sign_in(WRITER)
    seen["/ui/entries/nope (404 of the API)"] = console.get("/ui/entries/nope")
    seen["action without csrf"] = console.post("/ui/trigger/nightly", {})
    for what, answer in seen.items():
        for name, value in SECURITY.items():
            assert answer.headers.get(name) == value, (what, answer.status_code, name)
    assert seen["/ui/static/console.css"].status_code == 200
    assert seen["/ui/no-such-page"].status_code == 404
    assert seen["wrong Host"].status_code == 421


# --- sign-in: nothing shown without it, cookies, next= -------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        "/ui/",
        "/ui/entries",
        "/ui/entries/nightly",
        "/ui/dead",
        "/ui/new-entry",
        "/ui/edit/nightly",
        "/ui/entries?name=x&offset=50",
    ],
)
def test_no_page_is_shown_without_signing_in(console: Console, page: str) -> None:
    answer = console.get(page)
    assert answer.status_code == 303
    location = answer.headers["Location"]
    assert location.startswith("/ui/signin?next=")
    assert "reports.nightly" not in answer.text and "<table" not in answer.text


def test_the_session_cookie_is_httponly_strict_and_twelve_hours(console: Console) -> None:
    answer = console.sign_in(WRITER)
    cookie = next(c for c in answer.headers.getlist("Set-Cookie") if c.startswith("beatd_session="))
    parts = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")}
    assert "httponly" in parts and parts["samesite"] == "SameSite=Strict"
    assert parts["max-age"] == "Max-Age=43200" and parts["path"] == "Path=/ui"
    assert "secure" not in parts  # plain http here; test_sessions pins https


@pytest.mark.parametrize(
    "where",
    [
        "https://evil.test/ui/",
        "//evil.test/ui/",
        "/\\evil.test",
        "/ui//evil.test",
        "/ui/\\evil.test",
        "http:/ui/",
        "javascript:alert(1)//ui/",
        " //evil.test",
    ],
)
def test_next_never_leads_to_another_site(console: Console, where: str) -> None:
    answer = console.post("/ui/signin", {"token": WRITER.token, "next": where})
    assert answer.status_code == 303
    location = answer.headers["Location"]
    resolved = urlsplit(urljoin(f"{ORIGIN}/ui/signin", location))
    assert resolved.netloc == urlsplit(ORIGIN).netloc and resolved.scheme == "http", location
    page = console.get(f"/ui/signin?next={where}")
    assert "evil.test" not in page.text


def test_a_removed_tokens_session_ends_at_the_reread(console: Console) -> None:
    console.sign_in(WRITER)
    assert console.get("/ui/").status_code == 200
    console.write_tokens(READER)  # the writer's line removed, as SIGHUP rereads
    answer = console.get("/ui/entries")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/ui/signin")
    assert console.post("/ui/trigger/nightly", {"csrf": "x"}).status_code == 303  # not acted
    assert console.context.backend().audit() == []


# --- CSRF and Origin ----------------------------------------------------------------------------


def test_another_sessions_csrf_token_is_refused(console: Console) -> None:
    other = console.app.test_client()
    other.post(
        "/ui/signin",
        base_url=ORIGIN,
        data={"token": WRITER.token, "next": "/ui/"},
        headers={"Origin": ORIGIN},
    )
    page = other.get("/ui/", base_url=ORIGIN).text
    theirs = re.search(r'name="csrf" value="([^"]*)"', page)
    assert theirs is not None
    console.sign_in(WRITER)
    answer = console.post("/ui/trigger/nightly", {"csrf": theirs.group(1)})
    assert answer.status_code == 403
    assert (
        "the form&#39;s CSRF token is not this session&#39;s (it was signed in again, or the form "
        "came from elsewhere): reload the page and try again"
    ) in answer.text
    assert console.context.backend().audit() == []


@pytest.mark.parametrize(
    "origin", ["null", "http://127.0.0.1:9478", "https://127.0.0.1:9479", "http://evil.test"]
)
def test_another_origin_is_refused(console: Console, origin: str) -> None:
    console.sign_in(WRITER)
    csrf = console.csrf()
    answer = console.post("/ui/trigger/nightly", {"csrf": csrf}, origin=origin)
    assert answer.status_code == 403
    assert f"the form came from {origin}, not from the console&#39;s own origin" in answer.text
    assert console.post("/ui/trigger/nightly", {"csrf": csrf}, origin=None).status_code == 403
    assert console.context.backend().audit() == []


def test_no_get_writes_and_no_method_override(console: Console) -> None:
    console.sign_in(WRITER)
    csrf = console.csrf()
    for path in (
        "/ui/trigger/nightly",
        "/ui/pause/nightly",
        "/ui/dead/delete-all",
        f"/ui/trigger/nightly?csrf={csrf}",
        "/ui/signout",
    ):
        assert console.get(path).status_code == 405, path
    answer = console.client.post(
        "/ui/entries/nightly",
        base_url=ORIGIN,
        data={"csrf": csrf, "_method": "DELETE"},
        headers={"Origin": ORIGIN, "X-HTTP-Method-Override": "DELETE"},
    )
    assert answer.status_code == 405
    assert console.context.backend().audit() == []
    assert console.get("/ui/").status_code == 200  # still signed in


# --- a read token's actions are refused, every action is audited under the token's name -------


def test_a_read_tokens_actions_are_refused_and_change_nothing(console: Console) -> None:
    add_entries(console, runtime("mine"))
    seed_dead_letters(console)
    console.sign_in(READER)
    before = len(console.context.backend().audit())  # the entry's creation
    refused = "token viewer may only read; this request needs a write token"
    for path, form in (
        ("/ui/trigger/nightly", {}),
        ("/ui/pause/nightly", {"reason": "x"}),
        ("/ui/resume/nightly", {}),
        (
            "/ui/backfill-confirm/nightly",
            {"from": "2026-12-01T00:00:00Z", "to": "2026-12-03T00:00:00Z"},
        ),
        ("/ui/new-entry", {"name": "theirs", "fields": "task: a.b\ncron: 0 1 * * *\n"}),
        ("/ui/edit/mine", {"fields": "task: a.b\ncron: 0 1 * * *\n", "version": "1"}),
        ("/ui/delete/mine", {"version": "1"}),
        ("/ui/dead/retry/gone@x", {}),
        ("/ui/dead/delete/gone@x", {}),
        ("/ui/dead/retry-all", {}),
        ("/ui/dead/delete-all", {}),
    ):
        answer = act(console, path, form)
        assert answer.status_code == 403, path
        assert refused in answer.text, path
    backend = console.context.backend()
    assert len(backend.audit()) == before
    assert len(backend.dead_letters()) == 2


def test_every_action_lands_in_the_audit_log_under_the_tokens_name(
    console: Console, tmp_path: Path
) -> None:
    seed_dead_letters(console)
    horizon = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    arrange_horizon(console.context.backend(), tmp_path / "schedules", horizon, "nightly")
    console.sign_in(WRITER)
    steps = [
        ("/ui/trigger/nightly", {}),
        ("/ui/pause/nightly", {"reason": "db work"}),
        ("/ui/resume/nightly", {}),
        (
            "/ui/backfill-confirm/nightly",
            {"from": "2026-12-04T00:00:00Z", "to": "2026-12-05T00:00:00Z"},
        ),
        ("/ui/new-entry", {"name": "mine", "fields": "task: a.b\ncron: 0 1 * * *\n"}),
        ("/ui/edit/mine", {"fields": "task: a.b\ncron: 0 2 * * *\n", "version": "1"}),
        ("/ui/delete/mine", {"version": "2"}),
        ("/ui/dead/retry/gone@x", {}),
        ("/ui/dead/delete/nightly@2026-12-05T03:00:00Z", {}),
    ]
    for path, form in steps:
        answer = act(console, path, form)
        assert answer.status_code == 303, (path, answer.text)
    answer = console.client.get(
        "/v1/audit",
        base_url=ORIGIN,
        headers={"Authorization": f"Bearer {READER.token}"},
        query_string={"limit": 100},
    )
    assert answer.json is not None
    records = answer.json["records"]
    assert {r["by"] for r in records} == {"ops"}
    assert [(r["action"], r["entry"]) for r in reversed(records)] == [
        ("trigger", "nightly"),
        ("pause", "nightly"),
        ("resume", "nightly"),
        ("backfill", "nightly"),
        ("entry.add", "mine"),
        ("entry.set", "mine"),
        ("entry.remove", "mine"),
        ("requeue_dead", "gone"),
        ("delete_dead", "nightly"),
    ]


# --- escaping: what an operator typed, or a client sent, is text --------------------------------

EVIL = '<script>alert("x")</script>\'"><img src=x onerror=alert(1)>'


def test_typed_text_and_headers_are_escaped_everywhere(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(console, "/ui/pause/nightly", {"reason": EVIL}, "/ui/entries/nightly")
    assert answer.status_code == 303
    pages = {
        "entry (flash, pause note, audit)": console.get("/ui/entries/nightly").text,
        "other origin": console.post("/ui/trigger/nightly", {"csrf": "x"}, origin=EVIL).text,
        "host": console.client.get("/ui/", base_url="http://x", headers={"Host": EVIL}).text,
        "new entry name": act(
            console, "/ui/new-entry", {"name": EVIL, "fields": "task: a.b\n"}
        ).text,
        "bad yaml": act(console, "/ui/new-entry", {"name": "n", "fields": EVIL}).text,
        "filter": console.get("/ui/entries", query_string={"name": EVIL, "status": EVIL}).text,
        "sign-in next": console.get("/ui/signin", query_string={"next": "/ui/" + EVIL}).text,
        "backfill": act(console, "/ui/backfill/nightly", {"from": EVIL, "to": EVIL}).text,
    }
    for what, text in pages.items():
        assert "<script>alert" not in text, what
        assert "<img src=x" not in text, what
    assert html.escape(EVIL, quote=False)[:20] in pages["entry (flash, pause note, audit)"]


def test_the_chart_is_valid_svg_with_a_title(console: Console) -> None:
    seed_runs(console)
    console.sign_in(READER)
    text = console.get("/ui/entries/nightly").text
    found = re.search(r"<svg\b.*?</svg>", text, re.S)
    assert found is not None
    svg = ET.fromstring(found.group(0))
    ns = "{http://www.w3.org/2000/svg}"
    assert svg.tag == f"{ns}svg"
    assert svg.find(f"{ns}title") is not None and svg.find(f"{ns}desc") is not None
    assert len(svg.findall(f".//{ns}circle")) == 4  # two runs, duration and delay


# --- accessible names and keyboard: every control named, every action a real button ------------


class Controls(HTMLParser):
    """The page's controls, labels, and forms with their buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labels: set[str] = set()
        self.ids: list[str] = []
        self.button_text: list[str] = []
        self.in_button = False
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "label" and found.get("for"):
            self.labels.add(str(found["for"]))
        if tag == "form":
            self.forms.append({**found, "buttons": 0})
        if tag in ("input", "select", "textarea", "button") and found.get("type") != "hidden":
            self.controls.append({"tag": tag, **found, "text": ""})
        if tag == "button":
            self.in_button = True
            if self.forms:
                self.forms[-1]["buttons"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self.in_button = False

    def handle_data(self, data: str) -> None:
        if self.in_button and self.controls:
            self.controls[-1]["text"] = (self.controls[-1]["text"] or "") + data.strip()

    def unnamed(self) -> list[dict[str, str | None]]:
        return [
            c
            for c in self.controls
            if not (
                c.get("aria-label")
                or c.get("aria-labelledby")
                or c.get("title")
                or (c.get("id") in self.labels)
                or (c["tag"] == "button" and c["text"])
            )
        ]


def test_every_control_has_an_accessible_name_and_every_form_a_button(console: Console) -> None:
    seed_runs(console)
    seed_dead_letters(console)
    add_entries(console, runtime("mine"))
    console.sign_in(WRITER)
    pages = [
        "/ui/",
        "/ui/entries",
        "/ui/entries/nightly",
        "/ui/entries/mine",
        "/ui/dead",
        "/ui/new-entry",
        "/ui/edit/mine",
        "/ui/entries?name=zzz",
    ]
    texts = {page: console.get(page).text for page in pages}
    texts["backfill preview"] = act(
        console,
        "/ui/backfill/nightly",
        {"from": "2026-12-03T00:00:00Z", "to": "2026-12-05T00:00:00Z"},
    ).text
    texts["refusal"] = console.post("/ui/trigger/nightly", {}).text
    console.client.post(
        "/ui/signout", base_url=ORIGIN, data={"csrf": console.csrf()}, headers={"Origin": ORIGIN}
    )
    texts["sign-in"] = console.get("/ui/signin").text
    for page, text in texts.items():
        parsed = Controls()
        parsed.feed(text)
        assert parsed.unnamed() == [], page
        assert len(parsed.ids) == len(set(parsed.ids)), (page, "duplicate ids")
        for form in parsed.forms:
            assert form["buttons"] >= 1, (page, form)


# --- the entries page: filters, sort, pages -----------------------------------------------------


def test_filters_sort_and_the_last_page(console: Console) -> None:
    add_entries(console, *(runtime(f"job-{i}", cron=f"{i} 4 * * *") for i in range(7)))
    add_entries(console, runtime("other", queue="slow"))
    console.sign_in(READER)
    page = console.get(
        "/ui/entries",
        query_string={"name": "job-", "sort": "next_due", "limit": "3", "source": "api"},
    )
    assert "Entries 1–3 of 7." in page.text
    names = re.findall(r'<a href="/ui/entries/([^"]+)">', page.text)
    assert names == ["job-0", "job-1", "job-2"]
    last = re.search(r'<a href="([^"]+)" rel="last">', page.text)
    assert last is not None
    page = console.get(html.unescape(last.group(1)))
    assert "Entries 7–7 of 7." in page.text
    assert re.findall(r'<a href="/ui/entries/([^"]+)">', page.text) == ["job-6"]
    assert 'rel="next"' not in page.text and 'rel="last"' not in page.text
    assert 'rel="prev"' in page.text and 'rel="first"' in page.text
    only = console.get("/ui/entries", query_string={"queue": "slow"}).text
    assert re.findall(r'<a href="/ui/entries/([^"]+)">', only) == ["other"]
    files = console.get("/ui/entries", query_string={"source": "file"}).text
    assert re.findall(r'<a href="/ui/entries/([^"]+)">', files) == ["nightly"]


def test_each_row_links_to_its_entry_page_with_its_slashes_encoded(console: Console) -> None:
    add_entries(console, runtime("team/db:vacuum"), runtime("plain"))
    console.sign_in(READER)
    page = console.get("/ui/entries", query_string={"sort": "name"}).text
    links = re.findall(r'<a href="(/ui/entries/[^"]+)">', page)
    assert links == [
        "/ui/entries/nightly",
        "/ui/entries/plain",
        "/ui/entries/team%2Fdb:vacuum",
    ]
    assert "<dt>Schedule</dt>" in console.get(links[2]).text


def test_a_page_past_the_end_does_not_claim_rows(console: Console) -> None:
    add_entries(console, *(runtime(f"job-{i}") for i in range(7)))
    console.sign_in(READER)
    page = console.get("/ui/entries", query_string={"offset": "50", "limit": "20"}).text
    assert re.findall(r'<a href="/ui/entries/([^"]+)">', page) == []
    assert "Entries 8–8 of 8." not in page


def test_an_entry_page_shows_its_row_among_many_names_containing_it(console: Console) -> None:
    add_entries(console, *(runtime(f"a-nightly-{i:03d}") for i in range(501)))
    console.sign_in(READER)
    text = console.get("/ui/entries/nightly").text
    assert "<dt>Schedule</dt>" in text and "<dt>Next due</dt>" in text


def test_an_entrys_forms_post_to_its_own_urls(console: Console) -> None:
    name = "x/../../dead/delete-all"  # stored before names with ".." parts were refused
    stored = resolve_entry("x", {"task": "reports.daily", "cron": "0 4 * * *"}, now=T0)
    console.context.backend().put_entry(replace(stored, name=name), "ops")
    seed_dead_letters(console)
    console.sign_in(WRITER)
    base = f"{ORIGIN}/ui/entries/{name}"
    page = console.get(f"/ui/entries/{name}").text
    actions = re.findall(r'<form[^>]* action="([^"]+)"', page)
    assert actions
    for action in actions:
        resolved = urlsplit(urljoin(base, html.unescape(action))).path
        assert resolved == html.unescape(action), f"{action} resolves to {resolved}"
    delete = next(a for a in actions if "/delete/" in a)
    removed = act(console, html.unescape(delete), {"version": "1"}, page=f"/ui/entries/{name}")
    assert removed.status_code == 303, removed.text
    assert console.context.backend().get_entry(name) is None
    assert len(console.context.backend().dead_letters()) == 2


# --- If-Match on edit ---------------------------------------------------------------------------


def test_an_edit_of_a_changed_entry_is_refused_by_if_match(console: Console) -> None:
    add_entries(console, runtime("mine"))
    console.sign_in(WRITER)
    form = console.get("/ui/edit/mine").text
    assert 'name="version" value="1"' in form
    changed = console.client.put(
        "/v1/entries/mine",
        base_url=ORIGIN,
        json={"task": "a.b", "cron": "0 5 * * *"},
        headers={"Authorization": f"Bearer {WRITER.token}"},
    )
    assert changed.status_code == 200
    answer = act(
        console, "/ui/edit/mine", {"fields": "task: a.c\ncron: 0 6 * * *\n", "version": "1"}
    )
    assert answer.status_code == 412
    assert "The entry was not saved" in answer.text
    entry = console.client.get(
        "/v1/entries/mine", base_url=ORIGIN, headers={"Authorization": f"Bearer {READER.token}"}
    ).json  # unchanged by the console
    assert entry is not None
    assert entry["version"] == 2 and entry["definition"]["cron"] == "0 5 * * *"


# --- 100,000 entries: the entries page's time -----------------------------------------------------


def test_the_entries_page_with_100000_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text('entries:\n  seed:\n    task: a.b\n    cron: "*/5 * * * *"\n')
    base = load_config([str(folder)])
    seed = base.entries["seed"]
    many = {f"job-{i:06d}": replace(seed, name=f"job-{i:06d}") for i in range(100_000)}
    config = replace(base, entries=many)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{READER.line}\n")
    tokens_file.chmod(0o600)
    clock = [T0]
    context = ApiContext(
        lambda: open_backend(f"sqlite:///{tmp_path / 'b.db'}"), lambda: config, now=lambda: clock[0]
    )
    access = Access(TokenSource(tokens_file), allowed_hosts("127.0.0.1", 9479, ()), False)
    app = create_app(all_routes(context), access)
    register_console(app, context, access)
    client = app.test_client()
    client.post(
        "/ui/signin",
        base_url=ORIGIN,
        data={"token": READER.token, "next": "/ui/"},
        headers={"Origin": ORIGIN},
    )
    started = time.perf_counter()
    first = client.get("/ui/entries", base_url=ORIGIN)
    built = time.perf_counter() - started
    assert first.status_code == 200 and "of 100000." in first.text
    views = {
        "default (next due)": {},
        "by name, last page": {"sort": "name", "offset": "99950"},
        "name filter": {"name": "job-0999"},
        "status filter": {"status": "failed"},
        "by last status": {"sort": "last_status", "offset": "50000"},
    }
    timings = {}
    for what, query in views.items():
        spent = []
        for _ in range(10):
            started = time.perf_counter()
            answer = client.get("/ui/entries", base_url=ORIGIN, query_string=query)
            spent.append(time.perf_counter() - started)
            assert answer.status_code == 200
        timings[what] = sorted(spent)[len(spent) // 2] * 1000
    for what, page in (("overview", "/ui/"), ("an entry", "/ui/entries/job-050000")):
        spent = []
        for _ in range(10):
            started = time.perf_counter()
            answer = client.get(page, base_url=ORIGIN)
            spent.append(time.perf_counter() - started)
            assert answer.status_code == 200, page
        timings[what] = sorted(spent)[len(spent) // 2] * 1000
    entry_page = client.get("/ui/entries/job-050000", base_url=ORIGIN).text
    assert "<dt>Schedule</dt>" in entry_page
    last = client.get("/ui/entries", base_url=ORIGIN, query_string=views["by name, last page"])
    assert "Entries 99951–100000 of 100000." in last.text and "job-099999" in last.text
    with capsys.disabled():
        print(
            f"\n[review19] first page (index built) {built * 1000:.0f} ms; medians of 10: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items())
        )
    context.close()
    assert max(timings.values()) < 2000  # a loose bound: the figures are reported, noisy


# --- a real `beatd run --with-worker` over HTTP, on SQLite and Redis ----------------------------


def ask(
    port: int,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = dict(headers or {})
    body = None
    if form is not None:
        body = urlencode(form)
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body, sent)
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read().decode()
    except OSError:
        return 0, http.client.HTTPMessage(), ""
    finally:
        connection.close()


@pytest.mark.slow
def test_a_real_daemon_signs_in_acts_audits_and_ends_the_session_at_sighup(
    tmp_path: Path, broker: str
) -> None:
    out = tmp_path / "out"
    procs = Processes(tmp_path, broker)
    procs.schedule(
        f'entries:\n  tick:\n    task: tests.worker_tasks.add\n    cron: "0 3 * * *"\n'
        f'    args: ["{out}", 1, 2]\nimports: [tests.worker_tasks]\n'
    )
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{READER.line}\n{WRITER.line}\n")
    tokens.chmod(0o600)
    port = free_port()
    origin = {"Origin": f"http://127.0.0.1:{port}"}
    bearer = {"Authorization": f"Bearer {READER.token}"}
    try:
        node = procs.scheduler(
            "n1",
            "--with-worker",
            "--api-addr",
            f"127.0.0.1:{port}",
            "--api-tokens",
            str(tokens),
            "--metrics-addr",
            "off",
        )
        wait_for(lambda: ask(port, "GET", "/ui/signin")[0] == 200, what="the console")
        status, headers, _ = ask(port, "GET", "/ui/entries/tick")
        assert (status, headers["Location"]) == (303, "/ui/signin?next=/ui/entries/tick")
        status, headers, _ = ask(
            port, "POST", "/ui/signin", {"token": WRITER.token, "next": "/ui/entries/tick"}, origin
        )
        assert (status, headers["Location"]) == (303, "/ui/entries/tick")
        cookie = next(
            c.split(";")[0]
            for c in headers.get_all("Set-Cookie") or []
            if c.startswith("beatd_session=")
        )
        me = {"Cookie": cookie}
        _, _, page = ask(port, "GET", "/ui/entries/tick", headers=me)
        csrf = re.search(r'name="csrf" value="([^"]*)"', page)
        assert csrf is not None
        status, _, _ = ask(
            port, "POST", "/ui/trigger/tick", {"csrf": csrf.group(1)}, {**me, **origin}
        )
        assert status == 303
        wait_for(lambda: out.exists() and "sum=3" in out.read_text(), timeout=20, what="the run")
        wait_for(
            lambda: "status-succeeded" in ask(port, "GET", "/ui/entries/tick", headers=me)[2],
            timeout=20,
            what="the outcome in the entry's history",
        )
        status, _, _ = ask(
            port,
            "POST",
            "/ui/pause/tick",
            {"csrf": csrf.group(1), "reason": "review"},
            {**me, **origin},
        )
        assert status == 303
        refused, _, _ = ask(
            port,
            "POST",
            "/ui/resume/tick",
            {"csrf": csrf.group(1)},
            {**me, "Origin": "http://evil.test"},
        )
        assert refused == 403
        _, _, audit = ask(port, "GET", "/v1/audit?entry=tick", headers=bearer)
        records = json.loads(audit)["records"]
        assert [(r["action"], r["by"]) for r in records] == [("pause", "ops"), ("trigger", "ops")]
        tokens.write_text(f"{READER.line}\n")  # the writer's line removed
        node.signal(signal.SIGHUP)
        wait_for(
            lambda: ask(port, "GET", "/ui/", headers=me)[0] == 303,
            timeout=10,
            what="the session ended at the reread",
        )
        status, headers, _ = ask(
            port, "POST", "/ui/resume/tick", {"csrf": csrf.group(1)}, {**me, **origin}
        )
        assert status == 303 and headers["Location"].startswith("/ui/signin?next=")
        _, _, audit = ask(port, "GET", "/v1/audit?entry=tick", headers=bearer)
        assert len(json.loads(audit)["records"]) == 2
    finally:
        procs.close()


# --- sessions: sign-out, namespaces, next= with line breaks --------------------------------------


def test_a_cookie_copied_before_signing_out_is_refused_after(console: Console) -> None:
    console.sign_in(WRITER)
    copied = console.client.get_cookie("beatd_session", domain="127.0.0.1", path="/ui")
    assert copied is not None
    answer = console.post("/ui/signout", {"csrf": console.csrf()})
    assert answer.status_code == 303
    console.client.set_cookie("beatd_session", copied.value, domain="127.0.0.1", path="/ui")
    assert console.get("/ui/").status_code == 303


def test_a_session_of_one_redis_namespace_is_refused_on_another(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{WRITER.line}\n")
    tokens_file.chmod(0o600)
    clients = []
    contexts = []
    for namespace in ("review19a", "review19b"):
        context = ApiContext(
            lambda ns=namespace: open_backend(server.url, namespace=ns), lambda: None
        )
        access = Access(TokenSource(tokens_file), allowed_hosts("127.0.0.1", 9479, ()), False)
        app = create_app(all_routes(context), access)
        register_console(app, context, access)
        clients.append(app.test_client())
        contexts.append(context)
    try:
        signed = clients[0].post(
            "/ui/signin",
            base_url=ORIGIN,
            data={"token": WRITER.token, "next": "/ui/"},
            headers={"Origin": ORIGIN},
        )
        assert signed.status_code == 303
        cookie = clients[0].get_cookie("beatd_session", domain="127.0.0.1", path="/ui")
        assert cookie is not None
        assert clients[0].get("/ui/dead", base_url=ORIGIN).status_code == 200
        clients[1].set_cookie("beatd_session", cookie.value, domain="127.0.0.1", path="/ui")
        answer = clients[1].get("/ui/dead", base_url=ORIGIN)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/ui/signin")
    finally:
        for context in contexts:
            context.close()
        server.client().flushall()


def test_a_next_with_a_line_break_falls_back_to_the_overview(console: Console) -> None:
    for next_ in ("/ui/\r\nX-Evil: 1", "/ui/\tx", "/ui/\x7f", "/ui/caf\u00e9"):
        answer = console.post("/ui/signin", {"token": WRITER.token, "next": next_})
        for name, value in SECURITY.items():
            assert answer.headers.get(name) == value
        assert (answer.status_code, answer.headers.get("Location")) == (303, "/ui/"), next_


# --- runtime entries: the console's refusals are the CLI's words ---------------------------------

CLI_CASES = [
    ("cron: '61 * * * *'", ["--cron", "61 * * * *"]),
    ("cron: '0 3 * * *'\ntimezone: Mars/Base", ["--cron", "0 3 * * *", "--timezone", "Mars/Base"]),
    ("every: 10s\nqueue: a b", ["--every", "10s", "--queue", "a b"]),
    ("", []),
]


@pytest.mark.parametrize(("fields", "flags"), CLI_CASES, ids=["cron", "timezone", "queue", "none"])
def test_a_refused_entry_says_what_beatd_entries_add_says(
    tmp_path: Path, fields: str, flags: list[str]
) -> None:
    from tests.console.conftest import make_console

    db = tmp_path / "cli.db"
    cli = subprocess.run(
        [sys.executable, "-m", "beatd", "entries", "add", "report", "--broker", f"sqlite:///{db}",
         "--task", "app.report", *flags],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert cli.returncode != 0
    said = [
        line.removeprefix("entry report: ").removeprefix("field ")
        for line in cli.stderr.splitlines()
        if line.startswith("entry report: ")
    ]
    assert said, cli.stderr
    console = make_console(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}")
    try:
        console.sign_in(WRITER)
        answer = act(
            console, "/ui/new-entry", {"name": "report", "fields": f"task: app.report\n{fields}"}
        )
        assert answer.status_code == 422
        shown = html.unescape(re.sub(r"<strong>([a-z_]+):</strong> ", r"\1: ", answer.text))
        for words in said:
            assert words in shown, (words, shown[shown.find("errors") :][:600])
    finally:
        console.context.close()


# --- the dead letters page with many letters ------------------------------------------------------


def test_the_dead_letters_page_shows_a_page_of_letters_at_a_time(console: Console) -> None:
    failed = T0 - timedelta(minutes=5)
    body = json.dumps({"v": 1, "id": "x", "task": "reports.nightly"})
    letters = [
        DeadLetter(f"e{i}@2026-12-05T03:00:00Z", "default", body, "ValueError: bad", failed, 3)
        for i in range(1_500)
    ]
    console.context.backend().add_dead_letters(letters)
    console.sign_in(READER)
    page = console.get("/ui/dead").text
    assert page.count('<th scope="row">') <= 500


# --- nits ----------------------------------------------------------------------------------


def test_the_css_styles_the_chart_the_page_draws(console: Console) -> None:
    console.sign_in(READER)
    page = console.get("/ui/entries/nightly").text
    svg = re.search(r'<svg\b[^>]*class="([^"]+)"', page)
    assert svg is not None
    css = (CONSOLE / "static" / "console.css").read_text()
    assert f"svg.{svg.group(1)}" in css or "figure.chart svg" in css or ".chart svg" in css


def test_another_host_is_refused_on_every_console_path(console: Console) -> None:
    for path in ("/ui/no-such-page", "/"):
        answer = console.client.get(path, base_url="http://evil.test")
        assert answer.status_code == 421, path


def test_an_edit_without_its_version_is_refused(console: Console) -> None:
    add_entries(console, runtime("mine"))
    console.sign_in(WRITER)
    answer = act(console, "/ui/edit/mine", {"fields": "task: a.c\ncron: 0 6 * * *\n"})
    assert answer.status_code != 303
    entry = console.client.get(
        "/v1/entries/mine", base_url=ORIGIN, headers={"Authorization": f"Bearer {READER.token}"}
    ).json
    assert entry is not None and entry["version"] == 1
    assert act(console, "/ui/delete/mine", {}).status_code != 303
