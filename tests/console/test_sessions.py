"""Signing in to the console, the session cookie and the guards of every console POST, with
Flask's test client on a real SQLite file (and, across nodes, on Redis too)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Blueprint
from werkzeug.test import TestResponse
from werkzeug.wrappers import Response

from beatd.backends import DeadLetter, open_backend
from beatd.console import action, api, redirect_with, refuse
from beatd.http.tokens import NewToken, Scope, new_token
from tests.console.conftest import ORIGIN, READER, WRITER, Console, make_console
from tests.redis_server import RedisServer, free_port

TWELVE_HOURS = 12 * 3600
ENDED = (
    "your session has ended: it was opened 12 hours ago, or its token is no longer in the API "
    "token file; sign in again"
)


def retry_all_page(ui: Blueprint) -> None:
    """A console action of the test's own: requeue every dead letter through the API."""

    @action
    def retry_all() -> Response:
        answer = api().send("retry_all_dead_letters")
        if not answer.ok:
            return refuse(answer.status, "; ".join(e["message"] for e in answer.errors))
        return redirect_with("/ui/", f"requeued {answer.body['requeued']}")

    ui.add_url_rule("/test/retry-all", "test_retry_all", retry_all, methods=["POST"])


@pytest.fixture
def acting(tmp_path: Path, broker: str) -> Iterator[Console]:
    made = make_console(tmp_path, broker, extra=[retry_all_page])
    yield made
    made.context.close()


def cookie_of(answer: TestResponse, name: str) -> dict[str, str | bool]:
    """The attributes of the Set-Cookie of `name` (flags as True), lowercased names."""
    for header in answer.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            parts = [p.strip() for p in header.split(";")]
            attributes: dict[str, str | bool] = {"value": parts[0].split("=", 1)[1]}
            for part in parts[1:]:
                key, has_value, value = part.partition("=")
                attributes[key.lower()] = value if has_value else True
            return attributes
    raise AssertionError(f"no Set-Cookie for {name}")


def signed_in_page(console: Console, path: str = "/ui/") -> bool:
    answer = console.get(path)
    return answer.status_code == 200 and "Signed in as" in answer.text


def redirected_to_sign_in(answer: TestResponse, path: str = "/ui/") -> bool:
    return answer.status_code == 303 and answer.headers["Location"] == (
        f"/ui/signin?next={quote(path, safe='/')}"
    )


# --- signing in ---------------------------------------------------------------------------------


def test_signing_in_sets_the_session_cookie_as_the_design_says(console: Console) -> None:
    answer = console.sign_in(WRITER, "/ui/?x=1")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/?x=1")
    cookie = cookie_of(answer, "beatd_session")
    assert {k: v for k, v in cookie.items() if k not in ("value", "expires")} == {
        "max-age": str(TWELVE_HOURS),
        "httponly": True,
        "path": "/ui",
        "samesite": "Strict",
    }
    page = console.get("/ui/")
    assert "Signed in as <strong>ops</strong> (write)" in page.text
    assert '<li class="message info">signed in as ops (write)</li>' in page.text
    assert "signed in as ops (write)</li>" not in console.get("/ui/").text  # shown once


def test_the_cookie_is_secure_over_https(tmp_path: Path, broker: str) -> None:
    console = make_console(tmp_path, broker)
    answer = console.client.post(
        "/ui/signin",
        base_url="https://127.0.0.1:9479",
        data={"token": WRITER.token, "next": "/ui/"},
        headers={"Origin": "https://127.0.0.1:9479"},
    )
    assert answer.status_code == 303
    assert cookie_of(answer, "beatd_session")["secure"] is True
    assert cookie_of(answer, "beatd_flash")["secure"] is True


def test_the_cookie_holds_the_name_and_a_digest_never_the_token(console: Console) -> None:
    value = str(cookie_of(console.sign_in(WRITER), "beatd_session")["value"])
    payload_part = value.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4)))
    assert set(payload) == {"n", "d", "i", "c", "g"}
    assert (payload["n"], payload["i"]) == (
        "ops",
        int(datetime(2026, 12, 6, 1, 0, tzinfo=UTC).timestamp()),
    )
    assert WRITER.token not in value and len(payload["d"]) == 32
    assert WRITER.line.split("sha256:")[1].startswith(payload["d"])


def test_a_wrong_or_empty_token_is_refused_and_counted(console: Console) -> None:
    answer = console.post("/ui/signin", {"token": "beatd_guessed", "next": "/ui/"})
    assert answer.status_code == 401
    assert (
        "that token is not in this server&#39;s API token file: check it, or ask for one "
        "(`beatd api token NAME`)"
    ) in answer.text
    assert "beatd_session" not in answer.headers.get("Set-Cookie", "")
    assert "beatd_guessed" not in answer.text
    empty = console.post("/ui/signin", {"token": "  "})
    assert empty.status_code == 401 and "enter a token to sign in" in empty.text
    assert console.refused == ["unknown", "missing"]


