"""The console's in-process API calls (beatd.console.api_caller): the API's own answers, by
route name, as the signed-in session's token, and nobody else's way to that token."""

from __future__ import annotations

import pytest
from flask import request

from beatd.console.api_caller import CONSOLE_TOKEN, ApiFailure, api, encode_query
from beatd.http.tokens import ApiToken, TokenTable
from tests.console.conftest import ORIGIN, READER, WRITER, Console


def token_of(console: Console, name: str) -> ApiToken:
    table: TokenTable = console.tokens()
    return next(t for t in table.tokens if t.name == name)


def test_a_get_answers_what_the_api_answers_a_bearer_token(console: Console) -> None:
    bearer = console.get(
        "/v1/next-runs/nightly",
        query_string={"count": 3},
        headers={"Authorization": f"Bearer {READER.token}"},
    )
    with console.app.test_request_context("/ui/", base_url=ORIGIN):
        request.environ[CONSOLE_TOKEN] = token_of(console, "viewer")
        body = api().get("next_runs", path={"name": "nightly"}, query={"count": 3})
    assert bearer.status_code == 200 and body == bearer.json


def test_a_refused_get_raises_the_apis_errors(console: Console) -> None:
    with console.app.test_request_context("/ui/", base_url=ORIGIN):
        request.environ[CONSOLE_TOKEN] = token_of(console, "viewer")
        with pytest.raises(ApiFailure) as refused:
            api().get("get_entry", path={"name": "no/such"})
    assert refused.value.status == 404
    assert [e["field"] for e in refused.value.errors] == ["name"]
    assert refused.value.message == refused.value.errors[0]["message"]


def test_without_a_session_the_api_asks_for_a_token(console: Console) -> None:
    with (
        console.app.test_request_context("/ui/", base_url=ORIGIN),
        pytest.raises(ApiFailure) as refused,
    ):
        api().get("status")
    assert (refused.value.status, refused.value.message) == (
        401,
        "this request needs a token: Authorization: Bearer TOKEN",
    )


def test_a_send_returns_a_refusal_for_the_page_to_show(console: Console) -> None:
    with console.app.test_request_context("/ui/", base_url=ORIGIN):
        request.environ[CONSOLE_TOKEN] = token_of(console, "viewer")
        refused = api().send("trigger", path={"name": "nightly"}, body={})
        request.environ[CONSOLE_TOKEN] = token_of(console, "ops")
        done = api().send("trigger", path={"name": "nightly"}, body={})
    assert (refused.ok, refused.status) == (False, 403)
    assert [e["message"] for e in refused.errors] == [
        "token viewer may only read; this request needs a write token"
    ]
    assert done.ok and done.body["status"] == "published" and done.errors == []


def test_the_method_of_a_route_is_its_own(console: Console) -> None:
    with console.app.test_request_context("/ui/", base_url=ORIGIN):
        assert [api().method_of(n) for n in ("remove_entry", "replace_entry", "add_entry")] == [
            "DELETE",
            "PUT",
            "POST",
        ]
        with pytest.raises(LookupError, match=r"^the API has no route named 'nope'$"):
            api().method_of("nope")


def test_no_header_reaches_the_session_token(console: Console) -> None:
    """Only the console, in process, sets environ["beatd.session_token"]: a client's header of
    that name becomes HTTP_* and the API still wants a token."""
    for name in ("beatd.session_token", "Beatd-Session-Token", "beatd_session_token"):
        answer = console.get("/v1/status", headers={name: WRITER.token})
        assert answer.status_code == 401, name


def test_a_query_is_encoded_as_the_api_reads_it() -> None:
    query = {"entry": ["a b", "c"], "limit": 5, "paused": False, "since": None, "q": "x&y"}
    assert encode_query(query) == "entry=a+b&entry=c&limit=5&paused=false&q=x%26y"


def test_a_conditional_get_is_none_while_the_etag_holds_and_refusals_still_raise(
    console: Console,
) -> None:
    with console.app.test_request_context("/ui/", base_url=ORIGIN):
        request.environ[CONSOLE_TOKEN] = token_of(console, "viewer")
        first = api().get_unless("entry_index", None, query={"sort": "name"})
        assert first is not None and first.status == 200
        tag = first.headers["ETag"]
        assert api().get_unless("entry_index", tag, query={"sort": "name"}) is None
        again = api().get_unless("entry_index", '"other"', query={"sort": "name"})
        assert again is not None and again.body == first.body
        with pytest.raises(ApiFailure) as refused:
            api().get_unless("entry_index", tag, query={"sort": "due"})
    assert refused.value.status == 422
    with (
        console.app.test_request_context("/ui/", base_url=ORIGIN),
        pytest.raises(ApiFailure) as unsigned,
    ):
        api().get_unless("entry_index", tag, query={"sort": "name"})
    assert unsigned.value.status == 401
