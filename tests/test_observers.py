"""The loop's small observers: systemd's notify messages (against a real datagram socket) and
the in-process worker's nudge, driven by a scheduler on a fake clock as `beatd run` builds it."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.assemble import build_scheduler
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.events import BackendDown, Event, Observer, Status, Stepped
from beatd.observers import SystemdNotify
from beatd.scheduler import SchedulerSettings
from beatd.schedules import IntervalSchedule
from beatd.systemd import Notifier

T0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[list[str]]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return messages


class Worker:
    def __init__(self) -> None:
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1


def test_ready_once_the_backend_answered_then_status_on_changes(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    clock = FakeClock(T0)
    backend = SQLiteBackend(tmp_path / "b.db", wall_clock=lambda: clock.now().timestamp())
    schedule = IntervalSchedule(timedelta(seconds=10))
    config = Config({"a": Entry(name="a", task="t.task", schedule=schedule)})
    worker = Worker()
    beat = build_scheduler(
        backend,
        config,
        lambda: config,
        clock,
        SchedulerSettings(node="n"),
        notifier=Notifier({"NOTIFY_SOCKET": path}),
        worker=worker,
    )
    beat.step()
    assert received(sock) == [["STATUS=leader, 1 entries"]]  # became leader
    (systemd,) = [o for o in beat.observers if isinstance(o, SystemdNotify)]
    tell_all(beat.observers, Stepped(beat.status()))  # what `Scheduler.run` says after a step
    assert received(sock) == [["READY=1", "STATUS=leader, 1 entries"]]
    assert worker.nudges == 1
    systemd.notify(BackendDown(Status(False, False, 1, backend.url)))
    assert received(sock) == [[f"STATUS=backend {backend.url} unavailable"]]
    tell_all(beat.observers, Stepped(beat.status()))
    assert received(sock) == []  # READY is said once
    assert worker.nudges == 2


def tell_all(observers: Sequence[Observer], event: Event) -> None:
    for observer in observers:
        observer.notify(event)
