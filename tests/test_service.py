"""Process glue: the cyclic collector's settings around a scheduler's events, and logging."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from beatd.backends.base import BeatdQueue, Outgoing
from beatd.backends.sqlite import SQLiteBackend
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.config.model import Entry
from beatd.events import Adopted, ReloadFailed, Reloading, Status
from beatd.message import RunMessage
from beatd.observers import GcTuning
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from beatd.service import JsonFormatter, setup_logging
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_adopted_state_is_frozen_until_a_reload_hands_it_back() -> None:
    tuning = GcTuning()
    assert gc.get_threshold()[0] == 50_000
    tuning.notify(Adopted())
    assert gc.get_freeze_count() > 0
    tuning.notify(Reloading())  # an old configuration with cycles (a .py file's) can now be
    assert gc.get_freeze_count() == 0  # collected
    tuning.notify(ReloadFailed(Status(True, True, 1, "sqlite:///b.db")))  # kept: frozen again
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_the_first_adoption_freezes_what_is_alive_without_a_full_pass() -> None:
    """The full pass after adopting 1,000,000 entries took 1.9 s of CPU (14.5 s of wall time on
    a loaded machine) and a leader lost its lease to it; at the first adoption no older
    configuration is there to collect, so what is alive is frozen without one. A re-adoption
    (the lease taken again) makes none either; after a reload's thaw one is made, as before."""
    passes: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    tuning = GcTuning()
    gc.callbacks.append(seen)
    try:
        tuning.notify(Adopted())
        assert gc.get_freeze_count() > 0
        tuning.notify(Adopted())
        assert 2 not in passes
        tuning.notify(Reloading())
        tuning.notify(Adopted())
        assert 2 in passes and gc.get_freeze_count() > 0
    finally:
        gc.callbacks.remove(seen)


@pytest.mark.usefixtures("collector")
def test_a_reload_frees_the_cycles_of_the_configuration_it_replaces() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    tuning = GcTuning()
    old = [Node() for _ in range(1000)]  # what a reloaded Python schedule file leaves behind
    tuning.notify(Adopted())
    del old
    tuning.notify(Reloading())
    tuning.notify(Adopted())
    assert not any(isinstance(o, Node) for o in gc.get_objects())


# --- logging: --log-format json carries the key=value context as fields ----------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a daemon's stderr, each of which must be one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_daemon(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{args[0]}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BEATD_METRICS_ADDR": "off"}
    argv = [sys.executable, "-m", "beatd", *args, "--log-format", "json"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stderr=out, stdout=subprocess.DEVNULL, cwd=tmp_path, env=env)
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.mark.slow
def test_the_worker_outcome_is_fields_of_the_json_object(tmp_path: Path) -> None:
    db = tmp_path / "beatd.db"
    broker = f"sqlite:///{db}"
    worker, log = start_daemon(
        tmp_path, "worker", "--broker", broker, "-A", "tests.worker_tasks", "-c", "1"
    )
    backend = SQLiteBackend(db)
    try:
        now = datetime.now(UTC)
        message = RunMessage(
            id="sum@1",
            task="tests.worker_tasks.add",
            entry="sum",
            scheduled_for=now,
            published_at=now,
            queue="default",
            args=(str(tmp_path / "out"), 2, 3),
        )
        backend.enqueue([Outgoing("sum", "sum@1", BeatdQueue("default"), message.to_json())])
        wait_for(lambda: "outcome=" in log.read_text(), what="the run's outcome line")
    finally:
        backend.close()
        stop(worker)
    (outcome,) = [line for line in json_lines(log) if "outcome" in line]
    assert outcome["msg"] == (
        f"task=tests.worker_tasks.add id=sum@1 attempt=1 outcome=succeeded "
        f"duration={outcome['duration']:.3f}s"
    )
    del outcome["ts"]
    assert outcome == {
        "level": "info",
        "logger": "beatd.worker",
        "msg": outcome["msg"],
        "task": "tests.worker_tasks.add",
        "id": "sum@1",
        "entry": "sum",
        "attempt": 1,
        "outcome": "succeeded",
        "duration": outcome["duration"],
    }
    assert isinstance(outcome["duration"], float) and outcome["duration"] >= 0


