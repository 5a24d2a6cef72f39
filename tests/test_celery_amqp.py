"""Celery's task events heard on RabbitMQ: a real, unmodified Celery worker started with `-E` on
the machine's RabbitMQ (127.0.0.1:5672, guest/guest), runs published to it by the test as
beatd's Celery messages, and the leader's listener recording their outcomes in a SQLite run
history. Every exchange and queue has a name of this module's own and is deleted afterwards; the
connection is cut through a loopback proxy the test owns, never by touching the server."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from beatd import celery_protocol
from beatd.amqp_link import Logins
from beatd.amqp_relay import AmqpRelay, RelaySettings
from beatd.assemble import build_scheduler, celery_event_source
from beatd.backends import open_backend, open_celery_events
from beatd.backends.amqp_events import QUEUE_PREFIX, AmqpCeleryEvents
from beatd.backends.base import BeatdQueue, Lease, Outgoing, StateWrite
from beatd.backends.sqlite import SQLiteBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.celery_listener import CeleryEventListener, CeleryEvents
from beatd.clock import FakeClock, SystemClock
from beatd.config import AmqpTarget, Config
from beatd.config.model import Entry
from beatd.controls import Guard, Overlap
from beatd.errors import BackendError, BeatdError, TransientBackendError
from beatd.history import HistoryQuery
from beatd.message import RunMessage
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import IntervalSchedule
from beatd.state import EntryState
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
CELERY = str(Path(sys.executable).with_name("celery"))
FOREIGN = "0b1e6a3c-9d43-4d7e-a6a7-1c2d3e4f5a6b"

EVENTS_APP = """
import os, time
from celery import Celery

app = Celery("amqp_events_app", broker=os.environ["BROKER"])
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_enable_remote_control=False,
    event_exchange=os.environ["EVENT_EXCHANGE"],
    task_default_queue=os.environ["QUEUE"],
)

@app.task(name="tasks.ok")
def ok():
    return "done"

@app.task(name="tasks.fail")
def fail():
    raise ValueError("the report is empty")

@app.task(name="tasks.slow")
def slow():
    time.sleep(float(os.environ.get("SLOW", "2")))  # longer than the skip entry's interval

@app.task(name="tasks.flaky", bind=True, max_retries=2, default_retry_delay=0)
def flaky(self):
    if self.request.retries < 1:
        raise self.retry(exc=ConnectionError("db down"))
    return "second time lucky"
"""


@dataclass
class Rabbit:
    """The module's names on the shared RabbitMQ, and the worker that uses them."""

    exchange: str  # Celery's event_exchange for this module's worker
    queue: str  # the task queue (Celery also declares a direct exchange of this name)
    worker: subprocess.Popen[bytes]
    log: Path
    hostname: str

    def publish(self, run_id: str, task: str) -> None:
        """Send one run as beatd's Celery message (protocol 2), on a connection of its own."""
        slot = datetime.now(UTC).replace(microsecond=0)
        message = RunMessage(run_id, task, run_id.partition("@")[0], slot, slot, self.queue)
        envelope = celery_protocol.envelope(message, "beatd@test")
        given = envelope["properties"]
        properties = pika.BasicProperties(
            content_type=envelope["content-type"],
            content_encoding=envelope["content-encoding"],
            headers=envelope["headers"],
            correlation_id=given["correlation_id"],
            delivery_mode=given["delivery_mode"],
            priority=given["priority"],
        )
        with amqp_channel() as channel:
            channel.basic_publish("", self.queue, base64.b64decode(envelope["body"]), properties)


