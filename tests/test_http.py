"""The HTTP API's server and its rules (beatd.http): a real waitress server on a free loopback
port, in front of a real SQLite file, asked with urllib."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from beatd.backends import DeadLetter, open_backend
from beatd.cli import main
from beatd.cli.api import allowed_hosts
from beatd.config import load_config
from beatd.http import all_routes
from beatd.http.app import JSON_PIECE, Access, create_app, json_text
from beatd.http.context import ApiContext
from beatd.http.metrics import ApiMetrics
from beatd.http.routes import Reply, Route
from beatd.http.server import ApiServer, ServerSettings
from beatd.http.tokens import Scope, TokenTable, new_token, read_token_file
from beatd.nodes import NodeRecord, NodeRole
from tests.test_controls_cli import arrange_horizon
from tests.test_history_cli import (
    SCHEDULES,
    gone_queued,
    nightly_dead,
    nightly_missed,
    nightly_success,
)


class AnyHeaders:
    """Equal to any headers, for comparing whole answers whose headers do not matter."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message)


ANY_HEADERS: Any = AnyHeaders()
READER, WRITER = new_token("dashboards", Scope.READ), new_token("ops", Scope.WRITE)


@dataclass
class Api:
    base: str
    server: ApiServer
    broker: str
    schedules: Path

    def ask(
        self,
        path: str,
        token: str | None = READER.token,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Message, Any]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.headers, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.loads(error.read())


def tokens(tmp_path: Path) -> TokenTable:
    path = tmp_path / "api-tokens"
    path.write_text(f"{READER.line}\n{WRITER.line}\n")
    path.chmod(0o600)
    return read_token_file(path)


def echo(_request: Any) -> Reply:
    return Reply(200, {"ok": True})


# A write route of the tests' own, to see the rules every write route gets.
ECHO = Route("POST", "/v1/echo", "echo", "Echo.", Scope.WRITE, echo, body={"type": "object"})


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'beatd.db'}"


@pytest.fixture
def schedules(tmp_path: Path) -> Path:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    return folder


def start(tmp_path: Path, broker: str, schedules: Path, *, public_read: bool = False) -> Api:
    config = load_config([str(schedules)])
    context = ApiContext(lambda: open_backend(broker), lambda: config)
    table = tokens(tmp_path)
    access = Access(lambda: table, allowed_hosts("127.0.0.1", 0, ()), public_read)
    app = create_app([*all_routes(context), ECHO], access)
    server = ApiServer(app, ServerSettings("127.0.0.1", 0, threads=2)).start()
    return Api(f"http://127.0.0.1:{server.port}", server, broker, schedules)


@pytest.fixture
def api(tmp_path: Path, broker: str, schedules: Path) -> Iterator[Api]:
    served = start(tmp_path, broker, schedules)
    yield served
    served.server.stop()


def seed(broker: str) -> None:
    backend = open_backend(broker)
    backend.import_history([nightly_success(), nightly_dead(), gone_queued()], [nightly_missed()])
    backend.close()


def cli_history(broker: str, schedules: Path, *args: str) -> list[Any]:
    result = CliRunner().invoke(
        main, ["history", "--json", "-s", str(schedules), "--broker", broker, *args]
    )
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


ERROR_KEYS = {"entry", "field", "message", "pointer"}


def only_error(body: Any) -> dict[str, Any]:
    (error,) = body["errors"]
    assert set(error) == ERROR_KEYS
    return dict(error)


# --- what every request meets ------------------------------------------------------------------


_ENTRY = {"name": "r-ü", "version": 3, "definition": {"task": "t", "every": "1h", "args": [1]}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty_object"),
        pytest.param([], id="empty_list"),
        pytest.param([_ENTRY] * JSON_PIECE, id="one_piece"),
        pytest.param([_ENTRY] * (JSON_PIECE + 1), id="a_piece_and_one"),
        pytest.param({"entries": [_ENTRY] * (3 * JSON_PIECE), "next_after": None}, id="a_page"),
        pytest.param({"a": {"b": list(range(2 * JSON_PIECE + 7)), "c": "ü"}}, id="nested"),
        pytest.param({1: "x", "y": [None] * (JSON_PIECE + 2)}, id="keys_not_text"),
        pytest.param([[0] * (JSON_PIECE + 1)] * 2, id="lists_of_lists"),
    ],
)
def test_an_answer_encoded_in_pieces_is_the_text_json_dumps_makes(body: Any) -> None:
    assert json_text(body) == json.dumps(body, ensure_ascii=False)


