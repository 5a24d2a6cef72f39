"""Celery interoperability: runs published by beatd, executed by a real, unmodified Celery worker
against a private redis-server; a Celery beat_schedule read and checked against Celery's own
schedule arithmetic. Celery is a test dependency only: beatd never imports it."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from beatd import celery_protocol
from beatd.assemble import build_scheduler
from beatd.backends.base import CeleryQueue, Lease, Outgoing, StateWrite
from beatd.backends.redis import RedisBackend
from beatd.celery_listener import CeleryEvents
from beatd.cli import main
from beatd.clock import FakeClock, SystemClock
from beatd.config import Config, load_config
from beatd.config.celeryconf import read_celery_config
from beatd.config.model import Entry
from beatd.errors import LeaseLost
from beatd.history import HistoryQuery
from beatd.message import RunMessage
from beatd.runtime_entries import resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import OnceSchedule
from beatd.state import EntryState
from tests.redis_server import RedisServer
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.lowest]
CELERY = str(Path(sys.executable).with_name("celery"))
SEP = "\x06\x16"

WORKER_APP = """
import json, os
from celery import Celery

app = Celery("celery_app", broker=os.environ["BROKER"])
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="tasks.record", bind=True)
def record(self, *args, **kwargs):
    with open(os.environ["OUT"], "a") as out:
        out.write(json.dumps({
            "id": self.request.id, "args": args, "kwargs": kwargs,
            "queue": self.request.delivery_info["routing_key"],
            "entry": getattr(self.request, "beatd_entry", None),
            "origin": self.request.origin,
        }) + "\\n")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture
def redis_url(server: RedisServer) -> Iterator[str]:
    server.client().flushall()
    yield server.url


def entry(name: str, at: datetime, queue: str = "celery", **kw: Any) -> Entry:
    return Entry(
        name=name,
        task="tasks.record",
        schedule=OnceSchedule(at),
        queue=queue,
        protocol="celery",
        **kw,
    )


def publish(url: str, clock: FakeClock, entries: list[Entry], seconds: float) -> None:
    backend = RedisBackend(url)
    cfg = Config({e.name: e for e in entries})
    beat = Scheduler(
        backend,
        lambda: cfg,
        clock,
        SchedulerSettings(node="n1", lease_ttl=10, max_clock_skew=86_400),
    )
    run_for(beat, seconds)
    beat.shutdown()
    backend.close()