@contextlib.contextmanager
def amqp_channel() -> Iterator[Any]:
    """A channel on a connection of the test's own to the shared RabbitMQ."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        yield connection.channel()
    finally:
        connection.close()


def exists(kind: str, name: str) -> bool:
    """Whether RabbitMQ has the queue or exchange `name` (a passive declare)."""
    with amqp_channel() as channel:
        try:
            getattr(channel, f"{kind}_declare")(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 405:  # RESOURCE_LOCKED: another connection's exclusive queue
                return True
            if exc.reply_code == 404:
                return False
            raise
        return True


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    """One stock Celery worker with -E for the module, on names of its own, deleted after."""
    tag = uuid.uuid4().hex[:10]
    exchange, queue = f"beatd-test-ev-{tag}", f"beatd-test-q-{tag}"
    workdir = tmp_path_factory.mktemp("celery-amqp")
    (workdir / "amqp_events_app.py").write_text(EVENTS_APP)
    log, hostname = workdir / "worker.log", f"w-{tag}@test"
    env = {**os.environ, "BROKER": AMQP, "EVENT_EXCHANGE": exchange, "QUEUE": queue}
    env["PYTHONPATH"] = str(workdir)
    args = [CELERY, "-A", "amqp_events_app", "worker", "-E", "-Q", queue, "-P", "solo", "-c", "1"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    args += ["--logfile", str(log), "-n", hostname]
    worker = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: "ready." in tail(log), 60, f"the worker to be ready:\n{tail(log)}")
        yield Rabbit(exchange, queue, worker, log, hostname)
    finally:
        # nothing runs by now: a warm (or cold) shutdown would wait ~10 s on the broker for nothing
        worker.kill()
        worker.wait(30)
        with amqp_channel() as channel:
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
            channel.exchange_delete(exchange)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(tmp_path / "beatd.db")
    yield backend
    backend.close()


def published(history: SQLiteBackend, *ids: str, guard: Guard | None = None) -> None:
    """The runs' published records, as the leader's commit writes them."""
    lease = history.acquire_lease("n1", 600)
    assert lease is not None
    for rid in ids:
        commit(history, lease, rid, guard)


def commit(history: SQLiteBackend, lease: Lease, rid: str, guard: Guard | None) -> None:
    entry, slot = rid.partition("@")[0], datetime.now(UTC)
    current = history.load_states().get(entry)
    write = StateWrite(
        EntryState(entry, slot, slot, "once"), current.last_slot if current else None, guard=guard
    )
    message = Outgoing(entry, rid, BeatdQueue("never-claimed"), f'{{"id": "{rid}"}}', slot, slot)
    assert history.commit(lease, [write], [message]) == set()


@pytest.fixture
def listening(
    rabbit: Rabbit, history: SQLiteBackend
) -> Iterator[Callable[[str], CeleryEventListener]]:
    """Start a listener on the module's event exchange at a URL; each is stopped after."""
    started: list[CeleryEventListener] = []

    def start(url: str) -> CeleryEventListener:
        source = open_celery_events(url, exchange=rabbit.exchange)
        ear = CeleryEventListener(source, history, SystemClock(), poll=0.2, max_backoff=0.5)
        started.append(ear)
        ear.start()
        wait_for(lambda: ear.stats.listening, 20, "the listener to bind its queue")
        return ear

    yield start
    for ear in started:
        ear.stop(wait=10)


def run_id(entry: str) -> str:
    return f"{entry}@{datetime.now(UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


