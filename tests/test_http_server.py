"""beatd.http.server: the API's server thread beside the scheduling loop."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from beatd.http.server import REQUEST_WAIT_S, ApiServer, ServerSettings, after_gaps
from beatd.turns import LoopTurns


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


@pytest.fixture
def server() -> Iterator[ApiServer]:
    served = ApiServer(hello, ServerSettings("127.0.0.1", 0, threads=1)).start()
    yield served
    served.stop()


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds `thread` has used (Linux: its /proc task's utime + stime)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "beatd-api")


def test_an_idle_server_waits_for_its_sockets_instead_of_spinning(server: ApiServer) -> None:
    # every `beatd run` serves the API by default: a loop that polled its sockets without
    # waiting took most of a core, and the GIL from the scheduling loop, doing nothing
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/") as reply:
        assert reply.read() == b"hello"
    thread = serving_thread()
    before = thread_cpu_s(thread)
    time.sleep(1.0)
    assert thread_cpu_s(thread) - before < 0.05  # a spinning loop used 0.7-1.0 s of it


def test_stop_ends_the_serving_thread_and_closes_the_port() -> None:
    served = ApiServer(hello, ServerSettings("127.0.0.1", 0, threads=1)).start()
    thread = serving_thread()
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/") as reply:
        assert reply.status == 200
    served.stop()
    assert not thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=2)


def test_stop_of_a_server_never_started_closes_its_port() -> None:
    served = ApiServer(hello, ServerSettings("127.0.0.1", 0, threads=1))
    served.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=2)


def answered_in_s(port: int, method: str = "GET") -> float:
    began = time.monotonic()
    asked = urllib.request.Request(f"http://127.0.0.1:{port}/", method=method)
    with urllib.request.urlopen(asked, timeout=10) as reply:
        assert reply.read() == b"hello"
    return time.monotonic() - began


def test_a_read_waits_for_a_gap_in_the_loops_rounds_but_not_past_its_bound() -> None:
    turns = LoopTurns()
    served = ApiServer(after_gaps(hello, turns), ServerSettings("127.0.0.1", 0)).start()
    try:
        turns.awake()  # a round going on: each read waits for its end, at most its bound
        assert REQUEST_WAIT_S <= answered_in_s(served.port) < 5.0
        turns.sleeping(60.0)  # the loop sleeps with time to spare: answered at once
        assert answered_in_s(served.port) < REQUEST_WAIT_S
    finally:
        served.stop()


def test_a_write_goes_at_once_even_while_the_loop_works() -> None:
    turns = LoopTurns()
    served = ApiServer(after_gaps(hello, turns), ServerSettings("127.0.0.1", 0)).start()
    try:
        turns.awake()  # an import's requests must not each wait while the leader applies it
        assert answered_in_s(served.port, "POST") < REQUEST_WAIT_S
    finally:
        served.stop()