def test_a_stock_celery_worker_runs_what_beatd_published(tmp_path: Path, redis_url: str) -> None:
    # a clock two hours behind: runs expiring after a minute are stale when the worker sees them
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    clock = FakeClock(start)
    s = lambda n: start + timedelta(seconds=n)  # noqa: E731
    entries = [
        entry("plain", s(1), args=(1, 2)),
        entry("with-kwargs", s(2), kwargs={"word": "grüß", "n": 3}, expires=timedelta(days=1)),
        entry("report", s(3), queue="reports", args=("apac",)),
        entry("stale", s(4), args=("never",), expires=timedelta(seconds=60)),
        # priorities 9 (highest) .. 0, published in this order into one queue
        entry("p9", s(5), queue="prio", priority=9),
        entry("p0", s(6), queue="prio", priority=0),
        entry("p4", s(7), queue="prio", priority=4),
        entry("unset", s(8), queue="prio"),
        entry("p2", s(9), queue="prio", priority=2),
    ]
    publish(redis_url, clock, entries, 12)
    admin = redis_client(redis_url)
    waiting = {k: admin.llen(k) for k in admin.keys("*") if not k.startswith("beatd:")}
    assert waiting == {
        "celery": 3,
        "reports": 1,
        "prio": 2,
        f"prio{SEP}3": 1,
        f"prio{SEP}6": 1,
        f"prio{SEP}9": 1,
    }
    (tmp_path / "celery_app.py").write_text(WORKER_APP)
    out, log = tmp_path / "out.jsonl", tmp_path / "worker.log"
    env = {**os.environ, "BROKER": redis_url, "OUT": str(out), "PYTHONPATH": str(tmp_path)}
    args = [CELERY, "-A", "celery_app", "worker", "-Q", "celery,reports,prio", "-P", "solo"]
    args += ["-c", "1", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
    args += ["--without-heartbeat", "-l", "info", "--logfile", str(log), "-n", "w1@test"]
    worker = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    try:
        lines = lambda: out.read_text().splitlines() if out.exists() else []  # noqa: E731
        wait_for(lambda: len(lines()) >= 8, 30, f"8 runs; worker log:\n{_tail(log)}")
        wait_for(lambda: "stale@" in _tail(log), 10, "the expired run to be discarded")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
    runs = [json.loads(line) for line in lines()]
    by_entry = {r["entry"]: r for r in runs}
    assert by_entry["plain"] == {
        "id": f"plain@{s(1):%Y-%m-%dT%H:%M:%SZ}",
        "args": [1, 2],
        "kwargs": {},
        "queue": "celery",
        "entry": "plain",
        "origin": "beatd@n1",
    }
    assert by_entry["with-kwargs"]["kwargs"] == {"word": "grüß", "n": 3}
    assert by_entry["report"]["queue"] == "reports"
    assert "stale" not in by_entry
    assert f"Discarding revoked task: tasks.record[stale@{s(4):%Y-%m-%dT%H:%M:%SZ}]" in _tail(log)
    # kombu asks the lists 0-2, 3-5, 6-8, 9 in that order (Celery's Redis priority: 0 highest)
    assert [r["entry"] for r in runs if r["queue"] == "prio"] == ["p9", "unset", "p4", "p2", "p0"]
    assert [k for k in admin.keys("*") if not k.startswith(("beatd:", "_kombu", "_celery"))] == []
    assert admin.hlen("unacked") == 0


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def test_the_envelope_matches_what_celery_itself_writes(redis_url: str) -> None:
    app = Celery("ref", broker=redis_url)
    expires_at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    for priority in (None, 9, 5, 1, 0):
        admin = redis_client(redis_url)
        admin.flushall()
        celery_pri = celery_protocol.celery_priority(priority)
        app.send_task(
            "tasks.add",
            args=(2, "é"),
            kwargs={"k": [1]},
            queue="reports",
            priority=celery_pri,
            expires=expires_at,
        )
        [theirs_key] = [k for k in admin.keys("*") if not k.startswith("_kombu")]
        theirs = json.loads(admin.lpop(theirs_key))
        message = RunMessage(
            id="e@2031-01-02T03:00:00Z",
            task="tasks.add",
            entry="e",
            scheduled_for=datetime(2031, 1, 2, 3, tzinfo=UTC),
            published_at=datetime(2031, 1, 2, 3, tzinfo=UTC),
            queue="reports",
            args=(2, "é"),
            kwargs={"k": [1]},
            expires_at=expires_at,
            priority=priority,
            kind="manual",
        )
        ours = celery_protocol.envelope(message, origin="beatd@n1")
        assert celery_protocol.list_name("reports", priority) == theirs_key
        assert ours.keys() == theirs.keys()
        assert ours["headers"].keys() - theirs["headers"].keys() == {
            "beatd_entry",
            "beatd_scheduled_for",
            "beatd_published_at",
            "beatd_kind",
        }
        assert ours["headers"]["beatd_kind"] == "manual"
        assert theirs["headers"].keys() <= ours["headers"].keys()
        for field in ("lang", "task", "expires", "retries", "timelimit", "argsrepr", "kwargsrepr"):
            assert ours["headers"][field] == theirs["headers"][field], field
        same = ("content-type", "content-encoding")
        assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
        assert base64.b64decode(ours["body"]) and json.loads(
            base64.b64decode(ours["body"])
        ) == json.loads(base64.b64decode(theirs["body"]))
        props = ("delivery_mode", "delivery_info", "priority", "body_encoding")
        assert {k: ours["properties"][k] for k in props} == {
            k: theirs["properties"][k] for k in props
        }
        assert ours["properties"].keys() - {"expiration"} <= theirs["properties"].keys()


def test_celery_messages_keep_the_fencing_rules(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    lease = backend.acquire_lease("a", 10)
    assert lease is not None
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    write = StateWrite(EntryState("e", slot, slot, "x"), None)
    message = Outgoing("e", "e@1", CeleryQueue("celery", 9), "{}")
    stale = Lease("a", "other-token", lease.epoch)
    with pytest.raises(LeaseLost):
        backend.commit(stale, [write], [message])
    admin = redis_client(redis_url)
    assert admin.llen("celery") == 0
    assert backend.commit(lease, [write], [message]) == set()
    assert admin.lrange("celery", 0, -1) == ["{}"]
    assert backend.commit(lease, [write], [message]) == {"e"}  # the slot moved on: not again
    assert admin.llen("celery") == 1
    assert backend.queue_depths() == {}
    backend.close()


CELERYCONFIG = """
from datetime import timedelta
from celery.schedules import crontab

broker_url = "redis://127.0.0.1:1/0"
timezone = "Europe/Berlin"
beat_schedule = {
    "weekday-report": {
        "task": "reports.daily",
        "schedule": crontab(hour=7, minute=30, day_of_week="mon-fri"),
        "args": ("apac",),
        "options": {"queue": "reports", "routing_key": "reports", "expires": 600, "priority": 0},
    },
    "quarter-hourly": {"task": "tasks.poll", "schedule": crontab(minute="*/15")},
    "first-monday": {
        "task": "tasks.monthly",
        "schedule": crontab(0, 6, day_of_week=1, day_of_month="1-7"),
    },
    "every-30s": {"task": "tasks.ping", "schedule": 30.0, "kwargs": {"x": 1}},
    "every-5m": {"task": "tasks.sync", "schedule": timedelta(minutes=5)},
}
"""


def _load_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> str:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_a_celery_beat_schedule_fires_when_celery_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_module(tmp_path, monkeypatch, "celeryconfig_ok", CELERYCONFIG)
    config = load_config([], celery_config=module)
    report = config.entries["weekday-report"]
    assert (report.queue, report.protocol, report.priority, report.expires) == (
        "reports",
        "celery",
        9,
        timedelta(seconds=600),
    )
    assert config.entries["every-30s"].queue == "celery"
    assert read_celery_config(module, "UTC").broker_url == "redis://127.0.0.1:1/0"
    namespace: dict[str, Any] = {}
    exec(CELERYCONFIG, namespace)  # Celery's own objects, to compare with
    app = Celery("cmp")
    app.conf.timezone = "Europe/Berlin"
    zone = ZoneInfo("Europe/Berlin")
    # non-DST days across a year, at awkward moments (on a slot, just before, month ends)
    starts = [
        datetime(2026, 1, 30, 7, 29, 59, tzinfo=zone),
        datetime(2026, 2, 27, 23, 50, tzinfo=zone),
        datetime(2026, 5, 4, 6, 0, tzinfo=zone),
        datetime(2026, 7, 31, 7, 30, tzinfo=zone),
        datetime(2026, 11, 30, 12, 14, 59, tzinfo=zone),
    ]
    checked = 0
    for name, spec in namespace["beat_schedule"].items():
        theirs = spec["schedule"]
        if not isinstance(theirs, crontab):
            theirs = _celery_interval(app, theirs)
        theirs.app = app
        ours = config.entries[name].schedule
        for start in starts:
            t = start
            for _ in range(4):  # a few fires in a row
                if not isinstance(spec["schedule"], crontab):  # Celery's intervals follow the
                    step = int(theirs.run_every.total_seconds())  # last run: put it on the grid
                    t = datetime.fromtimestamp(t.timestamp() // step * step, zone)
                theirs.nowfun = lambda t=t: t
                expected = t + theirs.remaining_estimate(t)
                got = ours.next_after(t)
                if got is None or got.astimezone(zone).utcoffset() != t.utcoffset():
                    break  # a DST change lies between: Celery's arithmetic differs there
                assert got == expected.astimezone(UTC), (name, t)
                checked += 1
                t = expected.astimezone(zone)
    assert checked == 94  # every fire the starts reach, short of a DST change (fixed dates)


def _celery_interval(app: Celery, every: Any) -> Any:
    from celery.schedules import maybe_schedule

    return maybe_schedule(every, False, app)


BAD = """
from celery.schedules import crontab, schedule, solar

CELERYBEAT_SCHEDULE = {
    "sunrise": {"task": "t.a", "schedule": solar.__new__(solar)},  # needs ephem to build
    "relative": {"task": "t.b", "schedule": schedule(60, relative=True)},
    "rk": {"task": "t.c", "schedule": 60, "options": {"routing_key": "x"}},
    "ex": {"task": "t.d", "schedule": 60, "options": {"exchange": "x"}},
}
"""


def test_check_reports_what_beatd_cannot_honour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_module(tmp_path, monkeypatch, "celeryconfig_bad", BAD)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["check", "--celery-config", module])
    path = str(tmp_path / f"{module}.py")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"{path}:5:5: entry sunrise: field schedule: a Celery solar schedule cannot be "
        "honoured: beatd has intervals and cron expressions only; replace it with crontab(...) "
        "or seconds, or keep this entry in celery beat",
        f"{path}:6:5: entry relative: field schedule: schedule(relative=True) is not supported: "
        "beatd's slots are anchored",
        f"{path}:7:5: entry rk: field options.routing_key: routing_key 'x' differs from the "
        "queue 'celery': beatd writes each run onto its queue's Redis list directly, as Celery "
        "does for a direct exchange (where the routing key is the queue name); give the target "
        "as queue instead",
        f"{path}:8:5: entry ex: field options.exchange: unknown option",
    ]
    hints = read_celery_config(module, "UTC").hints
    assert hints == [
        f"{module}: CELERYBEAT_SCHEDULE is Celery's old name for beat_schedule; rename it "
        "(read anyway)"
    ]


def test_celery_protocol_on_sqlite_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load_module(tmp_path, monkeypatch, "celeryconfig_sqlite", CELERYCONFIG)
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'b.db'}"
    result = CliRunner().invoke(
        main, ["run", "--celery-config", module, "--broker", db, "--metrics-addr", "off"]
    )
    assert result.exit_code == 2, result.output
    path = tmp_path / f"{module}.py"
    assert result.stderr.splitlines()[-1] == (
        f"{path}:19:1: entry every-30s: protocol celery needs a Redis broker (Redis transport "
        f"only), but the broker is {db}; 5 entries use it. Point --broker at the Redis your "
        "Celery workers use (redis://HOST:PORT/DB)"
    )