def test_a_stock_workers_outcomes_heard_on_rabbitmq_are_in_the_history(
    rabbit: Rabbit,
    history: SQLiteBackend,
    listening: Callable[[str], CeleryEventListener],
) -> None:
    ids = {name: run_id(name) for name in ("report", "broken", "flaky")}
    published(history, *ids.values())
    ear = listening(AMQP)
    source = ear.source
    assert isinstance(source, AmqpCeleryEvents)
    queue = source.queue
    assert queue.startswith(QUEUE_PREFIX + ".") and exists("queue", queue)
    # tasks beatd did not publish: a UUID, and an id of beatd's shape it never published
    rabbit.publish(FOREIGN, "tasks.ok")
    rabbit.publish("ghost@2026-01-01T00:00:00Z", "tasks.ok")
    for name, task in (("report", "tasks.ok"), ("broken", "tasks.fail"), ("flaky", "tasks.flaky")):
        rabbit.publish(ids[name], task)

    def finished() -> bool:
        return all((r := history.run(i)) is not None and r.finished for i in ids.values())

    try:
        wait_for(finished, 40, "three finished runs")
        wait_for(lambda: ear.stats.events["task-succeeded"] >= 4, 10, "the foreign successes")
    except AssertionError:  # say what was heard and what the worker did
        raise AssertionError(f"{ear.stats}\nworker log:\n{tail(rabbit.log)}") from None
    report, broken, flaky = (history.run(ids[name]) for name in ("report", "broken", "flaky"))
    assert report is not None and broken is not None and flaky is not None
    assert (report.status, report.received_at is not None) == ("succeeded", True)
    [attempt] = report.attempts
    assert (attempt.number, attempt.consumer, attempt.host, attempt.pid) == (
        1,
        rabbit.hostname,
        "test",
        rabbit.worker.pid,
    )
    assert attempt.ended_at is not None and attempt.started_at <= attempt.ended_at
    assert broken.status == "failed"
    assert [(a.outcome, a.error_type, a.error) for a in broken.attempts] == [
        ("failed", "ValueError", "the report is empty")
    ]
    assert flaky.status == "succeeded"
    assert [(a.number, a.outcome, a.error_type, a.error) for a in flaky.attempts] == [
        (1, "retried", "ConnectionError", "db down"),
        (2, "succeeded", "", ""),
    ]
    # the foreign tasks ran and were heard, and wrote nothing
    assert history.run("ghost@2026-01-01T00:00:00Z") is None and history.run(FOREIGN) is None
    assert {r.id for r in history.runs(HistoryQuery(limit=100))} == set(ids.values())
    assert (ear.stats.events["task-failed"], ear.stats.events["task-retried"]) == (1, 1)
    assert (ear.stats.undecodable, ear.stats.write_errors, ear.stats.interruptions) == (0, 0, 0)
    ear.stop(wait=10)
    assert not ear.running and not ear.stats.listening
    assert not exists("queue", queue)  # exclusive and auto-delete: gone with the connection


