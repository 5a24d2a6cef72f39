"""The notify protocol against a real datagram socket, and the shipped unit files."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from beatd.clock import FakeClock
from beatd.http.tokens import Scope, new_token
from beatd.systemd import Notifier
from tests.redis_server import free_port
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("leader, 3 entries")
    assert receive(sock) == ["READY=1", "STATUS=leader, 3 entries"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    reloading, stamp = receive(sock)
    assert reloading == "RELOADING=1"
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= before + 5_000_000
    notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_abstract_socket_address() -> None:
    name = f"beatd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("standby")
        assert receive(sock) == ["STATUS=standby"]
    finally:
        sock.close()


def test_watchdog_pings_are_rate_limited(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    notifier = Notifier(environ, monotonic=clock.monotonic)
    assert notifier.watchdog_interval == pytest.approx(0.4)
    notifier.watchdog()
    notifier.watchdog()  # too soon: not sent
    clock.advance(0.09)
    notifier.watchdog()  # still less than a quarter of the interval: not sent
    clock.advance(0.02)
    notifier.watchdog()
    notifier.status("end")  # datagrams keep their order: nothing else was sent in between
    received = [receive(sock) for _ in range(3)]
    assert received == [["WATCHDOG=1"], ["WATCHDOG=1"], ["STATUS=end"]]


def test_watchdog_for_another_pid_is_ignored() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None and not notifier.enabled
    notifier.ready("ignored")  # no socket: a no-op


def unit_copy(tmp_path: Path, name: str, as_name: str) -> Path:
    text = (REPO / "systemd" / name).read_text()
    beatd = shutil.which("beatd") or str(Path(sys.executable).parent / "beatd")
    target = tmp_path / as_name
    target.write_text(text.replace("/usr/local/bin/beatd", beatd))
    return target


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd
def test_units_verify(tmp_path: Path) -> None:
    units = [
        unit_copy(tmp_path, "beatd.service", "beatd.service"),
        unit_copy(tmp_path, "beatd-worker@.service", "beatd-worker@default.service"),
    ]
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")


def exposed_at_most(unit: Path, level: float) -> bool:
    """systemd-analyze's verdict by exit status (--threshold), not by its report's wording."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={level * 10:g}", str(unit)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


@needs_systemd
def test_security_scores(tmp_path: Path) -> None:
    service = unit_copy(tmp_path, "beatd.service", "beatd.service")
    assert exposed_at_most(service, 1.5)
    assert not exposed_at_most(service, 0)  # the threshold is heeded: no unit scores 0
    worker = unit_copy(tmp_path, "beatd-worker@.service", "beatd-worker@default.service")
    assert exposed_at_most(worker, 2.0)


def service_settings(name: str) -> dict[str, list[str]]:
    """Each setting of a shipped unit and its values, in order (comments left out)."""
    settings: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def run_as_the_unit(tmp_path: Path, credential: str) -> tuple[subprocess.Popen[bytes], int]:
    """`beatd run` started as systemd starts beatd.service: its credential `api-tokens` copied
    into a directory of the service's own (mode 0400, as systemd writes it),
    ${CREDENTIALS_DIRECTORY} in ExecStart= expanded; the test's broker, schedules and API port
    added."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-tokens").write_text(credential)
    (credentials / "api-tokens").chmod(0o400)
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(
        "entries:\n  tick:\n    task: t.tick\n    every: 1h\n"
    )
    [exec_start] = service_settings("beatd.service")["ExecStart"]
    argv = shlex.split(exec_start.replace("${CREDENTIALS_DIRECTORY}", str(credentials)))
    assert argv[:2] == ["/usr/local/bin/beatd", "run"]
    port = free_port()
    command = [
        *(sys.executable, "-m", "beatd", *argv[1:], "-s", str(tmp_path / "schedules")),
        *("--broker", f"sqlite:///{tmp_path / 'beatd.db'}", "--metrics-addr", "off"),
        *("--api-addr", f"127.0.0.1:{port}"),
    ]
    log = (tmp_path / "run.log").open("wb")
    environ = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    return popen, port


def api_status(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/history?limit=1")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # not listening yet


def test_the_unit_loads_the_token_file_as_a_credential() -> None:
    settings = service_settings("beatd.service")
    assert settings["LoadCredential"] == ["api-tokens:/etc/beatd/api-tokens"]
    assert settings["ExecStart"] == [
        "/usr/local/bin/beatd run --api-tokens ${CREDENTIALS_DIRECTORY}/api-tokens"
    ]
    # The default when /etc/beatd/api-tokens is missing: the unit still starts (a credential
    # LoadCredential= cannot read fails the start unless SetCredential= gives the same ID).
    [default] = settings["SetCredential"]
    assert default.startswith("api-tokens:#")


@pytest.mark.slow
@pytest.mark.parametrize("given", [True, False], ids=["token_file", "no_token_file"])
def test_beatd_run_as_the_unit_serves_the_credentials_tokens(tmp_path: Path, given: bool) -> None:
    token = new_token("deploy", Scope.READ)
    [default] = service_settings("beatd.service")["SetCredential"]
    credential = token.line + "\n" if given else default.removeprefix("api-tokens:")
    popen, port = run_as_the_unit(tmp_path, credential)
    try:
        wait_for(lambda: api_status(port, "beatd_other") == 401, what="the API answering")
        assert api_status(port, token.token) == (200 if given else 401)
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(timeout=20) == 0
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
