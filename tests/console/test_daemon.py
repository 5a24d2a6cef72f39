"""The console in a real `beatd run` behind a (pretend) TLS proxy: sign in over loopback with
X-Forwarded-Proto from the trusted proxy address, then SIGHUP with the token's line removed
ends the session."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.console.conftest import READER, WRITER
from tests.redis_server import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

PUBLIC = "beatd.example.com"
PROXY_HEADERS = {"Host": PUBLIC, "X-Forwarded-Proto": "https"}


def ask(
    port: int,
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, list[tuple[str, str]], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body, {**PROXY_HEADERS, **(headers or {})})
        answer = connection.getresponse()
        return answer.status, answer.getheaders(), answer.read().decode()
    except OSError:
        return 0, [], ""  # not listening yet
    finally:
        connection.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(
        "entries:\n  tick:\n    task: t.tick\n    every: 1h\n"
    )
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{READER.line}\n{WRITER.line}\n")
    tokens.chmod(0o600)
    port = free_port()
    command = [
        *(sys.executable, "-m", "beatd", "run", "-s", str(tmp_path / "schedules")),
        *("--broker", f"sqlite:///{tmp_path / 'beatd.db'}", "--metrics-addr", "off"),
        *("--api-addr", f"127.0.0.1:{port}", "--api-tokens", str(tokens)),
        *("--api-allowed-hosts", PUBLIC, "--api-trusted-proxy", "127.0.0.1"),
    ]
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    yield proc, port, tokens
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_session_behind_the_proxy_is_secure_and_ends_with_its_tokens_line(
    daemon: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, tokens = daemon
    wait_for(lambda: ask(port, "GET", "/ui/signin")[0] == 200, what="the console answering")
    form = urlencode({"token": WRITER.token, "next": "/ui/"})
    status, headers, _ = ask(
        port,
        "POST",
        "/ui/signin",
        form,
        {"Origin": f"https://{PUBLIC}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 303
    (cookie,) = [v for k, v in headers if k == "Set-Cookie" and v.startswith("beatd_session=")]
    assert "; Secure" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    overview = ask(port, "GET", "/ui/", headers=session)
    assert overview[0] == 200 and "Signed in as <strong>ops</strong>" in overview[2]
    tokens.write_text(f"{READER.line}\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: ask(port, "GET", "/ui/", headers=session)[0] == 303, what="signed out")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