def test_sign_in_from_another_origin_or_without_one_is_refused(console: Console) -> None:
    for origin, why in (
        (
            "http://evil.example",
            "the form came from http://evil.example, not from the console&#39;s own origin "
            f"{ORIGIN}: a page of another site cannot act here (behind a TLS proxy, see "
            "docs/api.md, Console sign-in)",
        ),
        (
            None,
            "the form came without an Origin header; the console takes actions only from its "
            f"own pages at {ORIGIN} (browsers send Origin with every form they post)",
        ),
    ):
        answer = console.post("/ui/signin", {"token": WRITER.token}, origin=origin)
        assert answer.status_code == 403
        assert why in answer.text
        assert "Set-Cookie" not in answer.headers
    assert not signed_in_page(console)


def test_after_sign_in_only_console_paths_are_followed(console: Console) -> None:
    for asked in ("//evil.example/", "https://evil.example/", "/v1/status", "/ui//evil.example"):
        answer = console.sign_in(WRITER, asked)
        assert answer.headers["Location"] == "/ui/", asked


# --- how a session ends ------------------------------------------------------------------------


def test_a_session_lasts_twelve_hours(console: Console) -> None:
    console.sign_in(READER)
    console.move(TWELVE_HOURS - 1)
    assert signed_in_page(console)
    console.move(1)
    answer = console.get("/ui/")
    assert redirected_to_sign_in(answer)
    assert cookie_of(answer, "beatd_session")["max-age"] == "0"  # the browser drops it
    assert ENDED in console.get("/ui/signin").text


def test_a_session_from_the_future_is_refused(console: Console) -> None:
    console.move(3600)
    console.sign_in(READER)  # issued at T0 + 1 h
    console.move(-3600)
    assert redirected_to_sign_in(console.get("/ui/"))


def test_removing_the_tokens_line_ends_its_sessions(console: Console) -> None:
    console.sign_in(WRITER)
    console.write_tokens(READER, WRITER)  # reread, still there
    assert signed_in_page(console)
    console.write_tokens(READER)
    assert redirected_to_sign_in(console.get("/ui/"))
    assert ENDED in console.get("/ui/signin").text


def test_a_new_token_under_the_same_name_ends_the_old_ones_sessions(console: Console) -> None:
    console.sign_in(WRITER)
    console.write_tokens(READER, new_token("ops", Scope.WRITE))
    assert redirected_to_sign_in(console.get("/ui/"))


def test_the_session_acts_with_the_scope_the_file_gives_now(console: Console) -> None:
    console.sign_in(WRITER)
    demoted = NewToken(WRITER.token, WRITER.line.replace(" write ", " read "))
    console.write_tokens(READER, demoted)
    assert "Signed in as <strong>ops</strong> (read)" in console.get("/ui/").text


def test_a_tampered_cookie_is_refused(console: Console) -> None:
    value = str(cookie_of(console.sign_in(READER), "beatd_session")["value"])
    payload_part, mac = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_part + "=" * (-len(payload_part) % 4)))
    forged_payload = {**payload, "n": "ops"}  # the reader claims to be the writer
    encoded = base64.urlsafe_b64encode(json.dumps(forged_payload).encode()).rstrip(b"=").decode()
    # a MAC with one character changed where every bit counts (its last character carries
    # padding bits: "...AB" for "...AA" would be the same MAC, about one run in 256)
    flipped = mac[:10] + ("B" if mac[10] == "A" else "A") + mac[11:]
    for forged in (f"{encoded}.{mac}", f"{payload_part}.{flipped}", payload_part, "x.y", ""):
        console.client.set_cookie("beatd_session", forged, domain="127.0.0.1", path="/ui")
        assert redirected_to_sign_in(console.get("/ui/")), forged


def test_a_cookie_signed_with_another_namespaces_key_is_refused(
    tmp_path: Path, console: Console
) -> None:
    other = make_console(tmp_path / "other", f"sqlite:///{tmp_path / 'other.db'}")
    value = str(cookie_of(other.sign_in(WRITER), "beatd_session")["value"])
    console.client.set_cookie("beatd_session", value, domain="127.0.0.1", path="/ui")
    assert redirected_to_sign_in(console.get("/ui/"))
    other.context.close()


def test_signing_out_ends_the_session(console: Console) -> None:
    console.sign_in(WRITER)
    answer = console.post("/ui/signout", {"csrf": console.csrf()})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/signin")
    assert cookie_of(answer, "beatd_session")["max-age"] == "0"
    assert '<li class="message info">signed out</li>' in console.get("/ui/signin").text
    assert redirected_to_sign_in(console.get("/ui/"))