def test_no_token_is_401_with_the_bearer_challenge(api: Api) -> None:
    status, headers, body = api.ask("/v1/history", token=None)
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="beatd"'
    assert only_error(body) == {
        "entry": None,
        "field": "Authorization",
        "message": "this request needs a token: Authorization: Bearer TOKEN",
        "pointer": None,
    }


def test_an_unknown_token_is_401_and_is_never_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    status, _, body = api.ask("/v1/history", token="beatd_guessed")
    assert status == 401
    assert only_error(body)["message"] == "the token is not in the API token file"
    assert "beatd_guessed" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.name == "beatd.http.app"] == [
        "API request refused: unknown token method=GET path=/v1/history"
    ]


def test_a_malformed_authorization_header_is_401(api: Api) -> None:
    status, _, body = api.ask("/v1/history", token=None, headers={"Authorization": "Basic x"})
    assert status == 401
    assert only_error(body)["message"] == "the Authorization header must be `Bearer TOKEN`"


def test_a_read_token_cannot_write_and_a_write_token_can(api: Api) -> None:
    status, _, body = api.ask("/v1/echo", method="POST", body=b"{}")
    assert status == 403
    assert only_error(body)["message"] == (
        "token dashboards may only read; this request needs a write token"
    )
    assert api.ask("/v1/echo", WRITER.token, "POST", b"{}")[0] == 200
    assert api.ask("/v1/history", WRITER.token)[0] == 200


def test_another_host_header_is_421(api: Api) -> None:
    status, _, body = api.ask("/v1/history", headers={"Host": "rebound.example:9479"})
    assert status == 421
    assert only_error(body) == {
        "entry": None,
        "field": "Host",
        "message": "this server does not answer to the host 'rebound.example:9479'; add it to "
        "--api-allowed-hosts if that is the name clients use",
        "pointer": None,
    }
    assert api.ask("/v1/history", headers={"Host": "localhost:1"})[0] == 200


def test_a_body_over_one_mib_is_413(api: Api) -> None:
    body = json.dumps({"pad": "x" * (1024 * 1024)}).encode()
    status, _, answer = api.ask("/v1/echo", WRITER.token, "POST", body)
    assert status == 413
    assert only_error(answer)["message"] == "the request body is larger than 1024 KiB"


def test_unknown_paths_and_methods_answer_json(api: Api) -> None:
    status, _, body = api.ask("/v1/nothing")
    assert status == 404
    assert only_error(body)["message"] == "no such path in the API: GET /v1/openapi.json lists them"
    status, headers, body = api.ask("/v1/history", WRITER.token, "DELETE")
    assert (status == 405 and headers["Allow"] == "GET, HEAD, OPTIONS") or "GET" in headers["Allow"]
    assert only_error(body)["message"] == (
        "this path does not take that method: GET /v1/openapi.json lists them"
    )


def test_answers_carry_no_cors_headers_and_are_not_cached(api: Api) -> None:
    _, headers, _ = api.ask("/v1/history", headers={"Origin": "https://elsewhere.example"})
    assert not [name for name, _ in headers.items() if name.lower().startswith("access-control-")]
    assert headers["Cache-Control"] == "no-store"


def test_public_read_answers_reads_without_a_token_but_not_writes(
    tmp_path: Path, broker: str, schedules: Path
) -> None:
    served = start(tmp_path, broker, schedules, public_read=True)
    try:
        assert served.ask("/v1/history", token=None)[0] == 200
        assert served.ask("/v1/echo", None, "POST", b"{}")[0] == 401
    finally:
        served.server.stop()


HALF_A_REQUEST = b"POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n\r\n{"


def test_a_slow_client_holds_no_worker_thread(api: Api) -> None:
    """Two server threads, three clients that send half a request and stall: a whole request
    is still answered at once, since waitress reads requests before handing them on."""
    port = int(api.base.rsplit(":", 1)[1])
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for connection in stalled:
            connection.sendall(
                b"POST /v1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n\r\n{"
            )
        assert api.ask("/v1/history")[0] == 200
    finally:
        for connection in stalled:
            connection.close()


