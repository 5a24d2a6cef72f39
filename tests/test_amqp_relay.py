"""Celery entries on RabbitMQ: runs committed to the outbox, relayed by the leader with publisher
confirms, run by a real, unmodified Celery worker on the machine's RabbitMQ (127.0.0.1:5672,
guest/guest, vhost /). Every queue and exchange a test names is unique to it and deleted after.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from beatd.amqp_link import Logins
from beatd.amqp_relay import (
    MISSING,
    OUTAGE,
    RECOVERED,
    REPUBLISHED,
    UNROUTABLE,
    AmqpRelay,
    RelaySettings,
)
from beatd.backends import open_backend
from beatd.backends.base import Backend
from beatd.backends.faults import Fault, FaultPlan, FaultyBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.cli import main
from beatd.clock import FakeClock, SystemClock
from beatd.config import AmqpTarget, Config
from beatd.config.model import Entry
from beatd.errors import NotApplied
from beatd.history import HistoryQuery
from beatd.metrics import register_amqp_relay
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule, OnceSchedule
from tests.processes import Processes
from tests.redis_server import free_port
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
CELERY = str(Path(sys.executable).with_name("celery"))
RABBITMQ = ("127.0.0.1", 5672)
BROKER = "amqp://guest:guest@127.0.0.1:5672//"  # as Celery users write it
BROKER_FOR_PIKA = "amqp://guest:guest@127.0.0.1:5672/%2F"

WORKER_APP = """
import json, os
from celery import Celery

app = Celery("celery_app", broker=os.environ["BROKER"])
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                task_queue_max_priority=9)

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


class Rabbit:
    """The test's queues on the shared RabbitMQ, declared as a Celery app declares them
    (durable, a direct exchange of the same name, bound with the name), deleted at the end."""

    def __init__(self) -> None:
        self.prefix = f"beatd-test-{uuid.uuid4().hex[:8]}"
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_FOR_PIKA))
        self.channel = self.connection.channel()
        self.queues: list[str] = []

    def name(self, queue: str) -> str:
        name = f"{self.prefix}.{queue}"
        self.queues.append(name)
        return name

    def declare(self, queue: str, max_priority: int | None = 9) -> None:
        arguments = {"x-max-priority": max_priority} if max_priority else None
        self.channel.exchange_declare(queue, "direct", durable=True)
        self.channel.queue_declare(queue, durable=True, arguments=arguments)
        self.channel.queue_bind(queue, queue, routing_key=queue)

    def drain(self, queue: str) -> list[tuple[Any, dict[str, Any], bytes]]:
        """Every message in `queue`, taken off it: (properties, headers, body)."""
        taken = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, properties.headers, body))

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        channel = self.connection.channel()
        for name in self.queues:
            channel.queue_delete(name)
            channel.exchange_delete(name)
        self.connection.close()


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    made = Rabbit()
    yield made
    made.close()


@pytest.fixture
def store() -> Iterator[Backend]:
    name = uuid.uuid4().hex
    backend = open_backend(f"memory://{name}")
    yield backend
    backend.close()


def outbox_of(store: Backend) -> Backend:
    """The relay's handle of `store`: the same queues, no run history."""
    return open_backend(store.url, history=False)


def entry(name: str, at: datetime, queue: str, url: str = BROKER, **kw: Any) -> Entry:
    target = AmqpTarget(url.replace("guest:guest@", "guest@"), **kw.pop("route", {}))
    schedule = kw.pop("schedule", OnceSchedule(at))
    return Entry(
        name=name,
        task="tasks.record",
        schedule=schedule,
        queue=queue,
        protocol="celery",
        amqp=target,
        **kw,
    )


def publish(store: Backend, clock: FakeClock, entries: list[Entry], seconds: float) -> None:
    """Run a scheduler on `store` for `seconds` of fake time: its runs go to the outbox."""
    cfg = Config({e.name: e for e in entries})
    settings = SchedulerSettings(node="n1", lease_ttl=10, max_clock_skew=86_400)
    beat = Scheduler(store, lambda: cfg, clock, settings)
    run_for(beat, seconds)
    beat.shutdown()