def test_beatd_never_imports_celery_or_kombu() -> None:
    code = (
        "import sys, beatd.cli, beatd.scheduler, beatd.celery_protocol, beatd.config.celeryconf; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


EVENTS_APP = """
import os
from celery import Celery

app = Celery("events_app", broker=os.environ["BROKER"])
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="tasks.ok")
def ok():
    return "done"

@app.task(name="tasks.fail")
def fail():
    raise ValueError("the report is empty")

@app.task(name="tasks.flaky", bind=True, max_retries=2, default_retry_delay=0)
def flaky(self):
    if self.request.retries < 1:
        raise self.retry(exc=ConnectionError("db down"))
    return "second time lucky"
"""


def start_events_worker(tmp_path: Path, url: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A stock Celery worker that sends task events (-E), as `celery -A app worker -E` runs."""
    (tmp_path / "events_app.py").write_text(EVENTS_APP)
    log = tmp_path / "worker.log"
    env = {**os.environ, "BROKER": url, "PYTHONPATH": str(tmp_path)}
    args = [CELERY, "-A", "events_app", "worker", "-E", "-Q", "celery", "-P", "solo", "-c", "1"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    args += ["--logfile", str(log), "-n", "w1@test"]
    worker = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    wait_for(lambda: "ready." in _tail(log), 30, f"the worker to be ready:\n{_tail(log)}")
    return worker, log


def celery_entry(name: str, task: str, at: datetime) -> Entry:
    return Entry(name=name, task=task, schedule=OnceSchedule(at), queue="celery", protocol="celery")


def test_a_stock_celery_workers_outcomes_are_in_the_history(tmp_path: Path, redis_url: str) -> None:
    worker, log = start_events_worker(tmp_path, redis_url)
    backend = RedisBackend(redis_url)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    entries = [
        celery_entry("report", "tasks.ok", due),
        celery_entry("broken", "tasks.fail", due),
        celery_entry("flaky", "tasks.flaky", due),
    ]
    cfg = Config({e.name: e for e in entries})
    registry = CollectorRegistry()
    settings = SchedulerSettings(node="n1", lease_ttl=10, max_clock_skew=5)
    beat = build_scheduler(backend, cfg, lambda: cfg, SystemClock(), settings, registry=registry)
    [events] = [o for o in beat.observers if isinstance(o, CeleryEvents)]
    stop = threading.Event()
    loop = threading.Thread(target=beat.run, args=(stop,))
    loop.start()
    ids = {e.name: f"{e.name}@{due:%Y-%m-%dT%H:%M:%SZ}" for e in entries}
    try:
        wait_for(lambda: events.listener.stats.listening, 10, "the leader to listen")
        # tasks beatd did not publish: a UUID, and an id of beatd's shape it never published
        app = Celery("foreign", broker=redis_url)
        app.send_task("tasks.ok", task_id="0b1e6a3c-9d43-4d7e-a6a7-1c2d3e4f5a6b")
        app.send_task("tasks.ok", task_id="ghost@2026-01-01T00:00:00Z")

        def finished() -> bool:
            return all((r := backend.run(i)) is not None and r.finished for i in ids.values())

        try:
            wait_for(finished, 30, "three finished runs")
        except AssertionError:  # say what was heard and what the worker did
            raise AssertionError(f"{events.listener.stats}\nworker log:\n{_tail(log)}") from None
        wait_for(lambda: events.listener.stats.events["task-succeeded"] >= 4, 10, "the rest")
    finally:
        stop.set()
        beat.wake.set()
        loop.join(20)
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
    report, broken, flaky = (backend.run(ids[name]) for name in ("report", "broken", "flaky"))
    assert report is not None and broken is not None and flaky is not None
    assert (report.status, report.celery, report.received_at is not None) == (
        "succeeded",
        True,
        True,
    )
    [attempt] = report.attempts
    assert (attempt.number, attempt.consumer, attempt.host, attempt.pid) == (
        1,
        "w1@test",
        "test",
        worker.pid,
    )
    assert attempt.ended_at is not None and report.published_at <= attempt.ended_at
    assert attempt.started_at <= attempt.ended_at
    assert broken.status == "failed"
    assert [(a.outcome, a.error_type, a.error) for a in broken.attempts] == [
        ("failed", "ValueError", "the report is empty")
    ]
    assert flaky.status == "succeeded"
    assert [(a.number, a.outcome, a.error_type, a.error) for a in flaky.attempts] == [
        (1, "retried", "ConnectionError", "db down"),
        (2, "succeeded", "", ""),
    ]
    assert backend.run("ghost@2026-01-01T00:00:00Z") is None
    assert {r.id for r in backend.runs(HistoryQuery(limit=100))} == set(ids.values())
    assert backend.summaries()["broken"].consecutive_failures == 1

    def events_of(kind: str) -> float | None:
        return registry.get_sample_value("beatd_celery_events_total", {"type": kind})

    assert [events_of(f"task-{k}") for k in ("failed", "retried", "revoked")] == [1, 1, 0]
    assert (events_of("task-succeeded") or 0) >= 4  # the two foreign tasks' too
    assert registry.get_sample_value("beatd_celery_runs_published_total") == 3
    assert not events.listener.running  # stopped with the loop
    backend.close()


def test_beatd_run_records_a_stock_workers_outcomes(tmp_path: Path, redis_url: str) -> None:
    """The daemon as deployed: `beatd run` and `celery worker -E`, two real processes."""
    worker, log = start_events_worker(tmp_path, redis_url)
    # far enough ahead for `beatd run` to start and lead first: an `at:` already past when a
    # new entry is adopted never runs (its start took 3.7 s at a CI's load)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "celery.yaml").write_text(
        "queues:\n  celery: {protocol: celery}\nentries:\n"
        + "".join(
            f"  {name}:\n    task: {task}\n    at: '{due.isoformat()}'\n    queue: celery\n"
            for name, task in (
                ("good", "tasks.ok"),
                ("bad", "tasks.fail"),
                ("again", "tasks.flaky"),
            )
        )
    )
    run_log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "beatd", "run", "--broker", redis_url, "-s", str(schedules)]
    argv += ["--no-watch", "--metrics-addr", "127.0.0.1:0", "--node", "n1"]
    with run_log.open("wb") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    backend = RedisBackend(redis_url)
    ids = [f"{name}@{due:%Y-%m-%dT%H:%M:%SZ}" for name in ("good", "bad", "again")]
    try:

        def statuses() -> list[str | None]:
            return [(r.status if r is not None else None) for r in map(backend.run, ids)]

        try:
            wait_for(lambda: statuses() == ["succeeded", "failed", "succeeded"], 40)
        except AssertionError:
            raise AssertionError(
                f"{statuses()}\nbeatd run:\n{_tail(run_log)}\nworker:\n{_tail(log)}"
            ) from None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
    again = backend.run(ids[2])
    assert again is not None
    assert [(a.number, a.outcome, a.consumer) for a in again.attempts] == [
        (1, "retried", "w1@test"),
        (2, "succeeded", "w1@test"),
    ]
    said = _tail(run_log)
    assert "listening to Celery's task events on" in said
    assert "stopped listening to Celery's task events" in said
    backend.close()


def test_beatd_run_hears_the_outcomes_of_a_celery_entry_added_at_runtime(
    tmp_path: Path, redis_url: str
) -> None:
    """A leader whose files have no Celery entry starts listening to Celery's task events when
    one is added at runtime, so a stock worker's outcome reaches the history."""
    worker, log = start_events_worker(tmp_path, redis_url)
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "s.yaml").write_text("entries:\n  own:\n    task: t.own\n    cron: '0 0 1 1 *'\n")
    run_log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "beatd", "run", "--broker", redis_url, "-s", str(schedules)]
    argv += ["--no-watch", "--metrics-addr", "off", "--node", "n1"]
    with run_log.open("wb") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    backend = RedisBackend(redis_url)
    try:
        wait_for(lambda: "became leader" in _tail(run_log), 20, "n1 to lead")
        assert "listening to Celery's task events" not in _tail(run_log)
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        raw = {"task": "tasks.ok", "at": due.isoformat(), "queue": "celery", "protocol": "celery"}
        backend.put_entry(resolve_entry("added", raw, now=datetime.now(UTC)), "ops@host")
        added = f"added@{due:%Y-%m-%dT%H:%M:%SZ}"

        def status() -> str | None:
            record = backend.run(added)
            return None if record is None else record.status

        try:
            wait_for(lambda: status() == "succeeded", 30)
        except AssertionError:
            raise AssertionError(
                f"{status()}\nbeatd run:\n{_tail(run_log)}\nworker:\n{_tail(log)}"
            ) from None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
        backend.close()
    assert "listening to Celery's task events on" in _tail(run_log)
