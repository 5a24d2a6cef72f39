"""review21: an independent review of issue 21 (RabbitMQ for stock Celery workers; Redis
Sentinel), with real clients: the machine's RabbitMQ (unique names, deleted after), SQLite,
Redis (own namespace), PostgreSQL (a scratch database), a Sentinel cluster started here.

A test marked xfail(strict) pins a defect found in the review; the others pin a promise of the
issue that holds now."""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from click.testing import CliRunner

from beatd.amqp_link import Logins
from beatd.amqp_relay import AmqpRelay, RelaySettings
from beatd.backends import open_backend
from beatd.celery_amqp import OUTBOX_QUEUE, decode
from beatd.cli import main
from beatd.clock import FakeClock, SystemClock
from beatd.config import AmqpTarget, Config
from beatd.config.model import Entry
from beatd.scheduler import Scheduler, SchedulerSettings, run_for
from beatd.schedules import OnceSchedule
from tests.postgres_database import scratch_database
from tests.processes import Processes
from tests.redis_sentinel import SentinelCluster
from tests.tcp_proxy import TcpProxy
from tests.test_amqp_outbox import amqp_schedule
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
RABBITMQ = ("127.0.0.1", 5672)
BROKER_FOR_PIKA = "amqp://guest:guest@127.0.0.1:5672/%2F"
SHOWN = "amqp://guest@127.0.0.1:5672/%2F"


def beatd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def celery_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> str:
    """A Celery config module written into `tmp_path`, importable; its `MODULE:app` spec."""
    name = f"review21_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return f"{name}:app"


def outbox_runs(url: str) -> dict[str, Any]:
    """Every run waiting in the outbox of `url`, by entry."""
    backend = open_backend(url)
    try:
        found = {}
        while (delivery := backend.claim([OUTBOX_QUEUE], "review21", 30)) is not None:
            run = decode(delivery.body)
            found[run.entry] = run
        return found
    finally:
        backend.close()


# --- --celery-config with an amqp:// broker_url -------------------------------------------------

PRIORITIES_APP = """
from celery import Celery
app = Celery("proj", broker="amqp://guest:s3cret@127.0.0.1:5672//")
app.conf.beat_schedule = {
    "urgent": {"task": "proj.tick", "schedule": 60.0, "options": {"priority": 9}},
    "lazy": {"task": "proj.tick", "schedule": 60.0, "options": {"priority": 0}},
}
"""


def test_celery_config_priorities_on_rabbitmq_reach_rabbitmq_as_celery_beat_sends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`celery beat` on RabbitMQ sends options.priority as the AMQP priority itself (9 highest);
    beatd on the same config must send the same number, as the issue promises 9 -> 9."""
    spec = celery_config(tmp_path, monkeypatch, PRIORITIES_APP)
    db = f"sqlite:///{tmp_path / 'b.db'}"
    for name in ("urgent", "lazy"):
        code, _, err = beatd("trigger", name, "--celery-config", spec, "--broker", db)
        assert (code, err) == (0, "")
    runs = outbox_runs(db)
    sent = {name: run.properties(run.published_at).get("priority") for name, run in runs.items()}
    assert sent == {"urgent": 9, "lazy": 0}


ROUTED_APP = """
from celery import Celery
app = Celery("proj", broker="amqp://guest@127.0.0.1:5672//")
app.conf.beat_schedule = {
    "nightly": {
        "task": "reports.nightly",
        "schedule": 60.0,
        "options": {"queue": "reports", "exchange": "tasks", "routing_key": "reports.nightly"},
    },
}
"""


def test_celery_config_exchange_and_routing_key_options_route_the_run_on_rabbitmq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = celery_config(tmp_path, monkeypatch, ROUTED_APP)
    db = f"sqlite:///{tmp_path / 'b.db'}"
    code, _, err = beatd("trigger", "nightly", "--celery-config", spec, "--broker", db)
    assert (code, err) == (0, "")
    run = outbox_runs(db)["nightly"]
    assert (run.exchange, run.routing_key, run.queue) == ("tasks", "reports.nightly", "reports")


FAILOVER_APP = """
from celery import Celery
app = Celery("proj", broker="amqp://guest@127.0.0.1:5672//;amqp://guest@127.0.0.2:5672//")
app.conf.beat_schedule = {"tick": {"task": "proj.tick", "schedule": 60.0}}
"""


def test_a_failover_broker_url_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = celery_config(tmp_path, monkeypatch, FAILOVER_APP)
    db = f"sqlite:///{tmp_path / 'b.db'}"
    code, _, err = beatd("trigger", "tick", "--celery-config", spec, "--broker", db)
    assert code != 0 and "broker_url" in err, err
    assert outbox_runs(db) == {}


# --- the relay on each backend's outbox, against the machine's RabbitMQ --------------------------


@dataclass
class Rabbit:
    """A channel of the test's own; the queues (and exchanges) in `made` are deleted after."""

    channel: Any
    made: list[str] = field(default_factory=list)

    def name(self) -> str:
        self.made.append(f"review21-{uuid.uuid4().hex[:8]}")
        return self.made[-1]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[Rabbit]:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_FOR_PIKA))
    made = Rabbit(connection.channel())
    yield made
    cleanup = connection.channel()
    for name in made.made:
        cleanup.queue_delete(name)
        cleanup.exchange_delete(name)
    connection.close()