def relay_for(store: Backend, url: str = BROKER, **settings: Any) -> AmqpRelay:
    return AmqpRelay(
        lambda: outbox_of(store),
        Logins("guest").link,
        SystemClock(),
        RelaySettings(**{"visibility": 30.0, "unroutable_delay": 0.2, **settings}),
    )


def relay_all(relay: AmqpRelay) -> int:
    """Relay until the outbox has nothing ready; how many runs were handled."""
    handled = 0
    while relay.relay_one():
        handled += 1
    return handled


def an_hour_ago() -> datetime:
    """A start for the fake clock the backend (on the real one) accepts as within its skew."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def depth(store: Backend) -> int:
    return store.queue_depths().get(OUTBOX_QUEUE, 0)


def test_a_stock_celery_worker_runs_what_beatd_relayed(
    tmp_path: Path, rabbit: Rabbit, store: Backend
) -> None:
    # a clock two hours behind: runs expiring after a minute are stale when the worker sees them
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    s = lambda n: start + timedelta(seconds=n)  # noqa: E731
    celery, reports, prio = rabbit.name("celery"), rabbit.name("reports"), rabbit.name("prio")
    for queue in (celery, reports, prio):  # declared as the app would, before any worker runs
        rabbit.declare(queue)
    entries = [
        entry("plain", s(1), celery, args=(1, 2)),
        entry("with-kwargs", s(2), celery, kwargs={"word": "grüß", "n": 3}),
        entry("report", s(3), reports, args=("apac",)),
        entry("stale", s(4), celery, args=("never",), expires=timedelta(seconds=60)),
        # priorities 9 (highest) .. 0, published in this order into one queue
        entry("p9", s(5), prio, priority=9),
        entry("p0", s(6), prio, priority=0),
        entry("p4", s(7), prio, priority=4),
        entry("unset", s(8), prio),
        entry("p2", s(9), prio, priority=2),
    ]
    publish(store, FakeClock(start), entries, 12)
    assert depth(store) == 9
    relay = relay_for(store)
    try:
        assert relay_all(relay) == 9
        assert (depth(store), relay.stats.published, relay.stats.republished) == (0, 9, 0)
        # stale is expired when relayed (TTL 0, as Celery sends it): RabbitMQ drops it when it
        # reaches the head of its queue, or a worker that gets it first refuses it
        assert {q: rabbit.depth(q) for q in (celery, reports, prio)} == {
            celery: 3,
            reports: 1,
            prio: 5,
        }
        (tmp_path / "celery_app.py").write_text(WORKER_APP)
        out, log = tmp_path / "out.jsonl", tmp_path / "worker.log"
        env = {**os.environ, "BROKER": BROKER, "OUT": str(out), "PYTHONPATH": str(tmp_path)}
        args = [CELERY, "-A", "celery_app", "worker", "-Q", f"{celery},{reports},{prio}"]
        args += ["-P", "solo", "-c", "1", "--prefetch-multiplier", "1", "--without-gossip"]
        args += ["--without-mingle", "--without-heartbeat", "-l", "info", "--logfile", str(log)]
        args += ["-n", f"{rabbit.prefix}@test"]
        worker = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
        try:
            lines = lambda: out.read_text().splitlines() if out.exists() else []  # noqa: E731
            wait_for(lambda: len(lines()) >= 8, 60, f"8 runs; worker log:\n{_tail(log)}")
            # expired when relayed, a consumer waiting: the worker gets it and refuses it, or,
            # when the worker is still busy with its last run (a loaded machine), RabbitMQ drops
            # it, its TTL past, before delivering it: either way it never runs
            late = entry("late", s(13), celery, args=("never",), expires=timedelta(seconds=60))
            publish(store, FakeClock(s(12)), [late], 2)
            assert relay_all(relay) == 1
            wait_for(
                lambda: "late@" in _tail(log) or rabbit.depth(celery) == 0,
                20,
                "the expired run discarded by the worker or dropped by RabbitMQ",
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    finally:
        relay.close()
    runs = [json.loads(line) for line in lines()]
    by_entry = {r["entry"]: r for r in runs}
    assert by_entry["plain"] == {
        "id": f"plain@{stamp(s(1))}",
        "args": [1, 2],
        "kwargs": {},
        "queue": celery,
        "entry": "plain",
        "origin": "beatd@n1",
    }
    assert by_entry["with-kwargs"]["kwargs"] == {"word": "grüß", "n": 3}
    assert by_entry["report"]["queue"] == reports
    assert len(runs) == 8 and "stale" not in by_entry and "late" not in by_entry
    if "late@" in _tail(log):  # the worker got it: it refused it as revoked (expired)
        assert f"Discarding revoked task: tasks.record[late@{stamp(s(13))}]" in _tail(log)
    # AMQP's priorities run as beatd's: 9 first. Unset is sent without one, as Celery does,
    # which RabbitMQ reads as 0: beside p0, in the order relayed (the outbox hands out beatd's
    # bands, 4-6 or unset before 0-3)
    assert [r["entry"] for r in runs if r["queue"] == prio] == ["p9", "p4", "p2", "unset", "p0"]
    assert {q: rabbit.depth(q) for q in (celery, reports, prio)} == {celery: 0, reports: 0, prio: 0}


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def test_an_unroutable_run_stays_in_the_outbox_until_its_queue_exists(
    rabbit: Rabbit, store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Sent to the default exchange with a routing key no queue has: RabbitMQ returns it; it
    waits in the outbox (said once, counted), and goes once the app declares the queue."""
    later = rabbit.name("later")
    start = an_hour_ago()
    s = lambda n: start + timedelta(seconds=n)  # noqa: E731
    runs = [entry(f"e{n}", s(n), later, route={"exchange": ""}) for n in (1, 2)]
    publish(store, FakeClock(start), runs, 3)
    relay = relay_for(store, unroutable_delay=1.0)
    broker = "amqp://guest@127.0.0.1:5672/%2F"
    relay.targets = {broker: {("", later), (f"{later}-x", later)}}  # checked at connection
    caplog.set_level(logging.WARNING, "beatd.amqp_relay")
    try:
        assert relay_all(relay) == 2
        missing = [r.getMessage() for r in caplog.records if r.msg == MISSING]
        assert missing == [
            f"exchange '{later}-x' does not exist on RabbitMQ at {broker}: beatd declares none, "
            "so runs to it stay in the outbox until the Celery workers (or the app) declare it",
            f"queue '{later}' does not exist on RabbitMQ at {broker}: beatd declares none, so "
            "runs to it stay in the outbox until the Celery workers (or the app) declare it",
        ]
        assert (depth(store), relay.stats.unroutable, relay.stats.published) == (
            2,
            {later: 2},
            0,
        )
        metrics = CollectorRegistry()
        register_amqp_relay(metrics, relay.stats, store)
        sample = metrics.get_sample_value
        assert sample("beatd_amqp_unroutable_total", {"queue": later}) == 2
        assert (sample("beatd_amqp_outbox_depth"), sample("beatd_amqp_published_total")) == (2, 0)
        assert 3500 < sample("beatd_amqp_outbox_oldest_age_seconds") < 3700  # an hour ago
        said = [r for r in caplog.records if r.msg == UNROUTABLE]
        assert [r.getMessage() for r in said] == [
            f"run e1@{stamp(s(1))} to queue {later} returned by RabbitMQ at "
            f"amqp://guest@127.0.0.1:5672/%2F (exchange '', routing key {later!r}): no queue is "
            "bound to that route; it stays in the outbox and is tried again every 1 s (said "
            "once per queue)"
        ]
        rabbit.channel.queue_declare(later, durable=True)
        wait_for(lambda: relay_all(relay) >= 0 and depth(store) == 0, 10, "an empty outbox")
    finally:
        relay.close()
    ids = sorted(headers["id"] for _, headers, _ in rabbit.drain(later))
    assert ids == [f"e1@{stamp(s(1))}", f"e2@{stamp(s(2))}"]
    assert (relay.stats.published, relay.stats.republished) == (2, 0)


