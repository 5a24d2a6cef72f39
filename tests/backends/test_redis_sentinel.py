"""Redis behind Sentinel: the URL, the contract through it, WAIT and its pause, a failover.

Each test talks to a primary, a replica and three sentinels started for it on free ports
(tests/redis_sentinel.py); the contract shares one such set, flushed before each test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from beatd.backends import open_backend
from beatd.backends.base import Backend, Lease, StateWrite, to_micros
from beatd.backends.redis import RedisBackend
from beatd.backends.redis_sentinel import SentinelAddress, parse_sentinel_url
from beatd.errors import BackendError, NotApplied, OutcomeUnknown
from beatd.metrics import _replication_metrics
from tests.backends.contract import BackendContract, message, state
from tests.backends.test_redis import DOCS, backends_of, documented_acl, exercise, make_certificates
from tests.redis_sentinel import SERVICE, Certificates, SentinelCluster
from tests.waiting import wait_for

FORM = "the form is redis+sentinel://[user:password@]host1:26379,host2:26379/SERVICE/DB"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    started = SentinelCluster(tmp_path_factory.mktemp("sentinel")).start()
    yield started
    started.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A set of its own, for a test that pauses or kills a server."""
    started = SentinelCluster(tmp_path).start()
    yield started
    started.stop()


@pytest.fixture
def admin(cluster: SentinelCluster) -> Iterator[redis.Redis]:
    client = cluster.primary.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def backend_factory(
    cluster: SentinelCluster, admin: redis.Redis
) -> Iterator[Callable[[], Backend]]:
    yield from backends_of(cluster.url)


@pytest.fixture
def backend(backend_factory: Callable[[], RedisBackend]) -> RedisBackend:
    return backend_factory()


@pytest.fixture
def history_off_backend(cluster: SentinelCluster, admin: redis.Redis) -> Iterator[RedisBackend]:
    for make in backends_of(cluster.url, history=False):
        yield make()


@pytest.fixture
def advance() -> Callable[[float], None]:
    return time.sleep  # Redis keeps time itself


class TestRedisSentinelContract(BackendContract):
    """The whole contract through a Sentinel URL: every commit and take WAITs for the
    replica (auto: the primary has one)."""

    @pytest.fixture
    def unit(self) -> float:
        return 0.5


# --- the URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        (
            "redis+sentinel://beatd:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/main/2",
            SentinelAddress(
                (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)),
                "main",
                2,
                "beatd",
                "s3cret",
            ),
        ),
        (
            "rediss+sentinel://s1:26379/main?sentinel_password=pw&ssl_ca_certs=/etc/ca.pem",
            SentinelAddress(
                (("s1", 26379),),
                "main",
                0,
                tls=True,
                options={"sentinel_password": "pw", "ssl_ca_certs": "/etc/ca.pem"},
            ),
        ),
    ],
    ids=["users_hosts_default_port_ipv6_db", "tls_sentinel_password_default_db"],
)
def test_a_sentinel_url_names_the_sentinels_service_database_and_users(
    url: str, address: SentinelAddress
) -> None:
    assert parse_sentinel_url(url, "shown") == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "redis+sentinel://:pw@s1:26379",
            "redis+sentinel://:***@s1:26379: no service name (the name in Sentinel's "
            "`sentinel monitor` line) in the path",
        ),
        (
            "redis+sentinel://s1:26379,,s2/main",
            "redis+sentinel://s1:26379,,s2/main: a sentinel's host is empty",
        ),
        (
            "redis+sentinel://s1:port/main",
            "redis+sentinel://s1:port/main: the sentinel address 's1:port' is not host or "
            "host:port",
        ),
        (
            "redis+sentinel://s1/main/zero",
            "redis+sentinel://s1/main/zero: the database 'zero' is not a number",
        ),
        (
            "redis+sentinel://s1/main/0/x",
            "redis+sentinel://s1/main/0/x: the path '/main/0/x' has more than a service name "
            "and a database",
        ),
        (
            "redis+sentinel://s1/main?sentinel_password=pw&master=m",
            "redis+sentinel://s1/main?sentinel_password=***&master=m: unknown option "
            "master: use sentinel_username, sentinel_password, ssl_ca_certs, "
            "ssl_certfile, ssl_keyfile, ssl_cert_reqs",
        ),
        (
            "redis+sentinel://s1/main?ssl_ca_certs=/ca.pem",
            "redis+sentinel://s1/main?ssl_ca_certs=/ca.pem: TLS options without TLS: use "
            "rediss+sentinel://",
        ),
    ],
    ids=["no_service", "empty_host", "bad_port", "bad_db", "long_path", "unknown", "tls_opt"],
)
def test_a_bad_sentinel_url_is_refused_naming_it_without_passwords_and_what_is_wrong(
    url: str, problem: str
) -> None:
    with pytest.raises(BackendError) as caught:
        open_backend(url)
    assert str(caught.value) == f"cannot use Redis Sentinel URL {problem}; {FORM}"