# --- GET /v1/history ---------------------------------------------------------------------------


def test_history_answers_what_beatd_history_json_prints(api: Api) -> None:
    seed(api.broker)
    status, _, body = api.ask("/v1/history?limit=10")
    assert status == 200
    assert body == {
        "records": cli_history(api.broker, api.schedules, "-n", "10"),
        "cut_short": False,
    }
    assert [record["type"] for record in body["records"]].count("missed") == 1


def test_history_filters_as_the_command_does(api: Api) -> None:
    seed(api.broker)
    _, _, body = api.ask("/v1/history?entry=nightly&outcome=dead_lettered&outcome=missed")
    expected = cli_history(
        api.broker, api.schedules, "nightly", "--outcome", "dead_lettered", "--outcome", "missed"
    )
    assert body["records"] == expected and len(expected) == 2


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("limit=0", "limit", "limit must be a whole number from 1 to 10000, got '0'"),
        ("limit=ten", "limit", "limit must be a whole number from 1 to 10000, got 'ten'"),
        (
            "outcome=succeded",
            "outcome",
            "unknown outcome 'succeded': use one of succeeded, retried, failed, expired, "
            "dead_lettered, crashed, released, lost, queued, running, overdue, unknown, missed; "
            "did you mean 'succeeded'?",
        ),
        (
            "since=yesterday",
            "since",
            "cannot read 'yesterday': give a duration back from now (such as 30m or 2d) or an "
            "ISO 8601 time (such as 2026-12-05T01:00:00Z)",
        ),
        ("entry=", "entry", "entry is empty: leave it out, or give a value"),
    ],
)
def test_bad_history_parameters_are_422_naming_the_field(
    api: Api, query: str, field: str, message: str
) -> None:
    status, _, body = api.ask(f"/v1/history?{query}")
    assert status == 422
    assert only_error(body) == {"entry": None, "field": field, "message": message, "pointer": None}


def test_the_openapi_document_lists_every_route(api: Api) -> None:
    status, _, body = api.ask("/v1/openapi.json")
    assert status == 200
    assert body["openapi"] == "3.1.0"
    served = {(route.method.lower(), route.path) for route in all_routes(context_for(api))}
    listed = {(method, path) for path, item in body["paths"].items() for method in item}
    assert listed == served


def context_for(api: Api) -> ApiContext:
    return ApiContext(lambda: open_backend(api.broker), lambda: None)


# --- dead letters -------------------------------------------------------------------------------


def letters(broker: str) -> list[DeadLetter]:
    failed = datetime(2026, 12, 5, 3, 0, 0, 250_000, tzinfo=UTC)
    body = json.dumps({"v": 1, "id": "tick@2026-12-05T03:00:00Z", "task": "t.tick"})
    made = [
        DeadLetter("tick@2026-12-05T03:00:00Z", "default", body, "ValueError: bad", failed, 3),
        DeadLetter("gone@x", "reports", "not json", "unknown task", failed, 1),
    ]
    backend = open_backend(broker)
    backend.add_dead_letters(made)
    backend.close()
    return made


def test_dead_letters_answer_what_dead_list_json_prints(api: Api) -> None:
    letters(api.broker)
    status, _, body = api.ask("/v1/dead-letters")
    printed = CliRunner().invoke(main, ["dead", "list", "--json", "--broker", api.broker])
    assert status == 200 and printed.exit_code == 0
    assert body == {"dead_letters": json.loads(printed.stdout), "total": 2}
    assert [letter["id"] for letter in body["dead_letters"]] == [
        "tick@2026-12-05T03:00:00Z",
        "gone@x",
    ]


