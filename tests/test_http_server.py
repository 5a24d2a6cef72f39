"""beatd.http.server: the API's server thread beside the scheduling loop."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from beatd.http.server import ApiServer, ServerSettings, answering
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


def test_an_idle_server_waits_for_its_sockets_instead_of_spinning(server: ApiServer) -> None:
    # every `beatd run` serves the API by default: a loop that polled its sockets without
    # waiting took most of a core, and the GIL from the scheduling loop, doing nothing
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as reply:
        assert reply.read() == b"hello"
    thread = server.thread
    before = thread_cpu_s(thread)
    time.sleep(1.0)
    assert thread_cpu_s(thread) - before < 0.05  # a spinning loop used 0.7-1.0 s of it


def test_stop_ends_the_serving_thread_and_closes_the_port() -> None:
    served = ApiServer(hello, ServerSettings("127.0.0.1", 0, threads=1)).start()
    thread = served.thread
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=10) as reply:
        assert reply.status == 200
    served.stop()
    served.stop()  # a second stop finds nothing left to close
    assert not thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=2)


def test_stop_of_a_server_never_started_closes_its_port() -> None:
    served = ApiServer(hello, ServerSettings("127.0.0.1", 0, threads=1))
    served.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=2)


def test_answers_never_wait_for_the_loop_and_background_work_waits_for_them() -> None:
    turns = LoopTurns()
    entered, release = threading.Event(), threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.set()
        release.wait(10)
        return hello(environ, start_response)

    served = ApiServer(answering(slow, turns), ServerSettings("127.0.0.1", 0)).start()
    try:
        turns.awake()
        turns.sleeping(60.0)  # the loop sleeps long: only the answer holds background work
        asked = threading.Thread(
            target=urllib.request.urlopen, args=(f"http://127.0.0.1:{served.port}/",)
        )
        asked.start()
        assert entered.wait(5)
        assert turns.wait_gap(0.05, 0.3) >= 0.3  # an answer is being made: the piece waits
        release.set()
        asked.join(5)
        assert turns.wait_gap(0.05, 5.0) < 1.0  # made: it goes at once
        turns.awake()  # a round going on: an answer still goes at once, asking nothing
        turns.wait_gap = None  # type: ignore[assignment,method-assign]  # called: TypeError
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/", timeout=10) as reply:
            assert reply.read() == b"hello"
    finally:
        release.set()
        served.stop()