def test_celery_task_events_are_heard_from_the_primary(
    cluster: SentinelCluster, admin: redis.Redis
) -> None:
    backend = RedisBackend(cluster.url)
    assert backend.celery_events(0.05) == []  # subscribed now, on a connection of its own
    admin.publish("/0.celeryev/task.succeeded", b"event")
    heard: list[bytes] = []
    wait_for(lambda: heard.extend(backend.celery_events(0.2)) or heard, timeout=5)
    assert heard == [b"event"]
    backend.close()


# --- WAIT, its pause, and a failover -------------------------------------------------------


def test_a_commit_no_replica_acknowledged_is_in_doubt_counted_and_pauses_publishing(
    own_cluster: SentinelCluster, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(own_cluster.url, op_timeout=1.0)
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    shown = backend.url
    own_cluster.replica.pause()
    try:
        with pytest.raises(OutcomeUnknown) as caught:
            backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
        assert str(caught.value) == (
            f"{shown}: commit: applied on the primary but acknowledged by 0 of 1 replicas "
            "within 500 ms (WAIT): a failover now could lose it"
        )
        assert set(backend.load_states()) == {"e"}  # applied, on the primary
        with pytest.raises(NotApplied) as paused:
            backend.commit(lease, [StateWrite(state("f", 0), None)], [message("f", 0)])
        assert str(paused.value) == (
            f"{shown}: commit: publishing paused: the last commit is acknowledged by 0 of 1 "
            "replicas (WAIT); it resumes when a replica acknowledges it or a failover ends "
            "(docs/redis.md, Sentinel)"
        )
        assert set(backend.load_states()) == {"e"}  # refused before it was sent
    finally:
        own_cluster.replica.resume()
    with caplog.at_level(logging.INFO, logger="beatd.backends.redis_replication"):
        wait_for(lambda: _commits(backend, lease), timeout=10, what="publishing to resume")
    assert set(backend.load_states()) == {"e", "f"}
    assert backend.replication_stats() == {"unacknowledged": 1, "primary_changes": 0}
    exported = {s.name: s.value for m in _replication_metrics(backend) for s in m.samples}
    assert exported == {
        "beatd_backend_unacknowledged_writes_total": 1,
        "beatd_backend_primary_changes_total": 0,
    }
    assert f"{shown}: replicas acknowledged the commits again; publishing resumes" in (
        caplog.messages
    )
    backend.close()


def _commits(backend: RedisBackend, lease: Lease) -> bool:
    try:
        backend.commit(lease, [StateWrite(state("f", 0), None)], [message("f", 0)])
    except NotApplied:
        return False
    return True


def test_without_waiting_a_commit_goes_through_while_the_replica_is_paused(
    own_cluster: SentinelCluster,
) -> None:
    backend = RedisBackend(own_cluster.url, op_timeout=1.0, wait_replicas=0)
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    own_cluster.replica.pause()
    try:
        backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
    finally:
        own_cluster.replica.resume()
    assert backend.replication_stats() == {"unacknowledged": 0, "primary_changes": 0}
    backend.close()


def test_after_a_failover_every_call_reaches_the_new_primary_and_the_change_is_logged_once(
    own_cluster: SentinelCluster, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(own_cluster.url, op_timeout=1.0)
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
    old, new = own_cluster.primary.port, own_cluster.replica.port
    own_cluster.primary.kill()
    with caplog.at_level(logging.WARNING, logger="beatd.backends.redis_sentinel"):
        wait_for(lambda: _answers(backend), timeout=20, what="the new primary")
        for _ in range(3):
            backend.ping()
    assert own_cluster.primary_port() == new
    assert set(backend.load_states()) == {"e"}  # acknowledged by the replica: kept
    assert backend.leader() is not None  # and the lease with it
    # the new primary has no replica: auto looks again at once and waits for none
    backend.commit(lease, [StateWrite(state("f", 0), None)], [message("f", 0)])
    assert backend.replication_stats() == {"unacknowledged": 0, "primary_changes": 1}
    assert caplog.messages == [
        f"Redis Sentinel service {SERVICE} moved to a new primary: 127.0.0.1:{new} (was "
        f"127.0.0.1:{old}); reconnecting there url={backend.url}"
    ]
    backend.close()


def test_a_coordinated_failover_the_demoted_primary_refuses_and_the_next_commit_goes_on(
    own_cluster: SentinelCluster,
) -> None:
    """SENTINEL FAILOVER: the old primary, now a replica, answers READONLY on the connections
    beatd holds; the write is in doubt (redis-py reports the READONLY as a lost connection),
    and a later one reaches the new primary."""
    backend = RedisBackend(own_cluster.url, op_timeout=1.0)
    lease = backend.acquire_lease("a", 30)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [message("e", 0)])
    with own_cluster.sentinels[0].client() as sentinel:
        sentinel.sentinel_failover(SERVICE)
    wait_for(lambda: own_cluster.primary_port() == own_cluster.replica.port, timeout=20)
    outcomes: list[str] = []

    advance = StateWrite(state("e", 1), state("e", 0).last_slot)

    def committed() -> bool:
        try:
            rejected = backend.commit(lease, [advance], [message("e", 1)])
        except (NotApplied, OutcomeUnknown) as exc:
            outcomes.append(type(exc).__name__)
            return False
        # a commit in doubt that the new primary has after all is refused by its compare-and-set
        return rejected == set() or backend.load_states()["e"] == state("e", 1)

    wait_for(committed, timeout=20, what="a commit on the new primary")
    assert set(outcomes) <= {"OutcomeUnknown", "NotApplied"}
    with own_cluster.replica.client() as client:  # the new primary has it
        stored: Any = client.hget("beatd:state", "e")
    assert json.loads(stored)[0] == to_micros(state("e", 1).last_slot)
    assert backend.replication_stats()["primary_changes"] == 1
    backend.close()


def _answers(backend: RedisBackend) -> bool:
    try:
        backend.ping()
    except (NotApplied, OutcomeUnknown):
        return False
    return True


def test_rediss_sentinel_speaks_tls_to_the_sentinels_and_the_primary(tmp_path: Path) -> None:
    tls = Certificates(*make_certificates(tmp_path))
    cluster = SentinelCluster(tmp_path / "set", tls=tls).start()
    try:
        backend = RedisBackend(cluster.url)
        exercise(backend)  # every commit and take WAITs for the replica, over TLS
        assert backend.replication_stats() == {"unacknowledged": 0, "primary_changes": 0}
        backend.close()
        plain = RedisBackend(cluster.url.replace("rediss+", "redis+").split("?")[0])
        with pytest.raises(NotApplied):  # the sentinels' TLS ports answer no plain text
            plain.ping()
        plain.close()
    finally:
        cluster.stop()


# --- users ---------------------------------------------------------------------------------

SENTINEL_ACL_PREFIX = "ACL SETUSER beatd-sentinel "


def test_the_documented_users_on_the_sentinels_and_the_servers_can_do_everything(
    own_cluster: SentinelCluster,
) -> None:
    for server in (own_cluster.primary, own_cluster.replica):
        with server.client() as client:
            client.execute_command(*documented_acl("beatd", "s3cret"))
    for sentinel in own_cluster.sentinels:
        with sentinel.client() as client:
            client.execute_command(*documented_sentinel_acl("pw"))
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in own_cluster.sentinels)
    url = (
        f"redis+sentinel://beatd:s3cret@{hosts}/{SERVICE}/0"
        "?sentinel_username=beatd-sentinel&sentinel_password=pw"
    )
    backend = RedisBackend(url)
    exercise(backend)  # every commit and take WAITs for the replica
    assert backend.replication_stats() == {"unacknowledged": 0, "primary_changes": 0}
    backend.close()


def documented_sentinel_acl(password: str) -> list[str]:
    """The `ACL SETUSER beatd-sentinel ...` line of docs/redis.md, with `password`."""
    line = next(x for x in DOCS.read_text().splitlines() if x.startswith(SENTINEL_ACL_PREFIX))
    return [">" + password if w == ">CHANGE-ME" else w for w in line.split()]