def test_a_retry_requeues_one_and_the_audit_log_names_the_token(api: Api) -> None:
    letters(api.broker)
    path = "/v1/dead-letters/tick@2026-12-05T03:00:00Z/retry"
    assert api.ask(path, method="POST")[0] == 403
    assert api.ask(path, WRITER.token, "POST") == (200, ANY_HEADERS, {"requeued": 1})
    backend = open_backend(api.broker)
    try:
        assert [d.id for d in backend.dead_letters()] == ["gone@x"]
        (record,) = backend.audit()
        assert (record.action, record.entry, record.by) == ("requeue_dead", "tick", "ops")
        assert record.detail == {"run_id": "tick@2026-12-05T03:00:00Z", "requeued": 1}
    finally:
        backend.close()
    status, _, body = api.ask(path, WRITER.token, "POST")
    assert status == 404
    assert only_error(body) == {
        "entry": None,
        "field": "id",
        "message": "no dead letter with id 'tick@2026-12-05T03:00:00Z'",
        "pointer": None,
    }


def test_retry_all_requeues_every_dead_letter(api: Api) -> None:
    letters(api.broker)
    assert api.ask("/v1/dead-letters/retry", WRITER.token, "POST")[2] == {"requeued": 2}
    assert api.ask("/v1/dead-letters")[2] == {"dead_letters": [], "total": 0}


def test_audit_answers_what_beatd_audit_json_prints(api: Api) -> None:
    letters(api.broker)
    api.ask("/v1/dead-letters/retry", WRITER.token, "POST")
    status, _, body = api.ask("/v1/audit?entry=tick")
    assert status == 200  # a requeue of all is recorded under each letter's entry
    assert [r["detail"]["run_id"] for r in body["records"]] == ["tick@2026-12-05T03:00:00Z"]
    _, _, body = api.ask("/v1/audit?since=1h&limit=5")
    printed = CliRunner().invoke(main, ["audit", "--json", "--broker", api.broker])
    assert printed.exit_code == 0
    assert body["records"] == json.loads(printed.stdout)
    assert sorted((r["action"], r["entry"], r["by"]) for r in body["records"]) == [
        ("requeue_dead", "gone", "ops"),
        ("requeue_dead", "tick", "ops"),
    ]


# --- status -------------------------------------------------------------------------------------


def without_now(report: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key != "now"}


def test_status_answers_what_beatd_status_json_prints(api: Api) -> None:
    seed(api.broker)
    letters(api.broker)
    status, _, body = api.ask("/v1/status?entry=nightly&entry=tick")
    printed = CliRunner().invoke(
        main, ["status", "--json", "-s", str(api.schedules), "--broker", api.broker]
    )
    assert status == 200 and printed.exit_code == 0
    assert body.pop("warnings") == []
    assert without_now(body) == without_now(json.loads(printed.stdout))
    assert [row["entry"] for row in body["entries"]] == ["nightly", "tick"]
    assert {"queue": "reports", "depth": 0, "dead_letters": 1} in body["queues"]


def test_nodes_answers_the_nodes_beatd_status_json_lists(api: Api) -> None:
    backend = open_backend(api.broker)
    lease = backend.acquire_lease("a", 30, "cfg-1")
    assert lease is not None
    backend.write_node(
        NodeRecord("a", NodeRole.LEADER, "1.0", "cfg-1", "2025b", "system", None), 30
    )
    backend.write_node(
        NodeRecord("b", NodeRole.STANDBY, "1.0", "cfg-1", "2026a", "tzdata", "[::1]:9479"), 30
    )
    backend.close()
    status, _, body = api.ask("/v1/nodes")
    printed = CliRunner().invoke(
        main, ["status", "--json", "-s", str(api.schedules), "--broker", api.broker]
    )
    assert status == 200 and printed.exit_code == 0
    assert body == {"nodes": json.loads(printed.stdout)["nodes"]}
    for row in body["nodes"]:
        del row["last_seen"]
    assert body["nodes"] == [
        {
            "node": "a",
            "role": "leader",
            "version": "1.0",
            "config": "cfg-1",
            "tz_version": "2025b",
            "tz_source": "system",
            "api_addr": None,
            "same_config": True,
            "same_tz": True,
        },
        {
            "node": "b",
            "role": "standby",
            "version": "1.0",
            "config": "cfg-1",
            "tz_version": "2026a",
            "tz_source": "tzdata",
            "api_addr": "[::1]:9479",
            "same_config": True,
            "same_tz": False,
        },
    ]


