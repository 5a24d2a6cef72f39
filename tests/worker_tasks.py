"""Tasks the worker tests run; each appends what happened to a file the test reads.

A line is `event id attempt deliveries pid time`, so a test can tell runs, retries, deliveries
and child processes apart.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import beatd


def note(path: str, event: str) -> None:
    run = beatd.current_run()
    line = f"{event} {run.id} {run.attempt} {run.deliveries} {os.getpid()} {time.time():.3f}\n"
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(line)


def events(path: Path) -> list[list[str]]:
    """The lines written so far, split; an empty list before the first."""
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


@beatd.task
def add(path: str, a: int, b: int) -> int:
    note(path, f"sum={a + b}")
    return a + b


@beatd.task(max_retries=3, retry_backoff=0.2)
def always_fails(path: str) -> None:
    note(path, "fail")
    raise ValueError(f"boom on attempt {beatd.current_run().attempt}")


@beatd.task(max_retries=5)
def asks_for_retries(path: str, until: int) -> str:
    note(path, "try")
    if beatd.current_run().attempt < until:
        raise beatd.Retry(countdown=0.05, reason="not yet")
    return "done"


@beatd.task(time_limit=0.5, max_retries=1, retry_backoff=0.05)
def ignores_everything(path: str) -> None:
    note(path, "start")
    while True:
        try:
            while True:
                time.sleep(0.01)
        except BaseException:  # a task that swallows even the time-limit exception
            continue


@beatd.task
def notes_its_slot(path: str) -> None:
    note(path, f"slot={beatd.current_run().message.scheduled_for:%Y-%m-%dT%H:%M:%SZ}")


@beatd.task
def kills_its_process(path: str) -> None:
    note(path, "start")
    os.kill(os.getpid(), signal.SIGKILL)


@beatd.task
def slow(path: str, seconds: float) -> None:
    note(path, "start")
    time.sleep(seconds)
    note(path, "end")


@beatd.task(time_limit=0.3, max_retries=0)
def busy_loop(path: str) -> None:
    note(path, "start")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pass
    note(path, "end")


def subtract(path: str, a: int, b: int) -> int:
    """Registered by no decorator: only a registry built by hand names it."""
    note(path, f"difference={a - b}")
    return a - b
