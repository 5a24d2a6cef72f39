"""review18: an independent review of issue 18 (runtime entries through the CLI, the Python client
and the HTTP API; tokens; node records), with real processes: one `beatd run` per backend
(SQLite, and a redis-server of its own) serving the API on a free port with a token file,
shared by the module's tests and asked with urllib and `beatd.Client`.

The tests under "defects" pinned defects the review found (strict xfails, fixed on branch
fix18); the others pin a promise of the issue that held at the review."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beatd import Client
from beatd.client import ClientError
from beatd.config.convert import ENTRY_NAME_RULE
from beatd.http.tokens import Scope, new_token
from tests.processes import REPO, Proc, Processes
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

FILES = (
    "entries:\n  clock:\n    task: t.clock\n    every: 1s\n"
    "  filed:\n    task: t.filed\n    every: 1h\n"
)
JSON = "application/json"


@dataclass
class Daemon:
    """A `beatd run` serving the API, its backend URL and its tokens."""

    procs: Processes
    proc: Proc
    api: str
    write: str
    read: str
    tokens: Path

    @property
    def file(self) -> Path:
        return self.procs.schedules / "s.yaml"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "write",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """The status, headers and JSON body of one request (token: "write", "read" or None)."""
        sent = {"Content-Type": JSON, **(headers or {})}
        if token is not None:
            sent["Authorization"] = "Bearer " + (self.write if token == "write" else self.read)
        if data is None and body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, _lower(answer.headers), json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, _lower(error.headers), json.loads(error.read() or b"null")


def _start(directory: Path, broker: str) -> tuple[Processes, Daemon]:
    procs = Processes(directory, broker)
    procs.schedule(FILES)
    write, read = new_token("ops", Scope.WRITE), new_token("reader", Scope.READ)
    tokens = directory / "api-tokens"
    tokens.write_text(f"{write.line}\n{read.line}\n")
    tokens.chmod(0o600)
    port = free_port()
    proc = procs.scheduler(
        "a", "--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens), "--metrics-addr", "off"
    )
    wait_for(lambda: proc.count("became leader"), what="the leader")
    wait_for(lambda: proc.count("HTTP API at"), what="the API")
    api = f"http://127.0.0.1:{port}"
    return procs, Daemon(procs, proc, api, write.token, read.token, tokens)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp(f"review18-{request.param}")
    server = None
    if request.param == "redis":
        server = RedisServer(directory / "redis").start()
        broker = server.url
    else:
        broker = f"sqlite:///{directory / 'beatd.db'}"
    procs, started = _start(directory, broker)
    try:
        yield started
    finally:
        procs.close()
        if server is not None:
            server.stop()


def _lower(headers: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in headers.items()}


def _one_error(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and len(body["errors"]) == 1, body
    error: dict[str, Any] = body["errors"][0]
    return error


# --- promises that hold -------------------------------------------------------------------


def test_refusals_answer_with_the_documented_status_and_words(daemon: Daemon) -> None:
    entry = {"name": "r-refusals", "task": "t.r", "every": "1h"}
    status, _, body = daemon.call("POST", "/v1/entries", entry, token=None)
    assert status == 401
    assert _one_error(body)["message"] == "this request needs a token: Authorization: Bearer TOKEN"
    status, _, body = daemon.call("POST", "/v1/entries", entry, token="read")
    assert (status, _one_error(body)["message"]) == (
        403,
        "token reader may only read; this request needs a write token",
    )
    status, headers, body = daemon.call(
        "GET", "/v1/entries", headers={"Host": "evil.example", "Origin": "http://evil.example"}
    )
    assert status == 421
    assert _one_error(body)["message"] == (
        "this server does not answer to the host 'evil.example'; add it to "
        "--api-allowed-hosts if that is the name clients use"
    )
    status, headers, _ = daemon.call(
        "GET", "/v1/entries", headers={"Origin": "http://evil.example"}
    )
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    status, _, body = daemon.call("POST", "/v1/entries", {**entry, "name": "filed"})
    assert (status, _one_error(body)["message"]) == (
        409,
        f"entry filed: the name is taken by a file entry in {daemon.file}; names are unique "
        "across schedule files and runtime entries: choose another name",
    )
    status, _, body = daemon.call("PUT", "/v1/entries/filed", {"task": "t.f", "every": "2h"})
    assert status == 409 and f"edit {daemon.file} and reload" in _one_error(body)["message"]
    big = {**entry, "kwargs": {"blob": "x" * (64 * 1024)}}
    status, _, body = daemon.call("POST", "/v1/entries", big)
    assert (status, _one_error(body)["field"], _one_error(body)["pointer"]) == (
        413,
        "kwargs",
        "/kwargs",
    )
    huge = json.dumps({**entry, "kwargs": {"blob": "x" * (1024 * 1024)}}).encode()
    status, _, body = daemon.call("POST", "/v1/entries", data=huge)
    assert (status, _one_error(body)["message"]) == (
        413,
        "the request body is larger than 1024 KiB",
    )
    status, headers, _ = daemon.call("POST", "/v1/entries", entry)
    assert status == 201
    version = int(headers["etag"].strip('"'))
    stale = {"If-Match": f'"{version + 7}"'}
    status, _, body = daemon.call(
        "PUT", "/v1/entries/r-refusals", {"task": "t.r", "every": "2h"}, headers=stale
    )
    assert (status, _one_error(body)["message"]) == (
        412,
        f"entry r-refusals is at version {version}, not the expected {version + 7}: it changed "
        "since it was read; nothing was written: read it again and retry",
    )
    assert daemon.write not in daemon.proc.log.read_text()
    assert daemon.read not in daemon.proc.log.read_text()


def test_two_writers_creating_one_name_get_one_201_and_the_rest_409(daemon: Daemon) -> None:
    def create(every: int) -> int:
        entry = {"name": "r-race", "task": "t.r", "every": f"{every}h"}
        return daemon.call("POST", "/v1/entries", entry)[0]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(create, range(1, 7)))
    assert codes == [201, 409, 409, 409, 409, 409]
    _, headers, _ = daemon.call("GET", "/v1/entries/r-race", token="read")
    version = headers["etag"]

    def change(every: int) -> int:
        body = {"task": "t.r", "every": f"{every}h"}
        return daemon.call("PUT", "/v1/entries/r-race", body, headers={"If-Match": version})[0]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(change, range(10, 16)))
    assert codes == [200, 412, 412, 412, 412, 412]


def test_the_audit_log_holds_an_http_change_before_and_after_under_the_tokens_name(
    daemon: Daemon,
) -> None:
    assert (
        daemon.call("POST", "/v1/entries", {"name": "r-audit", "task": "t.a", "every": "1h"})[0]
        == 201
    )
    assert daemon.call("PUT", "/v1/entries/r-audit", {"task": "t.a", "every": "2h"})[0] == 200
    status, _, body = daemon.call("GET", "/v1/audit?entry=r-audit", token="read")
    assert status == 200
    newest = body["records"][0]
    assert (newest["action"], newest["by"]) == ("entry.set", "ops")
    assert newest["before"]["definition"]["every"] == "1h"
    assert newest["after"]["definition"]["every"] == "2h"
    assert newest["after"]["version"] == newest["before"]["version"] + 1


def test_the_client_over_http_and_over_the_backend_url_refuse_in_the_same_words(
    daemon: Daemon,
) -> None:
    over_http = Client(daemon.api, token=daemon.write)
    direct = Client(daemon.procs.broker, by="rev@host")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("filed", {"task": "t", "every": "1h"}),
        ("r-c1", {"task": "t", "cron": "61 * * * *"}),
        ("r-c2", {"task": "t", "at": "2020-01-01T00:00:00Z"}),
        ("r-c3", {"task": "t", "every": "1h", "kwargs": {"a": "x" * 70000}}),
        ("r-c4", {"task": "t", "every": "1h", "jitter": "2h"}),
    ]
    for name, fields in cases:
        refusals = []
        for client in (over_http, direct):
            with pytest.raises(ClientError) as caught:
                client.add(name, **fields)
            refusals.append((type(caught.value), caught.value.status, str(caught.value)))
        assert refusals[0] == refusals[1]


def test_a_file_that_takes_an_api_name_is_refused_naming_both_and_the_entries_stay(
    daemon: Daemon,
) -> None:
    assert (
        daemon.call("POST", "/v1/entries", {"name": "r-taken", "task": "t.a", "every": "1h"})[0]
        == 201
    )
    good = daemon.file.read_text()
    daemon.file.write_text(good + "  r-taken:\n    task: t.file\n    every: 1m\n")
    refused = daemon.proc.count("reload refused")
    daemon.proc.signal(signal.SIGHUP)
    wait_for(lambda: daemon.proc.count("reload refused") > refused, what="the reload refused")
    message = [m for m in daemon.proc.messages() if "reload refused" in m][-1]
    assert (
        f"{daemon.file}:8:1: entry r-taken: the name is taken by a runtime entry (source api)"
        in message
    )
    daemon.file.write_text(good)
    reloaded = daemon.proc.count("reloaded ")
    daemon.proc.signal(signal.SIGHUP)
    wait_for(lambda: daemon.proc.count("reloaded ") > reloaded, what="the reload")
    status, _, body = daemon.call("GET", "/v1/entries/r-taken", token="read")
    assert (status, body["source"], body["definition"]["task"]) == (200, "api", "t.a")


def test_sighup_rereads_the_token_file(daemon: Daemon) -> None:
    added = new_token("later", Scope.READ)
    daemon.tokens.write_text(daemon.tokens.read_text() + added.line + "\n")
    req = urllib.request.Request(
        daemon.api + "/v1/entries", headers={"Authorization": f"Bearer {added.token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=30)
    assert caught.value.code == 401
    reread = daemon.proc.count("API tokens reread")
    daemon.proc.signal(signal.SIGHUP)

    def answered() -> bool:
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return False

    wait_for(answered, what="the new token taken")
    assert daemon.proc.count("API tokens reread") == reread + 1
    assert added.token not in daemon.proc.log.read_text()


@pytest.mark.parametrize("mode", [0o644, 0o620])
def test_a_token_file_others_could_read_or_change_stops_the_start(
    tmp_path: Path, mode: int
) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(new_token("ops", Scope.WRITE).line + "\n")
    tokens.chmod(mode)
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(FILES)
    argv = [sys.executable, "-m", "beatd", "run", "--broker", f"sqlite:///{tmp_path / 'b.db'}"]
    argv += ["--api-addr", f"127.0.0.1:{free_port()}", "--api-tokens", str(tokens)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 2
    assert (
        f"{tokens}: the API token file has mode {mode:04o}: others could read or change"
        in done.stderr
    )


# --- defects ------------------------------------------------------------------------------


def test_a_malformed_name_over_http_is_refused_in_beatd_checks_words(daemon: Daemon) -> None:
    status, _, body = daemon.call(
        "POST", "/v1/entries", {"name": "a b", "task": "t", "every": "1h"}
    )
    assert status == 422
    assert (_one_error(body)["entry"], _one_error(body)["message"]) == ("a b", ENTRY_NAME_RULE)
    refusals = []
    for client in (Client(daemon.api, token=daemon.write), Client(daemon.procs.broker)):
        with pytest.raises(ClientError) as caught:
            client.add("a b", task="t", every="1h")
        refusals.append(str(caught.value))
    assert refusals[0] == refusals[1] == f"entry a b: {ENTRY_NAME_RULE}"


def test_a_put_that_creates_an_entry_answers_201(daemon: Daemon) -> None:
    assert (
        daemon.call("POST", "/v1/entries", {"name": "r-put-0", "task": "t", "every": "1h"})[0]
        == 201
    )
    status, _, body = daemon.call("PUT", "/v1/entries/r-put-1", {"task": "t", "every": "1h"})
    assert (status, body["name"]) == (201, "r-put-1")


def test_a_new_entry_is_at_the_change_feeds_position_as_docs_api_md_says(
    daemon: Daemon,
) -> None:
    """review18 found docs/api.md saying a new entry is at version 1; it is at the change feed's
    position of its creation (so a name removed and added again never repeats a version)."""
    assert (
        daemon.call("POST", "/v1/entries", {"name": "r-v-0", "task": "t", "every": "1h"})[0] == 201
    )
    first = daemon.call("GET", "/v1/entries/r-v-0", token="read")[2]["version"]
    status, headers, body = daemon.call(
        "POST", "/v1/entries", {"name": "r-v-1", "task": "t", "every": "1h"}
    )
    assert status == 201 and body["version"] > first
    assert headers["etag"] == f'"{body["version"]}"'
    status, _, changed = daemon.call("PUT", "/v1/entries/r-v-1", {"task": "t", "every": "2h"})
    assert (status, changed["version"]) == (200, body["version"] + 1)
    assert daemon.call("DELETE", "/v1/entries/r-v-1")[0] in (200, 204)
    again = daemon.call("POST", "/v1/entries", {"name": "r-v-1", "task": "t", "every": "1h"})[2]
    assert again["version"] > changed["version"]
    docs = (REPO / "docs" / "api.md").read_text()
    assert "1 when created" not in docs
    assert "the change feed's position of its creation" in docs


def test_the_client_refuses_a_zero_limit_the_same_way_over_both_urls(daemon: Daemon) -> None:
    over_http = Client(daemon.api, token=daemon.write)
    direct = Client(daemon.procs.broker, by="rev@host")
    over_http.add("r-limit", task="t", every="1h")
    calls = [
        ("limit", lambda c: c.history(entry="r-limit", limit=0), 10000),
        ("limit", lambda c: c.audit(entry="r-limit", limit=0), 10000),
        ("count", lambda c: c.next_runs("r-limit", 0), 1000),
    ]
    for word, call, most in calls:
        for client in (over_http, direct):
            with pytest.raises(ClientError) as caught:
                call(client)
            assert (caught.value.status, str(caught.value)) == (
                422,
                f"{word} must be a whole number from 1 to {most}, got '0'",
            )


def test_a_batch_of_more_than_10000_entries_is_refused_as_a_whole(daemon: Daemon) -> None:
    entries: list[dict[str, Any]] = [
        {"name": f"r-many-{i}", "task": "t", "every": "1h"} for i in range(10_000)
    ]
    entries.append({"name": "r-many-last", "task": "t", "every": "soon"})  # nothing is written
    status, _, body = daemon.call("POST", "/v1/entries/batch", {"entries": entries})
    assert status in (413, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/entries"]


def test_a_10000_entry_batch_over_http_leaves_the_scheduling_loop_on_time(daemon: Daemon) -> None:
    """Last in the module: it may cost the leader its lease. The clock entry runs every second;
    no slot of it may be late or missed while the batch is written and applied. On a loaded
    machine the SQLite leader once slept through several of the batch's transactions (its lease
    lost) and stood still while the answer was encoded (a slot late): beatd.backends.sqlite_turns
    and beatd.http.app.json_text. The Redis leader read its first feed page after the batch one
    entry at a time (1.4 s with two CPU hogs beside it, past its lease's renewal): one
    get_entries call a page now."""
    entries = [{"name": f"r-bulk-{i}", "task": "t", "every": "1h"} for i in range(10_000)]
    before = len(daemon.proc.messages())
    status, _, _ = daemon.call("POST", "/v1/entries/batch", {"entries": entries})
    assert status == 201
    applied = daemon.proc.count("published=")
    wait_for(lambda: daemon.proc.count("published=") >= applied + 3, what="3 more publishes")
    during = daemon.proc.messages()[before:]
    assert not [m for m in during if "lost the lease" in m or "could not be renewed" in m]
    assert not [
        m for m in during if "published=" in m and ("late=0" not in m or "missed=0" not in m)
    ]