def test_status_of_an_unknown_entry_is_404_with_a_suggestion(api: Api) -> None:
    status, _, body = api.ask("/v1/status?entry=nighty")
    assert status == 404
    assert only_error(body) == {
        "entry": None,
        "field": "entry",
        "message": "no entry 'nighty' in the schedule files; did you mean 'nightly'?",
        "pointer": None,
    }


# --- controls -----------------------------------------------------------------------------------


def post(api: Api, path: str, body: Any = None, token: str = WRITER.token) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    status, _, answer = api.ask(path, token, "POST", data, headers)
    return status, answer


def test_a_trigger_publishes_one_manual_run_and_a_key_makes_it_once(api: Api) -> None:
    status, body = post(api, "/v1/entries/tick/trigger", {"kwargs": {"n": 1}})
    assert status == 201 and body["status"] == "published" and body["message"] is None
    assert body["run_id"].startswith("tick@manual-")
    first = post(api, "/v1/entries/tick/trigger", {"idempotency_key": "incident-1"})
    again = post(api, "/v1/entries/tick/trigger", {"idempotency_key": "incident-1"})
    assert first == (
        201,
        {"run_id": "tick@manual-incident-1", "status": "published", "message": None},
    )
    assert again == (
        200,
        {
            "run_id": "tick@manual-incident-1",
            "status": "duplicate",
            "message": "duplicate: this idempotency key was already used for "
            "tick@manual-incident-1; nothing more was published",
        },
    )
    _, _, audit = api.ask("/v1/audit?entry=tick")
    assert {(r["action"], r["by"]) for r in audit["records"]} == {("trigger", "ops")}


def test_a_trigger_of_a_paused_entry_is_409_in_the_commands_words(api: Api) -> None:
    status, body = post(api, "/v1/entries/tick/pause", {"reason": "db migration", "until": "8h"})
    assert status == 200 and body["note"] is None
    paused = body["paused"]["tick"]
    assert (paused["reason"], paused["by"]) == ("db migration", "ops")
    status, body = post(api, "/v1/entries/tick/trigger", {})
    assert status == 409
    assert only_error(body) == {
        "entry": "tick",
        "field": None,
        "message": f"tick is paused (by ops, reason 'db migration', since {paused['at']}, until "
        f"{paused['until']}); nothing was published: resume it with `beatd resume`, or add --force",
        "pointer": None,
    }
    assert post(api, "/v1/entries/tick/trigger", {"force": True})[0] == 201
    assert post(api, "/v1/entries/tick/resume") == (200, {"said": ["resumed tick"]})
    assert post(api, "/v1/entries/tick/resume") == (200, {"said": ["tick was not paused"]})


def test_pause_all_says_later_entries_are_not_paused_and_resume_by_glob(api: Api) -> None:
    status, body = post(api, "/v1/pause", {"all": True, "reason": "freeze"})
    assert status == 200 and sorted(body["paused"]) == ["nightly", "tick"]
    assert body["note"] == "entries added to the schedule files later are not paused"
    assert post(api, "/v1/resume", {"match": "ni*"}) == (200, {"said": ["resumed nightly"]})
    status, body = post(api, "/v1/resume", {"match": "x*"})
    assert status == 404 and only_error(body)["message"] == "no entry matches 'x*'"


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "message"),
    [
        ("/v1/entries/tock/trigger", {}, 404, "name",
         "no entry 'tock' in the schedule files; did you mean 'tick'?"),
        ("/v1/entries/tick/trigger", {"args": {"a": 1}}, 422, "args", "args must be an array"),
        ("/v1/entries/tick/trigger", {"when": 1}, 422, "when",
         "unknown member 'when': use args, force, idempotency_key, kwargs"),
        ("/v1/entries/tick/trigger", {"idempotency_key": "two words"}, 422, "idempotency_key",
         "'two words' cannot be part of a run id: give 1 to 200 letters, digits, '_', '.', ':' "
         "or '-' (such as incident-4711)"),
        ("/v1/entries/tick/trigger", {"idempotency_key": ""}, 422, "idempotency_key",
         "'' cannot be part of a run id: give 1 to 200 letters, digits, '_', '.', ':' or '-' "
         "(such as incident-4711)"),
        ("/v1/entries/tick/pause", {}, 422, "reason", "reason is required"),
        ("/v1/entries/tick/pause", {"reason": "x", "until": "2026-12-05T07:00:00"}, 422, "until",
         "'2026-12-05T07:00:00' has no offset, so it could mean any zone: add one (Z for UTC, or "
         "such as +01:00)"),
        ("/v1/pause", {"reason": "x", "entries": ["tick", "nope"]}, 404, "entries",
         "no entry 'nope'"),
    ],
)  # fmt: skip
def test_bad_control_requests_name_the_field_in_the_commands_words(
    api: Api, path: str, body: Any, status: int, field: str, message: str
) -> None:
    answered, answer = post(api, path, body)
    assert answered == status
    error = only_error(answer)
    assert (error["field"], error["message"]) == (field, message)


