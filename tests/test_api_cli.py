"""`beatd run` serving the HTTP API (beatd.cli.api): real daemons on a SQLite file, their API
asked over loopback; the token file's rules at start and on SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from beatd.http.tokens import Scope, new_token
from tests.redis_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

EVERY_SECOND = "entries:\n  tick:\n    task: t.tick\n    every: 1s\n"
FIRST, SECOND = new_token("first", Scope.READ), new_token("second", Scope.READ)


def token_file(tmp_path: Path, *lines: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api-tokens"
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(mode)
    return path


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"run-{len(started)}.log").open("wb")
        command = [
            *(sys.executable, "-m", "beatd", "run", "-s", str(tmp_path / "schedules")),
            *("--broker", f"sqlite:///{tmp_path / 'beatd.db'}", "--metrics-addr", "off"),
            *args,
        ]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def status_of(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/history?limit=1")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            json.loads(answer.read())
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # not listening yet


def ask(port: int, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as answer:
        body: dict[str, Any] = json.loads(answer.read())
        return body


def leading(port: int, token: str) -> dict[str, Any] | None:
    report = ask(port, "/v1/status", token)
    leader = report["leader"]
    return report if leader is not None and leader["node"] == "n1" else None


def published(report: dict[str, Any] | None) -> int:
    return int(report["entries"][0]["published"] or 0) if report else 0


def test_run_serves_the_api_and_sighup_rereads_the_tokens(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    tokens = token_file(tmp_path, FIRST.line)
    proc = launch("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens), "--node", "n1")
    wait_for(lambda: status_of(port, FIRST.token) == 200, what="the API answering")
    assert status_of(port, SECOND.token) == 401
    report = wait_for(lambda: leading(port, FIRST.token), what="a status naming the leader")
    assert report["counts_from"] == ["node:n1"]
    assert wait_for(lambda: published(leading(port, FIRST.token)), what="a run counted") >= 1
    token_file(tmp_path, SECOND.line)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status_of(port, SECOND.token) == 200, what="the new token taken")
    assert status_of(port, FIRST.token) == 401
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_a_token_file_others_can_read_stops_the_start(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[bytes]]
) -> None:
    tokens = token_file(tmp_path, FIRST.line, mode=0o644)
    proc = launch("--api-addr", f"127.0.0.1:{free_port()}", "--api-tokens", str(tokens))
    assert proc.wait(timeout=30) == 2
    assert (tmp_path / "run-0.log").read_text().splitlines()[-1] == (
        f"beatd: --api-tokens: {tokens}: the API token file has mode 0644: others could read or "
        f"change the tokens; make it readable by beatd's user only (chmod 0600 {tokens}, or "
        "0640 with a group only beatd is in)"
    )


def test_an_explicit_address_taken_stops_the_start(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    tokens = token_file(tmp_path, FIRST.line)
    first = launch("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens))
    wait_for(lambda: status_of(port, FIRST.token) == 200, what="the first API answering")
    second = launch("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens))
    assert second.wait(timeout=30) == 1
    last = (tmp_path / "run-1.log").read_text().splitlines()[-1]
    assert last.startswith(f"beatd: --api-addr: cannot serve the API at '127.0.0.1:{port}': ")
    assert first.poll() is None


def test_without_tokens_nothing_is_served(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    proc = launch("--api-addr", f"127.0.0.1:{port}", "--log-level", "info")
    log = tmp_path / "run-0.log"
    wait_for(lambda: "became leader" in log.read_text(), what="the daemon leading")
    assert "HTTP API not served: give it --api-tokens (docs/api.md)" in log.read_text()
    assert status_of(port, FIRST.token) == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def index_names(port: int, token: str) -> list[str] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/entry-index?sort=next_due")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return [e["name"] for e in json.loads(answer.read())["entries"]]
    except (urllib.error.HTTPError, OSError):
        return None  # not listening, or the index not built yet (503)


def test_run_feeds_the_entry_index_from_the_change_feed(
    tmp_path: Path, launch: Callable[..., subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    writer = new_token("ops", Scope.WRITE)
    tokens = token_file(tmp_path, writer.line)
    proc = launch("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens))
    assert wait_for(lambda: index_names(port, writer.token), what="the index built") == ["tick"]
    body = json.dumps({"name": "hourly", "task": "t.h", "every": "1h"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/entries", body, method="POST")
    request.add_header("Authorization", f"Bearer {writer.token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 201
    wait_for(lambda: index_names(port, writer.token) == ["tick", "hourly"], what="hourly indexed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