def test_the_message_is_celerys_amqp_message(rabbit: Rabbit, store: Backend) -> None:
    """Headers, properties and body as Celery's own client sends them over AMQP."""
    from celery import Celery

    queue = rabbit.name("format")
    rabbit.declare(queue)
    at = an_hour_ago()
    expires_at = at + timedelta(days=1, seconds=5)
    app = Celery("ref", broker=BROKER)
    app.conf.task_queue_max_priority = 9  # as the queue was declared
    app.send_task("tasks.record", args=(2, "é"), kwargs={"k": [1]}, queue=queue, priority=7,
                  expires=expires_at)  # fmt: skip
    wait_for(lambda: rabbit.depth(queue) == 1, 10, "Celery's message to arrive")  # unconfirmed
    [(theirs, their_headers, their_body)] = rabbit.drain(queue)
    one = entry("e", at, queue, args=(2, "é"), kwargs={"k": [1]}, priority=7,
                expires=expires_at - at)  # fmt: skip
    publish(store, FakeClock(at - timedelta(seconds=1)), [one], 2)
    relay = relay_for(store)
    try:
        assert relay_all(relay) == 1
    finally:
        relay.close()
    [(ours, our_headers, our_body)] = rabbit.drain(queue)
    assert json.loads(our_body) == json.loads(their_body)
    assert set(our_headers) - set(their_headers) == {
        "beatd_entry",
        "beatd_scheduled_for",
        "beatd_published_at",
        "beatd_kind",
    }
    assert set(their_headers) <= set(our_headers)
    for field in ("lang", "task", "expires", "retries", "timelimit", "argsrepr", "kwargsrepr"):
        assert our_headers[field] == their_headers[field], field
    assert our_headers["id"] == our_headers["root_id"] == f"e@{stamp(at)}"
    same = ("content_type", "content_encoding", "delivery_mode", "priority")
    assert {k: getattr(ours, k) for k in same} == {k: getattr(theirs, k) for k in same}
    assert ours.reply_to == ""  # Celery's is its app's id, for RPC results: beatd waits for none
    assert ours.correlation_id == our_headers["id"]
    assert theirs.correlation_id == their_headers["id"]
    # the time left, in ms, as Celery computes it when it sends (beatd: when the relay does)
    assert abs(int(ours.expiration) - int(theirs.expiration)) < 5_000