def test_a_backfill_dry_run_lists_then_publishes_only_what_is_absent(api: Api) -> None:
    backend = open_backend(api.broker)
    horizon = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    arrange_horizon(backend, api.schedules, horizon, name="tick")
    backend.close()
    span = {"from": f"{horizon - timedelta(seconds=30):%Y-%m-%dT%H:%M:%S}Z",
            "to": f"{horizon + timedelta(seconds=1):%Y-%m-%dT%H:%M:%S}Z"}  # fmt: skip
    status, body = post(api, "/v1/entries/tick/backfill", {**span, "dry_run": True})
    ids = [f"tick@{horizon - timedelta(seconds=s):%Y-%m-%dT%H:%M:%SZ}" for s in (30, 20, 10, 0)]
    assert status == 200
    assert body == {
        "runs": [{"id": i, "published": None} for i in ids],
        "published": None,
        "already_there": None,
        "dry_run": True,
    }
    status, body = post(api, "/v1/entries/tick/backfill", span)
    assert (status, body["published"], body["already_there"]) == (200, 3, 1)
    assert [run["published"] for run in body["runs"]] == [True, True, True, False]
    too_many = {**span, "to": "2999-01-01T00:00:00Z", "max": 10}
    status, body = post(api, "/v1/entries/tick/backfill", too_many)
    assert (status, only_error(body)["field"]) == (422, "max")
    past_horizon = {**span, "to": f"{horizon + timedelta(seconds=21):%Y-%m-%dT%H:%M:%S}Z"}
    status, body = post(api, "/v1/entries/tick/backfill", past_horizon)
    assert (status, only_error(body)["field"]) == (422, "to")
    assert only_error(body)["message"].endswith(
        "later slots are the scheduler's to publish; end the range at or before it"
    )


# --- the API's own metrics ----------------------------------------------------------------------


def test_requests_are_counted_by_route_and_code_and_refused_tokens_by_why(
    tmp_path: Path, broker: str, schedules: Path
) -> None:
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    config = load_config([str(schedules)])
    context = ApiContext(lambda: open_backend(broker), lambda: config)
    table = tokens(tmp_path)
    access = Access(
        lambda: table,
        allowed_hosts("127.0.0.1", 0, ()),
        refused=lambda why: metrics.refused.labels(why).inc(),
    )
    app = metrics.wrap(create_app([*all_routes(context), ECHO], access))
    server = ApiServer(app, ServerSettings("127.0.0.1", 0, threads=2)).start()
    api = Api(f"http://127.0.0.1:{server.port}", server, broker, schedules)
    try:
        api.ask("/v1/history")
        api.ask("/v1/history")
        api.ask("/v1/history", token=None)
        api.ask("/v1/history", token="beatd_wrong")
        api.ask("/v1/echo", method="POST", body=b"{}")
        api.ask("/v1/nowhere")
    finally:
        server.stop()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("beatd_api_requests_total", route="history", code="200") == 2
    assert sample("beatd_api_requests_total", route="history", code="401") == 2
    assert sample("beatd_api_requests_total", route="echo", code="403") == 1
    assert sample("beatd_api_requests_total", route="none", code="404") == 1
    assert sample("beatd_api_request_duration_seconds_count", route="history") == 4
    assert sample("beatd_api_auth_failures_total", reason="missing") == 1
    assert sample("beatd_api_auth_failures_total", reason="unknown") == 1
    assert sample("beatd_api_auth_failures_total", reason="scope") == 1