def declare(rabbit: Rabbit, name: str) -> None:
    """As a Celery app declares a queue: a direct exchange of its name, bound with its name."""
    rabbit.channel.exchange_declare(name, "direct", durable=True)
    rabbit.channel.queue_declare(name, durable=True)
    rabbit.channel.queue_bind(name, name, routing_key=name)


def drain(rabbit: Rabbit, queue: str) -> list[str]:
    ids: list[str] = []
    while True:
        method, properties, _ = rabbit.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(properties.headers["id"])


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A backend URL and Redis namespace, empty (Redis: the shared server, a namespace of its
    own, deleted after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'b.db'}", "beatd"
    elif request.param == "redis":
        namespace = f"review21-{uuid.uuid4().hex[:8]}"
        yield "redis://127.0.0.1:6379/0", namespace
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    else:
        with scratch_database() as url:
            yield url, "beatd"


def commit_runs(
    url: str,
    namespace: str,
    queue: str,
    count: int,
    other: tuple[str, str] | None = None,
    exchange: str | None = "",
) -> list[str]:
    """`count` runs of entries with an AMQP destination to `queue` (default exchange),
    committed to the outbox by a scheduler on a fake clock; their ids. With `other` (a broker
    URL and queue), every second entry goes there instead."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    routes = [(SHOWN, queue), other or (SHOWN, queue)]
    entries = [
        Entry(
            name=f"e{n}",
            task="tasks.record",
            schedule=OnceSchedule(start + timedelta(seconds=n + 1)),
            queue=routes[n % 2][1],
            protocol="celery",
            amqp=AmqpTarget(routes[n % 2][0], exchange=exchange),
        )
        for n in range(count)
    ]
    cfg = Config({e.name: e for e in entries})
    store = open_backend(url, namespace=namespace)
    try:
        settings = SchedulerSettings(node="n1", lease_ttl=10, max_clock_skew=86_400)
        beat = Scheduler(store, lambda: cfg, FakeClock(start), settings)
        run_for(beat, count + 2)
        beat.shutdown()
    finally:
        store.close()
    return [f"e{n}@{start + timedelta(seconds=n + 1):%Y-%m-%dT%H:%M:%SZ}" for n in range(count)]


def relay_on(url: str, namespace: str, broker: str = BROKER_FOR_PIKA, **kw: Any) -> AmqpRelay:
    settings = RelaySettings(**{"visibility": 30.0, "unroutable_delay": 0.5, **kw})
    return AmqpRelay(
        lambda: open_backend(url, namespace=namespace, history=False),
        lambda _shown: Logins("guest").link(broker),
        SystemClock(),
        settings,
    )


def relay_all(relay: AmqpRelay) -> int:
    handled = 0
    while relay.relay_one():
        handled += 1
    return handled


def outbox_depth(url: str, namespace: str) -> int:
    backend = open_backend(url, namespace=namespace)
    try:
        return backend.queue_depths().get(OUTBOX_QUEUE, 0)
    finally:
        backend.close()


def test_a_returned_run_relayed_once_its_queue_exists_is_not_counted_republished(
    outbox_url: tuple[str, str], rabbit: Rabbit
) -> None:
    """Returned while no queue exists (stays, counted unroutable), published once the queue
    is declared: RabbitMQ holds each run once and nothing counts a republish."""
    url, namespace = outbox_url
    queue = rabbit.name()
    ids = commit_runs(url, namespace, queue, 3)
    relay = relay_on(url, namespace)
    try:
        assert relay_all(relay) == 3  # each returned, and not ready again for 0.5 s
        assert (relay.stats.unroutable[queue], relay.stats.published) == (3, 0)
        assert outbox_depth(url, namespace) == 3
        declare(rabbit, queue)
        wait_for(lambda: relay_all(relay) >= 0 and relay.stats.published == 3, 10, "3 relayed")
    finally:
        relay.close()
    assert sorted(drain(rabbit, queue)) == sorted(ids)
    assert (relay.stats.published, relay.stats.republished) == (3, 0)
    assert outbox_depth(url, namespace) == 0


def test_a_run_to_celerys_default_route_before_any_worker_declared_it_waits_and_goes_once(
    rabbit: Rabbit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's default route (a direct exchange named as the queue) before any worker
    declared it: the exchange is missing (the channel closed, 404); the runs stay, said once,
    and go once the worker's declarations exist."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    queue = rabbit.name()
    ids = commit_runs(url, "beatd", queue, 2, exchange=None)
    caplog.set_level(logging.WARNING, "beatd.amqp_relay")
    relay = relay_on(url, "beatd")
    try:
        assert relay_all(relay) == 2
        assert (relay.stats.unroutable[queue], outbox_depth(url, "beatd")) == (2, 2)
        declare(rabbit, queue)
        wait_for(lambda: relay_all(relay) >= 0 and relay.stats.published == 2, 10, "2 relayed")
    finally:
        relay.close()
    assert sorted(drain(rabbit, queue)) == sorted(ids)
    assert relay.stats.republished == 0
    said = [r.getMessage() for r in caplog.records if "returned by RabbitMQ" in r.getMessage()]
    assert len(said) == 1 and f"(exchange {queue!r}, routing key {queue!r})" in said[0]


def test_runs_given_back_while_rabbitmq_is_cut_off_are_relayed_once_and_not_counted_again(
    outbox_url: tuple[str, str], rabbit: Rabbit, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections refused (a proxy the test owns, cut): each claimed run is given back; once
    the proxy is restored every run reaches RabbitMQ once, none counted as republished."""
    url, namespace = outbox_url
    queue = rabbit.name()
    declare(rabbit, queue)
    ids = commit_runs(url, namespace, queue, 3)
    caplog.set_level(logging.WARNING, "beatd.amqp_relay")
    with TcpProxy(RABBITMQ) as proxy:
        proxy.cut()
        relay = relay_on(url, namespace, f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
        try:
            for _ in range(3):
                with pytest.raises(Exception):  # noqa: B017 - the relay's private _Unreachable
                    relay.relay_one()
            assert outbox_depth(url, namespace) == 3
            proxy.restore()
            assert relay_all(relay) == 3
        finally:
            relay.close()
    assert sorted(drain(rabbit, queue)) == sorted(ids)
    assert (relay.stats.published, relay.stats.republished) == (3, 0)
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1  # the outage said once


def test_an_unreachable_broker_does_not_hold_up_the_runs_to_another(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    reachable, cut_off = rabbit.name(), rabbit.name()
    declare(rabbit, reachable)
    with TcpProxy(RABBITMQ) as proxy:
        proxy.cut()
        other = (f"amqp://guest@127.0.0.1:{proxy.port}/%2F", cut_off)
        ids = commit_runs(url, "beatd", reachable, 6, other)  # e0, e2, e4 to the reachable one
        relay = AmqpRelay(
            lambda: open_backend(url, history=False),
            Logins("guest").link,
            SystemClock(),
            RelaySettings(timeout=1.0, max_backoff=0.5),
        )
        relay.start({})
        try:
            reached = lambda: relay.stats.published >= 3  # noqa: E731
            with contextlib.suppress(AssertionError):
                wait_for(reached, 15, "the reachable broker's runs relayed")
        finally:
            relay.close()
    assert sorted(drain(rabbit, reachable)) == sorted(ids[0::2])


def test_outbox_runs_are_relayed_after_their_entries_left_the_schedule(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    queue = rabbit.name()
    declare(rabbit, queue)
    db = tmp_path / "b.db"
    before = tmp_path / "before.yaml"
    before.write_text(
        f"queues:\n  {queue}:\n    protocol: celery\n    amqp: {{url: {SHOWN!r}, exchange: ''}}\n"
        f"entries:\n  report:\n    task: r.t\n    cron: '0 2 * * *'\n    queue: {queue}\n"
    )
    code, run_id, err = beatd("trigger", "report", "-s", str(before), "--broker", f"sqlite:///{db}")
    assert (code, err) == (0, "")
    processes = Processes(tmp_path, f"sqlite:///{db}")
    processes.schedule("entries:\n  other:\n    task: o.t\n    cron: '0 3 * * *'\n")
    try:
        leader = processes.scheduler("n1", "--metrics-addr", "127.0.0.1:0")
        wait_for(lambda: leader.count("became leader"), 10, "n1 to lead")
        with contextlib.suppress(AssertionError):
            wait_for(lambda: outbox_depth(f"sqlite:///{db}", "beatd") == 0, 8, "the run relayed")
    finally:
        processes.close()
    assert drain(rabbit, queue) == [run_id.strip()]


def test_a_refused_login_is_said_as_such_by_the_relay(
    rabbit: Rabbit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    queue = rabbit.name()
    declare(rabbit, queue)
    commit_runs(url, "beatd", queue, 1)
    caplog.set_level(logging.WARNING, "beatd.amqp_relay")
    relay = relay_on(url, "beatd", "amqp://guest:not-the-password@127.0.0.1:5672//")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the relay's own kind of error
            relay.relay_one()
    finally:
        relay.close()
    said = [r for r in caplog.records if r.name == "beatd.amqp_relay"]
    assert [r.levelno for r in said] == [logging.ERROR]
    assert "refused the login of user 'guest'" in said[0].getMessage()
    assert "not-the-password" not in said[0].getMessage()


# --- Redis Sentinel: every command on a redis+sentinel:// URL -----------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    started = SentinelCluster(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield started
    finally:
        started.stop()


def test_status_dead_and_migrate_work_on_a_sentinel_url(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    schedule = amqp_schedule(tmp_path)
    code, out, err = beatd("trigger", "nightly", "-s", str(schedule), "--broker", cluster.url)
    assert (code, err) == (0, "") and out.startswith("nightly@manual-")
    code, out, err = beatd("status", "--broker", cluster.url)
    assert code == 0, err
    assert f"backend  {cluster.url}\n" in out and "amqp.outbox  1      0\n" in out
    code, out, err = beatd("dead", "list", "--broker", cluster.url)
    assert (code, out.splitlines()[-1]) == (0, "0 dead letter(s)")
    target = f"sqlite:///{tmp_path / 'to.db'}"
    code, out, err = beatd("migrate", "--from", cluster.url, "--to", target)
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"carried 1 undelivered run(s) to the target's outbox ({OUTBOX_QUEUE}) for its relay"
    )
    assert list(outbox_runs(target)) == ["nightly"]


def test_a_sentinel_url_with_passwords_shows_none_in_errors(cluster: SentinelCluster) -> None:
    """The data server's password and the sentinels' one, both wrong: the error names the URL
    with both hidden."""
    url = cluster.url.replace("://", "://:data-s3cret@") + "?sentinel_password=sent-s3cret"
    code, out, err = beatd("status", "--broker", url)
    assert code != 0
    assert "s3cret" not in out + err
    assert ":***@" in err and "sentinel_password=***" in err


def test_the_pause_warning_counts_the_replicas_that_acknowledged(
    cluster: SentinelCluster, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = f"review21-{uuid.uuid4().hex[:8]}"
    backend = open_backend(cluster.url, namespace=namespace, op_timeout=1, wait_replicas=2)
    try:
        caplog.set_level(logging.WARNING, "beatd.backends.redis_replication")
        with pytest.raises(Exception, match="acknowledged by 1 of 2 replicas"):
            backend.acquire_lease("a", 30)
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "(1 of 2)" in said[0]
        assert "by any replica" not in said[0]
    finally:
        backend.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