def test_rabbitmq_unreachable_for_30_s_under_load_loses_nothing(
    rabbit: Rabbit, store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler on the real clock commits 20 runs a second throughout; RabbitMQ is cut off
    for 30 s by a proxy the test owns. Every committed run reaches RabbitMQ, the relay catches
    up, and the outage is logged once as it begins and once as it ends."""
    queue = rabbit.name("outage")
    rabbit.declare(queue)
    every = IntervalSchedule(timedelta(seconds=1), datetime(2026, 1, 1, tzinfo=UTC))
    entries = [entry(f"e{n}", every.anchor, queue, schedule=every) for n in range(20)]
    cfg = Config({e.name: e for e in entries})
    beat = Scheduler(store, lambda: cfg, SystemClock(), SchedulerSettings(node="n1", lease_ttl=10))
    stop_beat = threading.Event()
    beating = threading.Thread(target=beat.run, args=(stop_beat,), daemon=True)
    caplog.set_level(logging.INFO, "beatd.amqp_relay")
    with TcpProxy(RABBITMQ) as proxy:
        url = f"amqp://guest@127.0.0.1:{proxy.port}//"
        relay = AmqpRelay(
            lambda: outbox_of(store),
            lambda _broker: Logins("guest").link(url),
            SystemClock(),
            RelaySettings(timeout=2.0, max_backoff=1.0, visibility=30.0),
        )
        beating.start()
        relay.start({})
        try:
            wait_for(lambda: relay.stats.published >= 100, 30, "100 runs relayed")
            proxy.cut()
            cut_at, back_at = relay.stats.published, time.monotonic() + 30
            wait_for(lambda: time.monotonic() >= back_at, 40, "the 30 s outage to pass")
            assert proxy.refused >= 10  # the relay kept trying, with backoff
            assert relay.stats.published - cut_at <= 1  # at most the publish in flight
            assert depth(store) >= 500  # 30 s of runs waited in the outbox
            proxy.restore()
            wait_for(lambda: depth(store) < 40, 60, f"the relay to catch up: {relay.stats}")
        finally:
            stop_beat.set()
            beating.join(20)
            wait_for(lambda: depth(store) == 0, 30, "the last runs relayed")
            relay.close()
    committed = {r.id for r in store.runs(HistoryQuery(limit=100_000))}
    ids = [headers["id"] for _, headers, _ in rabbit.drain(queue)]
    assert len(committed) >= 700  # 100 before the cut, 600 during it, some after
    assert set(ids) == committed  # nothing lost
    assert len(ids) - len(committed) <= relay.stats.republished  # any repeat was counted
    said = [r.msg for r in caplog.records if r.msg in (OUTAGE, RECOVERED)]
    assert said == [OUTAGE, RECOVERED]
    assert (relay.running, relay.stats.oldest_age) == (False, 0.0)  # as a follower exports it


def test_a_relay_killed_between_confirm_and_removal_republishes_once(
    rabbit: Rabbit, store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    queue = rabbit.name("killed")
    rabbit.declare(queue)
    start = an_hour_ago()
    once = f"once@{stamp(start + timedelta(seconds=1))}"
    publish(store, FakeClock(start), [entry("once", start + timedelta(seconds=1), queue)], 2)
    plan = FaultPlan()
    plan.inject("ack", Fault.FAIL_BEFORE_WRITE)  # the removal never happens: as if killed
    first = AmqpRelay(
        lambda: FaultyBackend(outbox_of(store), plan),
        Logins("guest").link,
        SystemClock(),
        RelaySettings(visibility=1.0),
    )
    caplog.set_level(logging.INFO, "beatd.amqp_relay")
    try:
        with pytest.raises(NotApplied):
            first.relay_one()
    finally:
        first.close()
    assert (first.stats.published, depth(store)) == (1, 1)
    second = relay_for(store)  # a new leader's, once the first one's claim lapsed
    try:
        wait_for(second.relay_one, 10, "the lapsed claim to be relayed again")
        assert relay_all(second) == 0
    finally:
        second.close()
    assert (second.stats.published, second.stats.republished, depth(store)) == (1, 1, 0)
    metrics = CollectorRegistry()
    register_amqp_relay(metrics, second.stats, store)
    assert metrics.get_sample_value("beatd_amqp_republished_total") == 1
    ids = [headers["id"] for _, headers, _ in rabbit.drain(queue)]
    assert ids == [once, once]
    assert [r.getMessage() for r in caplog.records if r.msg == REPUBLISHED] == [
        f"run {once} published to RabbitMQ again (a claim lapsed before its removal)"
    ]


CELERY_ON_RABBITMQ = """
broker_url = "amqp://guest:guest@127.0.0.1:{port}//"
beat_schedule = {{
    "ping": {{"task": "tasks.ping", "schedule": 1.0, "options": {{"queue": "{queue}"}}}},
}}
"""


def test_beatd_run_relays_a_celery_configs_schedule_to_rabbitmq(
    tmp_path: Path, rabbit: Rabbit
) -> None:
    """The daemon as deployed: `beatd run --celery-config` with an amqp:// broker_url keeps its
    state in the default SQLite file and publishes to RabbitMQ with the config's password; a
    short outage (a proxy the test owns) is said once as it begins and once as it ends."""
    queue = rabbit.name("cli")
    rabbit.declare(queue)
    proxy = TcpProxy(RABBITMQ)
    config = CELERY_ON_RABBITMQ.format(queue=queue, port=proxy.port)
    (tmp_path / "celeryconfig_amqp.py").write_text(config)
    run_log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "beatd", "run", "--celery-config", "celeryconfig_amqp"]
    argv += ["--no-watch", "--metrics-addr", "off", "--node", "n1"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with run_log.open("wb") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_for(lambda: rabbit.depth(queue) >= 3, 30, f"3 runs; beatd run:\n{_tail(run_log)}")
        proxy.cut()
        # the leader's event listener reconnects through the proxy too: wait for the relay
        said_cut = lambda: "unreachable; runs wait in the outbox" in _tail(run_log)  # noqa: E731
        wait_for(said_cut, 20, f"the relay to meet the cut; beatd run:\n{_tail(run_log)}")
        wait_for(lambda: proxy.refused >= 3, 20, "the relay to try again while cut")
        proxy.restore()
        cut_at = rabbit.depth(queue)
        wait_for(lambda: rabbit.depth(queue) >= cut_at + 3, 30, "runs relayed again")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
        proxy.close()
    said = _tail(run_log)
    assert said.count("unreachable; runs wait in the outbox") == 1, said
    assert said.count("reachable again; relaying the outbox") == 1, said
    assert " pika" not in said
    assert (tmp_path / "beatd.db").exists()
    assert "relaying the outbox to RabbitMQ" in said
    assert "stopped relaying the outbox to RabbitMQ" in said
    assert "guest:guest" not in said
    taken = rabbit.drain(queue)
    assert {headers["task"] for _, headers, _ in taken} == {"tasks.ping"}
    assert all(headers["id"].startswith("ping@") for _, headers, _ in taken)


KILLED_SCHEDULE = """\
queues:
  {queue}:
    protocol: celery
    amqp: {{url: "amqp://guest@127.0.0.1:5672//"}}
entries:
  yearly:
    task: tasks.record
    cron: "0 0 1 1 *"
    queue: {queue}
"""
FAULT_SAID = "fault point relay-after-confirm: run {run} confirmed by RabbitMQ"


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


def test_beatd_run_killed_between_confirm_and_removal_is_republished_once_by_the_next(
    tmp_path: Path, rabbit: Rabbit
) -> None:
    """A real `beatd run` stops itself (BEATD_FAULT_POINT=relay-after-confirm) right after
    RabbitMQ confirmed a run and before removing it from the outbox, and is killed there with
    SIGKILL; the `beatd run` that takes over publishes the run once more, with the same task id,
    and counts it; the run history still holds one run."""
    queue = rabbit.name("killed-run")
    rabbit.declare(queue)
    db = tmp_path / "beatd.db"
    cluster = Processes(tmp_path, f"sqlite:///{db}", lease_ttl=2.0)
    cluster.schedule(KILLED_SCHEDULE.format(queue=queue))
    env = {"BEATD_AMQP_PASSWORD": "guest"}
    triggered = CliRunner().invoke(
        main, ["trigger", "yearly", "-s", str(cluster.schedules), "--broker", cluster.broker]
    )
    assert triggered.exit_code == 0, triggered.output
    source = SQLiteBackend(db)
    (waiting,) = source.queued_as_dead_letters("")
    source.close()
    try:
        first = cluster.scheduler("n1", env={**env, "BEATD_FAULT_POINT": "relay-after-confirm"})
        said = FAULT_SAID.format(run=waiting.id)
        wait_for(lambda: first.count(said), 30, f"the fault point; {first.log.read_text()}")
        wait_for(lambda: stopped(first.popen.pid), 10, "n1 to stop itself")
        assert rabbit.depth(queue) == 1  # published and confirmed, still in the outbox:
        outbox = SQLiteBackend(db)
        assert outbox.queue_depths() == {OUTBOX_QUEUE: 1}
        outbox.close()
        first.popen.kill()  # SIGKILL, exactly there
        assert first.popen.wait(10) == -signal.SIGKILL
        port = free_port()
        second = cluster.scheduler("n2", "--metrics-addr", f"127.0.0.1:{port}", env=env)
        # the first's claim lapses after the relay's visibility (30 s), then n2 relays it again
        wait_for(lambda: rabbit.depth(queue) == 2, 60, f"the republish; {second.log.read_text()}")
        metric = "beatd_amqp_republished_total"
        wait_for(lambda: scraped(port, metric) == 1.0, 10, f"{metric} at 1")
        assert second.count(f"run {waiting.id} published to RabbitMQ again") == 1
        assert second.stop() == 0
    finally:
        cluster.close()
    ids = [headers["id"] for _, headers, _ in rabbit.drain(queue)]
    assert ids == [waiting.id, waiting.id]
    history = SQLiteBackend(db)
    try:
        assert [r.id for r in history.runs(HistoryQuery(entry="yearly"))] == [waiting.id]
        assert history.queue_depths() == {}
    finally:
        history.close()


def scraped(port: int, name: str) -> float | None:
    """A sample of the metrics page at `port` (None: not served yet, or absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            page = answer.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None