# --- the guards of every console POST -----------------------------------------------------------


def test_an_action_without_or_with_a_wrong_csrf_token_is_refused(acting: Console) -> None:
    acting.sign_in(WRITER)
    for form, why in (
        (
            {},
            "the form has no CSRF token: reload the page and try again (forms of the console "
            "carry one)",
        ),
        (
            {"csrf": "x" * 43},
            "the form&#39;s CSRF token is not this session&#39;s (it was signed in again, or the "
            "form came from elsewhere): reload the page and try again",
        ),
    ):
        answer = acting.post("/ui/test/retry-all", form)
        assert answer.status_code == 403
        assert why in answer.text
    assert acting.post("/ui/signout", {}).status_code == 403
    assert signed_in_page(acting)


def test_an_action_from_another_origin_is_refused(acting: Console) -> None:
    acting.sign_in(WRITER)
    csrf = acting.csrf()
    answer = acting.post("/ui/test/retry-all", {"csrf": csrf}, origin="http://127.0.0.1:9480")
    assert answer.status_code == 403
    assert "the form came from http://127.0.0.1:9480, not from the console" in answer.text
    assert acting.post("/ui/test/retry-all", {"csrf": csrf}, origin=None).status_code == 403
    assert acting.post("/ui/test/retry-all", {"csrf": csrf}).status_code == 303


def test_a_read_tokens_action_gets_the_apis_403(acting: Console) -> None:
    acting.sign_in(READER)
    answer = acting.post("/ui/test/retry-all", {"csrf": acting.csrf()})
    assert answer.status_code == 403
    assert "token viewer may only read; this request needs a write token" in answer.text
    assert acting.refused == ["scope"]  # counted as the API counts a bearer token's


def test_an_action_lands_in_the_audit_log_under_the_tokens_name(
    acting: Console, broker: str
) -> None:
    backend = open_backend(broker)
    backend.add_dead_letters(
        [DeadLetter("nightly@1", "default", "{}", "boom", datetime(2026, 12, 6, tzinfo=UTC), 3)]
    )
    backend.close()
    acting.sign_in(WRITER)
    answer = acting.post("/ui/test/retry-all", {"csrf": acting.csrf()})
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/")
    assert '<li class="message info">requeued 1</li>' in acting.get("/ui/").text
    audit = acting.client.get(
        "/v1/audit", base_url=ORIGIN, headers={"Authorization": f"Bearer {READER.token}"}
    )
    assert [(r["action"], r["by"]) for r in audit.json["records"]] == [("requeue_dead", "ops")]


def test_with_public_reads_an_action_still_needs_a_session(tmp_path: Path, broker: str) -> None:
    console = make_console(tmp_path, broker, public_read=True, extra=[retry_all_page])
    assert console.get("/ui/").status_code == 200
    answer = console.post("/ui/test/retry-all", {"csrf": ""})
    assert answer.status_code == 403
    assert "actions need you signed in with a write token: sign in first" in answer.text
    console.context.close()


# --- every node accepts a session any node opened ------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_session_opened_on_one_node_is_good_on_another(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        broker = f"{server.url}"
    else:
        broker = f"sqlite:///{tmp_path / 'shared.db'}"
    first = make_console(tmp_path / "a", broker)
    second = make_console(tmp_path / "b", broker)
    value = str(cookie_of(first.sign_in(WRITER), "beatd_session")["value"])
    second.client.set_cookie("beatd_session", value, domain="127.0.0.1", path="/ui")
    assert signed_in_page(second)
    first.context.close()
    second.context.close()


def test_a_backend_that_does_not_answer_gets_a_page_saying_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    console = make_console(tmp_path, f"redis://127.0.0.1:{port}/0")
    console.client.set_cookie("beatd_session", "x.y", domain="127.0.0.1", path="/ui")
    answer = console.get("/ui/")
    assert answer.status_code == 503
    assert "the backend did not answer, so sessions cannot be checked: " in answer.text
    assert console.sign_in(WRITER).status_code == 503
    console.context.close()


def test_signing_out_ends_the_tokens_other_sessions_but_not_a_later_sign_in(
    console: Console,
) -> None:
    console.sign_in(WRITER)
    copied = console.client.get_cookie("beatd_session", domain="127.0.0.1", path="/ui")
    assert copied is not None
    assert console.post("/ui/signout", {"csrf": console.csrf()}).status_code == 303
    console.client.set_cookie("beatd_session", copied.value, domain="127.0.0.1", path="/ui")
    refused = console.get("/ui/")
    assert refused.status_code == 303 and refused.headers["Location"].startswith("/ui/signin")
    console.sign_in(WRITER)  # at the same (fake) time: a new generation, honoured
    assert console.get("/ui/").status_code == 200