def test_the_json_id_field_is_the_id_the_text_line_shows(tmp_path: Path) -> None:
    """Issue 13 item 8: one id, the body's. A queue entry whose id differs from its body's is
    dead-lettered; its outcome line says id=body@1, and the JSON field must say the same."""
    db = tmp_path / "beatd.db"
    broker = f"sqlite:///{db}"
    worker, log = start_daemon(
        tmp_path, "worker", "--broker", broker, "-A", "tests.worker_tasks", "-c", "1"
    )
    backend = SQLiteBackend(db)
    try:
        now = datetime.now(UTC)
        message = RunMessage(
            id="body@1",
            task="tests.worker_tasks.add",
            entry="sum",
            scheduled_for=now,
            published_at=now,
            queue="default",
            args=(str(tmp_path / "out"), 2, 3),
        )
        backend.enqueue([Outgoing("sum", "stream@1", BeatdQueue("default"), message.to_json())])
        wait_for(lambda: "outcome=" in log.read_text(), what="the run's outcome line")
    finally:
        backend.close()
        stop(worker)
    (outcome,) = [line for line in json_lines(log) if "outcome" in line]
    assert outcome["outcome"] == "dead_lettered"
    assert " id=body@1 " in outcome["msg"]
    assert outcome["id"] == "body@1"


@pytest.mark.slow
def test_the_scheduler_summary_is_fields_and_watchfiles_stays_out_of_the_log(
    tmp_path: Path,
) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    entry = "entries:\n  tick:\n    task: t.tick\n    every: 1s\n"
    (schedules / "a.yaml").write_text(entry)
    db = tmp_path / "beatd.db"
    run, log = start_daemon(tmp_path, "run", "--broker", f"sqlite:///{db}", "-s", str(schedules))
    try:
        wait_for(lambda: "published=" in log.read_text(), what="a published summary")
        (schedules / "a.yaml").write_text(entry.replace("tick", "tock"))  # watchfiles sees it
        wait_for(lambda: "reloaded 1 entries" in log.read_text(), what="the reload")
    finally:
        stop(run)
    lines = json_lines(log)
    assert [line for line in lines if not line["logger"].startswith("beatd")] == []
    summary = next(line for line in lines if "published" in line)
    assert summary["msg"] == (
        f"published={summary['published']} late={summary['late']} missed={summary['missed']} "
        f"next_due={summary['next_due']}"
    )
    assert summary["published"] >= 1 and summary["late"] == 0 and summary["missed"] == 0


def test_debug_publish_lines_carry_entry_and_slot(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC))
    schedule = IntervalSchedule(timedelta(seconds=10))
    config = Config({"a": Entry(name="a", task="t.task", schedule=schedule)})
    db = tmp_path / "beatd.db"
    backend = SQLiteBackend(db, wall_clock=lambda: clock.now().timestamp())
    beat = Scheduler(backend, lambda: config, clock, SchedulerSettings(node="n"), config=config)
    with caplog.at_level(logging.DEBUG, logger="beatd.scheduler"):
        run_for(beat, 11)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("publish ")]
    formatted = json.loads(JsonFormatter().format(record))
    assert {k: formatted[k] for k in ("entry", "slot", "due", "late")} == {
        "entry": "a",
        "slot": "2026-03-01T12:00:10Z",
        "due": "2026-03-01T12:00:10+00:00",
        "late": False,
    }
    assert formatted["msg"] == (
        "publish entry=a slot=2026-03-01T12:00:10Z due=2026-03-01T12:00:10+00:00 late=False"
    )


@pytest.mark.parametrize(("level", "pika_level"), [("info", logging.CRITICAL), ("debug", 0)])
def test_pikas_own_error_lines_are_left_out_unless_debugging(level: str, pika_level: int) -> None:
    """beatd says an AMQP outage once; pika would log an ERROR with a traceback at every try."""
    root, pika, redis = logging.getLogger(), logging.getLogger("pika"), logging.getLogger("redis")
    handlers, levels = root.handlers[:], [root.level, pika.level, redis.level]
    try:
        setup_logging(level, "text")
        quiet = logging.WARNING if level == "info" else logging.NOTSET
        assert (pika.level, redis.level) == (pika_level, quiet)
    finally:
        root.handlers[:] = handlers
        for logger, before in zip((root, pika, redis), levels, strict=True):
            logger.setLevel(before)