def test_the_listener_hears_again_after_the_connection_is_cut(
    rabbit: Rabbit,
    history: SQLiteBackend,
    listening: Callable[[str], CeleryEventListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after = run_id("before"), run_id("after")
    published(history, before, after)
    proxy = TcpProxy(("127.0.0.1", 5672))
    try:
        caplog.set_level(logging.DEBUG, "beatd.celery_listener")
        ear = listening(f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F")
        source = ear.source
        assert isinstance(source, AmqpCeleryEvents)
        first_queue = source.queue
        rabbit.publish(before, "tasks.ok")
        wait_for(lambda: status(history, before) == "succeeded", 30, "the first run's end")
        proxy.cut()  # the broker is gone: every try to connect again is refused meanwhile
        wait_for(lambda: not ear.stats.listening, 20, "the listener to notice")
        wait_for(lambda: proxy_refused_a_try(caplog), 20, "a try to connect again, refused")
        proxy.restore()
        wait_for(lambda: ear.stats.listening, 20, "the listener to bind again")
        assert source.queue != first_queue and not exists("queue", first_queue)
        rabbit.publish(after, "tasks.ok")
        wait_for(lambda: status(history, after) == "succeeded", 30, "the second run's end")
        ear.stop(wait=10)
    finally:
        proxy.close()
    assert ear.stats.interruptions == 1
    ours = [r for r in caplog.records if r.name == "beatd.celery_listener"]
    warnings = [r for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # the outage, said once
    assert (
        warnings[0]
        .getMessage()
        .startswith(
            "Celery task events: unavailable, listening again with backoff (events sent meanwhile "
            f"are lost: their runs stay unknown): amqp://guest:***@127.0.0.1:{proxy.port}/%2F: "
            "celery events: "
        )
    )
    said = [r.getMessage() for r in ours]
    assert (
        said.count(
            f"hearing Celery's task events again on amqp://guest:***@127.0.0.1:{proxy.port}/%2F"
        )
        == 1
    )


def proxy_refused_a_try(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the listener tried to connect while the proxy refused (its debug line)."""
    return any("still failing" in r.getMessage() for r in caplog.records)


def status(history: SQLiteBackend, rid: str) -> str | None:
    record = history.run(rid)
    return record.status if record is not None else None


def test_a_skip_entry_is_free_again_when_its_run_succeeded_on_rabbitmq(
    rabbit: Rabbit,
    history: SQLiteBackend,
    listening: Callable[[str], CeleryEventListener],
) -> None:
    """Overlap `skip`: the entry is busy from its run's commit until the worker's
    task-succeeded, heard over AMQP, ends it."""
    rid = run_id("nightly")
    published(history, rid, guard=Guard(Overlap.SKIP, 3600.0))
    busy = history.load_controls()["nightly"].busy
    assert busy is not None and busy.run_id == rid
    listening(AMQP)
    rabbit.publish(rid, "tasks.ok")
    wait_for(lambda: "nightly" not in history.load_controls(), 30, "the busy mark cleared")
    assert status(history, rid) == "succeeded"


def test_a_skip_entry_on_rabbitmq_publishes_no_overlapping_run_and_goes_on_after_its_end(
    rabbit: Rabbit,
    history: SQLiteBackend,
    listening: Callable[[str], CeleryEventListener],
) -> None:
    """The whole path: a scheduler (fake time) commits an `overlap: skip` entry's runs to the
    outbox, the relay publishes them, a stock worker with -E runs a task longer than the
    interval, and its task-succeeded heard on RabbitMQ frees the entry. The relay's ack after
    RabbitMQ's confirm does not: the slot due meanwhile is missed, none overlaps."""
    start = datetime.now(UTC).replace(microsecond=0)
    slot = lambda n: start + timedelta(seconds=10 * n)  # noqa: E731
    target = AmqpTarget("amqp://guest@127.0.0.1:5672//")  # exchange and routing key: the queue
    slow = Entry(
        name="slow",
        task="tasks.slow",
        schedule=IntervalSchedule(timedelta(seconds=10), anchor=start),
        queue=rabbit.queue,
        protocol="celery",
        amqp=target,
        overlap=Overlap.SKIP,
        overlap_timeout=timedelta(hours=1),
    )
    config = Config({"slow": slow})
    clock = FakeClock(start)
    settings = SchedulerSettings(node="n1", lease_ttl=10, max_clock_skew=86_400)
    beat = Scheduler(history, lambda: config, clock, settings)
    relay = AmqpRelay(
        lambda: open_backend(history.url, history=False),
        Logins("guest").link,
        SystemClock(),
        RelaySettings(visibility=30.0, unroutable_delay=0.2),
    )
    listening(AMQP)
    outbox = lambda: history.queue_depths().get(OUTBOX_QUEUE, 0)  # noqa: E731
    try:
        run_for(beat, 10.5)  # slot 1 to the outbox, the entry busy
        first = f"slow@{slot(1):%Y-%m-%dT%H:%M:%SZ}"
        assert (outbox(), history.load_controls()["slow"].busy.run_id) == (1, first)
        assert relay.relay_one() and outbox() == 0  # on RabbitMQ; the worker runs it (2 s)
        assert history.load_controls()["slow"].busy.run_id == first  # the ack ended nothing
        run_for(beat, 10)  # slot 2 is due while the first run is busy: skipped
        assert outbox() == 0
        wait_for(lambda: "slow" not in history.load_controls(), 30, "the busy mark cleared")
        ended = history.run(first)
        assert ended is not None and ended.status == "succeeded"
        run_for(beat, 10)  # slot 3: the entry is free again
        third = f"slow@{slot(3):%Y-%m-%dT%H:%M:%SZ}"
        assert outbox() == 1 and history.load_controls()["slow"].busy.run_id == third
        assert relay.relay_one()
        wait_for(lambda: status(history, third) == "succeeded", 30, "the third run to succeed")
    finally:
        beat.shutdown()
        relay.close()
    assert [(m.slots.reason, m.slots.first, m.slots.total) for m in history.missed("slow")] == [
        ("overlap", slot(2), 1)
    ]
    runs = history.runs(HistoryQuery(entry="slow"))
    assert sorted(r.id for r in runs) == [first, third]
    third_run, first_run = sorted(runs, key=lambda r: r.published_at, reverse=True)
    assert first_run.attempts[-1].ended_at is not None
    assert third_run.published_at >= first_run.attempts[-1].ended_at


def test_a_refused_login_is_permanent_and_says_what_to_fix() -> None:
    source = AmqpCeleryEvents("amqp://guest:wrong@127.0.0.1:5672/%2F")
    with pytest.raises(BackendError) as caught:
        source.celery_events(0.1)
    assert not isinstance(caught.value, TransientBackendError)  # retrying cannot help
    assert str(caught.value) == (
        "amqp://guest:***@127.0.0.1:5672/%2F: RabbitMQ refused the login of user 'guest': "
        "Celery's task events are not heard and Celery runs stay unknown in the history; fix "
        "the user, password or virtual host in the AMQP URL (docs/celery.md)"
    )


def test_an_event_exchange_declared_otherwise_is_refused_by_name() -> None:
    name = f"beatd-test-ev-{uuid.uuid4().hex[:10]}"
    with amqp_channel() as channel:
        channel.exchange_declare(name, "fanout", auto_delete=False)
    try:
        source = AmqpCeleryEvents(AMQP, exchange=name)
        with pytest.raises(BackendError) as caught:
            source.celery_events(0.1)
        assert str(caught.value) == (
            f"amqp://guest:***@127.0.0.1:5672/%2F: the exchange '{name}' exists, but not as "
            "Celery declares it (a durable topic exchange): Celery's task events are not heard "
            "and Celery runs stay unknown in the history; delete it, or set Celery's "
            "event_exchange and beatd's to another name (docs/celery.md)"
        )
    finally:
        with amqp_channel() as channel:
            channel.exchange_delete(name)


def test_where_the_leader_hears_celerys_events(history: SQLiteBackend) -> None:
    source = celery_event_source(history, "amqp://beatd:s3cret@rabbit.example:5672/prod")
    assert isinstance(source, AmqpCeleryEvents)
    assert (source.url, source.exchange) == (
        "amqp://beatd:***@rabbit.example:5672/prod",
        "celeryev",
    )
    assert celery_event_source(history, None) is None  # SQLite hears no events itself
    config = Config({})
    settings = SchedulerSettings(node="n1")
    beat = build_scheduler(
        history, config, lambda: config, SystemClock(), settings, celery_events_url=AMQP
    )
    [events] = [o for o in beat.observers if isinstance(o, CeleryEvents)]
    assert isinstance(events.listener.source, AmqpCeleryEvents)
    assert events.listener.history is history  # recorded where the runs were committed


def test_a_url_that_is_not_amqp_is_refused_by_name() -> None:
    with pytest.raises(BeatdError) as caught:
        AmqpCeleryEvents("redis://:s3cret@127.0.0.1:6379/0")
    assert str(caught.value) == (
        "cannot hear Celery's task events at 'redis://:***@127.0.0.1:6379/0': not an AMQP URL; "
        "use amqp://user:password@host:5672/vhost or amqps://..."
    )


def test_a_missing_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pika", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "beatd.backends.amqp_events")
    with pytest.raises(BeatdError) as caught:
        open_celery_events(AMQP)
    assert str(caught.value) == (
        "hearing Celery's task events on an amqp:// broker needs the pika package, which is not "
        "installed: pip install 'beatd[amqp]'"
    )
