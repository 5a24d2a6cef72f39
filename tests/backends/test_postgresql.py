"""The PostgreSQL backend against the contract (faults included), and what only it does: the
lease row locked against a take held open on another connection, the schema's format, the
LISTEN/NOTIFY wake-ups, the missing extra.

Tests run on the PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres; scripts/test makes
sure it is there): each module creates its own database under a unique name and drops it, and
each test uses a schema of its own in it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from beatd.backends import open_backend
from beatd.backends import postgres as postgres_backend
from beatd.backends.base import (
    CeleryQueue,
    FormatTooNew,
    Outgoing,
    StateWrite,
    to_micros,
)
from beatd.backends.postgres import PostgresBackend
from beatd.backends.postgres_link import FORMAT_VERSION, MIGRATIONS, NOW
from beatd.backends.postgres_queue import _queues_match
from beatd.clock import FakeClock
from beatd.config import Config
from beatd.controls import TriggerStatus
from beatd.errors import (
    BackendError,
    BeatdError,
    LeaseLost,
    NamespaceError,
    NotApplied,
    OutcomeUnknown,
)
from beatd.history import HistoryQuery, Retention
from beatd.metrics import register_scheduler, register_worker
from beatd.outcomes import WorkerStats
from beatd.runtime_entries import ChangePage, EntryChange, resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings
from tests.backends.contract import T0, BackendContract, message, state
from tests.backends.controls_contract import trigger
from tests.backends.history_contract import claimed, lead, publish, record, run, run_id, settle
from tests.postgres_database import scratch_database
from tests.redis_server import free_port
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_database() as url:
        yield url


@pytest.fixture
def namespace() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend_factory(database: str, namespace: str) -> Iterator[Callable[[], PostgresBackend]]:
    made: list[PostgresBackend] = []

    def make() -> PostgresBackend:
        made.append(PostgresBackend(database, namespace=namespace))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(backend_factory: Callable[[], PostgresBackend]) -> PostgresBackend:
    return backend_factory()


@pytest.fixture
def history_off_backend(database: str, namespace: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(database, namespace=namespace, history=False)
    yield backend
    backend.close()


@pytest.fixture
def advance() -> Callable[[float], None]:
    return time.sleep  # the database keeps time (clock_timestamp()): the only way is to wait


@pytest.fixture
def session(database: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database) as db:
        yield db


class TestPostgreSQLContract(BackendContract):
    @pytest.fixture
    def unit(self) -> float:
        return 0.5


def test_a_commit_waits_for_a_take_held_open_and_then_finds_the_lease_lost(
    backend: PostgresBackend,
    namespace: str,
    session: psycopg.Connection[tuple[object, ...]],
) -> None:
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 0), None)], [])
    # another node takes the lease on a second connection and keeps its transaction open
    session.execute(f"SELECT * FROM {namespace}.lease FOR UPDATE")
    session.execute(f"UPDATE {namespace}.lease SET token = 't', node = 'thief', epoch = epoch + 1")
    outcome: list[BaseException | set[str]] = []

    def commit() -> None:
        try:
            writes = [StateWrite(state("e", 1, 1), state("e", 0).last_slot)]
            outcome.append(backend.commit(lease, writes, [message("e", 1)]))
        except LeaseLost as exc:
            outcome.append(exc)

    committer = threading.Thread(target=commit)
    committer.start()
    wait_for(lambda: _waiting_on_a_lock(session), 10, "the commit to wait on the lease row")
    assert outcome == []  # the check cannot pass the open take
    session.commit()
    committer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost)
    assert str(outcome[0]) == (
        f"lease epoch {lease.epoch} of a is no longer held "
        f"(node thief holds epoch {lease.epoch + 1})"
    )
    assert backend.load_states() == {"e": state("e", 0)}
    assert backend.queue_depths() == {}


def _waiting_on_a_lock(session: psycopg.Connection[tuple[object, ...]]) -> bool:
    with psycopg.connect(session.info.dsn, autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    return row is not None and row[0] == 1


def test_the_schema_is_created_at_the_format_and_a_newer_one_is_refused(
    backend: PostgresBackend, database: str, namespace: str
) -> None:
    with psycopg.connect(database, autocommit=True) as db:
        row = db.execute(f"SELECT version FROM {namespace}.format").fetchone()
        assert row == (FORMAT_VERSION,)
        db.execute(f"UPDATE {namespace}.format SET version = {FORMAT_VERSION + 1}")
    with pytest.raises(FormatTooNew) as caught:
        PostgresBackend(database, namespace=namespace)
    assert caught.value.exit_status == 2
    assert str(caught.value) == (
        f"schema {namespace} of {database} holds beatd's persisted state in format "
        f"{FORMAT_VERSION + 1}, but this beatd knows formats up to {FORMAT_VERSION} only: a "
        "newer beatd upgraded it, and an older one must neither lead nor write there. Upgrade "
        "beatd on this host to the version the others run (docs/design.md, Persisted-state "
        "format)"
    )


def test_a_schema_of_format_1_is_upgraded_once_to_the_history_and_keeps_its_runs(
    database: str, namespace: str, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Format 2 (unreleased) carries the history, the operator controls and the runtime
    entries: an upgraded schema publishes with records, its entries can be paused and
    triggered, and it keeps runtime entries with their feed."""
    # what a beatd of format 1 left: entry e at minute 1, its run queued with no record
    session.execute(f"CREATE SCHEMA {namespace}")
    session.execute(f"CREATE TABLE {namespace}.format (version integer NOT NULL)")
    session.execute(f"INSERT INTO {namespace}.format VALUES (1)")
    MIGRATIONS[0](session, namespace)
    before = state("e", 1, 1)
    session.execute(
        f"INSERT INTO {namespace}.entry_state VALUES (%s, %s, %s, %s)",
        ("e", to_micros(before.last_slot), to_micros(T0 + timedelta(minutes=1)), "every 60s"),
    )
    old = message("e", 1)
    session.execute(
        f"INSERT INTO {namespace}.message (id, queue, priority, body, ready_at) "
        "VALUES (%s, 'default', 5, %s, 0)",
        (old.id, old.body),
    )
    session.commit()
    backend = PostgresBackend(database, namespace=namespace)
    again = PostgresBackend(database, namespace=namespace)
    try:
        assert (backend.format_found, again.format_found) == (1, FORMAT_VERSION)
        assert backend.load_states() == {"e": before}
        delivery = backend.claim(["default"], "w", 30)
        assert delivery is not None and delivery.id == old.id
        backend.ack(delivery)  # a run of before the history: nothing recorded, nothing failed
        assert backend.run(old.id) is None and backend.queue_depths() == {}
        lease = backend.acquire_lease("a", 60)
        assert lease is not None
        new = message("e", 2)._replace(slot=T0 + timedelta(minutes=2))
        new = new._replace(due=new.slot)
        assert (
            backend.commit(lease, [StateWrite(state("e", 2, 2), before.last_slot)], [new]) == set()
        )
        record = backend.run(new.id)
        assert record is not None and (record.entry, record.slot, record.status) == (
            "e",
            new.slot,
            "queued",
        )
        [audit] = backend.pause(["e"], "upgraded", None, "ops@host")
        paused_at = backend.load_controls()["e"].pause
        assert paused_at is not None
        third = message("e", 3)._replace(slot=T0 + timedelta(minutes=3), due=paused_at.at)
        writes = [StateWrite(state("e", 3, 3), state("e", 2, 2).last_slot)]
        assert backend.commit(lease, writes, [third]) == {"e"}  # paused
        assert backend.audit("e") == [audit]
        manual = backend.trigger(trigger("e", force=True))
        assert (manual.status, backend.run(manual.run_id) is not None) == (
            TriggerStatus.PUBLISHED,
            True,
        )
        resolved = resolve_entry("r", {"task": "t.r", "every": "1m"}, now=T0)
        assert again.entry_changes(None) == ChangePage((), 0, reload=True)
        stored = backend.put_entry(resolved, "ops@host")
        assert again.list_entries() == [stored]
        assert again.entry_changes(0) == ChangePage((EntryChange(1, "r", 1),), 1)
    finally:
        backend.close()
        again.close()
    row = session.execute(f"SELECT version FROM {namespace}.format").fetchone()
    assert row == (FORMAT_VERSION,) == (2,)


def test_a_command_that_only_looks_never_creates_the_schema(database: str, namespace: str) -> None:
    with pytest.raises(BackendError) as caught:
        open_backend(database, namespace=namespace, read_only=True)
    assert str(caught.value) == (
        f"schema {namespace} of {database} holds no beatd data in format {FORMAT_VERSION} "
        f"(found no schema): run `beatd db upgrade --broker {database} --namespace "
        f"{namespace}` or start `beatd run` first"
    )


def test_a_namespace_that_is_no_plain_schema_name_is_refused(database: str) -> None:
    with pytest.raises(NamespaceError) as caught:
        open_backend(database, namespace="Beatd; DROP")
    assert str(caught.value) == (
        "cannot use the namespace 'Beatd; DROP' as a PostgreSQL schema name: use lower-case "
        "letters, digits and underscores, starting with a letter or underscore (at most 58: "
        "PostgreSQL's 63 less the '_work' of the wake-up channel)"
    )


def test_a_namespace_of_58_characters_queues_and_wakes_a_worker(database: str) -> None:
    backend = PostgresBackend(database, namespace="n" * 58)
    try:
        backend.enqueue([message("e", 1)])
        assert backend.wait_for_work(["default"], 20)
    finally:
        backend.close()


def test_both_schemes_open_the_backend_and_the_password_is_never_shown(
    database: str, namespace: str
) -> None:
    for scheme in ("postgresql", "postgres"):
        url = database.replace("postgresql://", f"{scheme}://")
        backend = open_backend(url, namespace=namespace)
        try:
            assert isinstance(backend, PostgresBackend) and backend.url == url
        finally:
            backend.close()
    secret = database.replace("postgres@", "postgres:s3cret@")
    backend = open_backend(secret, namespace=namespace)
    try:
        assert backend.url == database.replace("postgres@", "postgres:***@")
    finally:
        backend.close()


def test_a_missing_extra_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "beatd.backends.postgres")
    monkeypatch.delitem(sys.modules, "beatd.backends.postgres_link")
    monkeypatch.delitem(sys.modules, "beatd.backends.postgres_queue")
    with pytest.raises(BeatdError) as caught:
        open_backend(database)
    assert str(caught.value) == (
        "a postgresql:// broker needs the psycopg package, which is not installed: "
        "pip install 'beatd[postgresql]'"
    )


def test_celery_messages_are_refused_by_name(backend: PostgresBackend) -> None:
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    celery = Outgoing("e", "e@1", CeleryQueue("celery"), "{}")
    with pytest.raises(BackendError) as caught:
        backend.commit(lease, [StateWrite(state("e", 0), None)], [celery])
    assert str(caught.value) == (
        "entry e publishes to a CeleryQueue, which needs a Redis broker (Redis transport only); "
        "PostgreSQL stores beatd's own messages only"
    )


def test_a_waiting_worker_wakes_at_the_notify_of_a_commit(backend: PostgresBackend) -> None:
    assert not backend.wait_for_work(["default"], 0.2)  # nothing there: waits it out
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        started = time.monotonic()
        woke.append((backend.wait_for_work(["default"], 20), time.monotonic() - started))

    backend._listening()  # listening before the commit, as a worker idle on the queue is
    waiter = threading.Thread(target=wait)
    waiter.start()
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    backend.commit(lease, [StateWrite(state("e", 1, 1), None)], [message("e", 1)])
    waiter.join(10)
    assert woke and woke[0][0] and woke[0][1] < 5  # woken by the NOTIFY, not the timeout
    assert backend.wait_for_work(["default"], 20)  # a message is ready: at once


def test_a_ready_run_already_announced_does_not_wake_the_waiter_again(
    backend: PostgresBackend,
) -> None:
    """A worker whose slots are all busy leaves ready runs in the queue; its waiting thread
    must sleep until something new is added, not find the same runs ready again and again."""
    backend.enqueue([message("e", 1)])
    assert backend.wait_for_work(["default"], 20)  # ready before the LISTEN: claim once
    started = time.monotonic()
    assert not backend.wait_for_work(["default"], 0.3)  # still ready, already announced
    assert time.monotonic() - started >= 0.25
    backend.enqueue([message("e", 2)])
    assert backend.wait_for_work(["default"], 20)  # a new one: at once


def round_trips(backend: PostgresBackend, call: Callable[[], object], trace: Path) -> int:
    """The round trips `call` makes to the server: the ReadyForQuery replies on the backend's
    one pooled connection (pool_size=1), from libpq's protocol trace."""
    with backend._pool.connection() as db:
        pgconn = db.pgconn
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            call()
        finally:
            pgconn.untrace()
    return trace.read_text().count("\tReadyForQuery\t")


def test_a_run_queued_and_its_claim_are_one_round_trip_each(
    database: str, namespace: str, tmp_path: Path
) -> None:
    """Queue to start is an enqueue, a NOTIFY and a claim: each round trip on that path wakes
    a client and a server process, and on a busy host each wake-up may wait for a CPU. An
    enqueue and a claim are one statement each, their own transaction, sent on a pooled
    connection lent without a check of its own."""
    backend = PostgresBackend(database, namespace=namespace, pool_size=1)
    try:
        trace = tmp_path / "trace"
        assert round_trips(backend, lambda: backend.enqueue([message("e", 1)]), trace) == 1
        delivery: list[object] = []
        claim = lambda: delivery.append(backend.claim(["default"], "w", 30))  # noqa: E731
        assert round_trips(backend, claim, trace) == 1
        assert delivery[0] is not None
    finally:
        backend.close()


def test_states_are_read_in_pages_each_its_own_statement(
    database: str, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement is bounded by the statement timeout (op_timeout, 2 s): one SELECT of
    1,000,000 states may outlast it, so a leader restarting with that many runtime entries
    could not adopt. They are read STATE_PAGE at a time in the key's order (here 1,000 in
    pages of 100: ten full pages and the empty one that ends them)."""
    monkeypatch.setattr(postgres_backend, "STATE_PAGE", 100)
    backend = PostgresBackend(database, namespace=namespace, pool_size=1)
    try:
        lease = backend.acquire_lease("a", 10)
        assert lease is not None
        writes = [StateWrite(state(f"e{i}", i % 7, i % 3 or None), None) for i in range(1000)]
        assert backend.commit(lease, writes, []) == set()
        read: list[object] = []
        paced: list[None] = []
        load = lambda: read.append(backend.load_states(lambda: paced.append(None)))  # noqa: E731
        trips = round_trips(backend, load, tmp_path / "t")
        assert read == [{w.state.entry: w.state for w in writes}]
        assert len(paced) == 10  # between the pages: the lease renewed
        assert 11 <= trips <= 12  # psycopg prepares a statement at its fifth use: a trip more
    finally:
        backend.close()


def test_a_claim_of_one_queue_walks_the_index_to_the_first_ready_run(
    backend: PostgresBackend,
) -> None:
    """A claim walks the (queue, priority, seq) index to the first ready run: a queue's length
    must not make every claim sort the whole queue, which drains a long one in O(n²). Checked
    on the plan PostgreSQL makes for the claim's condition with 20,000 runs queued, not by
    timing it."""
    for batch in range(20):
        backend.enqueue([message(f"long-{batch}-{i}", 1) for i in range(1000)])
    match, queues = _queues_match(["default"])
    schema = backend.schema
    query = (
        f"EXPLAIN (FORMAT JSON) SELECT seq FROM {schema}.message WHERE {match} "
        f"AND ready_at <= {NOW} ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED"
    )

    def plan(db: psycopg.Connection[Any]) -> Any:
        db.execute(f"ANALYZE {schema}.message")
        return db.execute(query, {"queues": queues}).fetchone()

    row = backend._run(plan)
    assert row is not None
    nodes = json.dumps(row[0])
    assert '"Node Type": "Sort"' not in nodes, nodes
    assert '"Index Name": ' in nodes, nodes
    assert backend.claim(["default"], "w", 60) is not None


def test_a_delayed_retry_wakes_a_waiting_worker_when_it_is_ready(
    backend: PostgresBackend,
) -> None:
    backend.enqueue([message("e", 1)], delay=0.5)
    started = time.monotonic()
    assert backend.wait_for_work(["default"], 20)
    assert 0.3 < time.monotonic() - started < 5  # when ready, without a NOTIFY
    assert backend.claim(["default"], "w", 30) is not None


@pytest.mark.parametrize(
    ("write", "committing"),
    [("commit", "COMMIT"), ("enqueue", "a one-statement transaction")],
    ids=["transaction", "one_statement"],
)
def test_a_connection_terminated_during_commit_is_an_outcome_unknown(
    backend: PostgresBackend,
    namespace: str,
    session: psycopg.Connection[tuple[object, ...]],
    write: str,
    committing: str,
) -> None:
    """A deferred trigger runs as the transaction commits: at COMMIT, or as a one-statement
    transaction (an enqueue, a claim) ends. The session is terminated while it sleeps there."""
    lease = backend.acquire_lease("a", 60)
    assert lease is not None
    writes = {
        "commit": lambda: backend.commit(
            lease, [StateWrite(state("e", 1), None)], [message("e", 1)]
        ),
        "enqueue": lambda: backend.enqueue([message("e", 1)]),
    }
    session.execute(
        f"CREATE FUNCTION {namespace}.slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$"
    )
    session.execute(
        f"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON {namespace}.message "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {namespace}.slow()"
    )
    session.commit()
    outcome: list[BaseException] = []

    def enqueue() -> None:
        try:
            writes[write]()
        except BackendError as exc:
            outcome.append(exc)

    enqueuer = threading.Thread(target=enqueue)
    enqueuer.start()
    sleeping = (
        "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database()"
    )
    pid = wait_for(lambda: session.execute(sleeping).fetchall(), 10, f"{committing} under way")
    session.execute("SELECT pg_terminate_backend(%s)", pid[0])
    enqueuer.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown)
    cause = outcome[0].__cause__
    assert str(outcome[0]) == (
        f"{backend.url}: the session ended during {committing}, which may have been applied: "
        f"{cause}"
    )


def test_a_pooled_connection_terminated_while_idle_is_replaced_before_the_next_call(
    database: str, namespace: str, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The pool lends a connection without a round trip unless the server spoke on it while it
    sat idle: a terminated session did (its error, then the close), so the next call gets a
    new connection and succeeds."""
    backend = PostgresBackend(database, namespace=namespace, pool_size=1)
    try:
        backend.enqueue([message("e", 1)])
        row = backend._run(lambda db: db.execute("SELECT pg_backend_pid()").fetchone())
        assert row is not None
        session.execute("SELECT pg_terminate_backend(%s)", row)

        def ended() -> bool:
            found = session.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", row)
            count = found.fetchone()
            session.commit()  # pg_stat_activity is read once per transaction
            return count == (0,)

        wait_for(ended, what="its session to end")
        assert backend.queue_depths() == {"default": 1}
        again = backend._run(lambda db: db.execute("SELECT pg_backend_pid()").fetchone())
        assert again is not None and again != row
    finally:
        backend.close()


def test_a_one_statement_write_stopped_by_the_statement_timeout_is_not_applied(
    database: str, namespace: str, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The statement timeout stops a one-statement transaction before it commits: nothing
    written, so NotApplied (safe to repeat), not OutcomeUnknown."""
    backend = PostgresBackend(database, namespace=namespace, op_timeout=0.5)
    try:
        session.execute(
            f"CREATE FUNCTION {namespace}.slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$"
        )
        session.execute(
            f"CREATE TRIGGER slow BEFORE INSERT ON {namespace}.message "
            f"FOR EACH ROW EXECUTE FUNCTION {namespace}.slow()"
        )
        session.commit()
        with pytest.raises(NotApplied) as raised:
            backend.enqueue([message("e", 1)])
        assert str(raised.value) == f"{backend.url}: {raised.value.__cause__}"
        assert isinstance(raised.value.__cause__, psycopg.errors.QueryCanceled)
        assert backend.queue_depths() == {}
    finally:
        backend.close()


def test_a_multi_host_url_goes_on_to_the_host_that_takes_writes(
    database: str, namespace: str
) -> None:
    refused = free_port()  # nobody listens there
    hosts = database.replace("127.0.0.1:5432", f"127.0.0.1:{refused},127.0.0.1:5432")
    url = f"{hosts}?target_session_attrs=read-write"
    backend = open_backend(url, namespace=namespace)
    try:
        assert backend.url == url
        backend.enqueue([message("e", 1)])
        assert backend.queue_depths() == {"default": 1}
    finally:
        backend.close()


def test_synchronous_commit_off_is_warned_of(database: str, namespace: str) -> None:
    url = f"{database}?options=-csynchronous_commit%3Doff"
    backend = open_backend(url, namespace=namespace)
    try:
        assert backend.persistence_warnings() == [
            f"{url} runs with synchronous_commit=off: a crash can lose the last commits, and a "
            "slot reported published may be gone; set synchronous_commit=on"
        ]
    finally:
        backend.close()
    plain = open_backend(database, namespace=namespace)
    try:
        assert plain.persistence_warnings() == []
    finally:
        plain.close()


def test_the_pool_and_the_listen_reconnects_are_metrics(
    backend: PostgresBackend, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    beat = Scheduler(backend, lambda: Config({}), clock, SchedulerSettings(node="a"))
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    assert not backend.wait_for_work(["default"], 0.01)  # the wake-up connection, opened once
    listener = backend._listener
    assert listener is not None
    session.execute("SELECT pg_terminate_backend(%s)", (listener.info.backend_pid,))
    session.commit()
    with pytest.raises(NotApplied):
        backend.wait_for_work(["default"], 0.01)  # finds it gone
    assert not backend.wait_for_work(["default"], 0.01)  # opened again
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    pool = {k: v for k, v in samples.items() if k[0] == "beatd_backend_connections"}
    assert pool == {
        ("beatd_backend_connections", ("in_use",)): 0,
        ("beatd_backend_connections", ("idle",)): pool[("beatd_backend_connections", ("idle",))],
        ("beatd_backend_connections", ("waiting",)): 0,
    }
    assert pool[("beatd_backend_connections", ("idle",))] >= 1
    assert samples[("beatd_backend_listen_reconnects_total", ())] == 1


@dataclass(frozen=True)
class IdleWorkerSettings:
    queues: tuple[str, ...] = ("default",)


@dataclass(frozen=True)
class IdleWorker:
    """What the worker's collector reads, of a worker that ran nothing yet."""

    stats: WorkerStats = field(default_factory=WorkerStats)
    settings: IdleWorkerSettings = IdleWorkerSettings()


def test_the_scheduler_and_an_embedded_worker_expose_each_connection_metric_once(
    backend_factory: Callable[[], PostgresBackend],
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    beat = Scheduler(backend_factory(), lambda: Config({}), clock, SchedulerSettings(node="a"))
    registry = CollectorRegistry()
    register_scheduler(registry, beat)
    register_worker(registry, IdleWorker(), backend_factory(), embedded=True)  # as `--with-worker`
    types = [
        line.split()[2]
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(("# TYPE beatd_backend_connections ", "# TYPE beatd_backend_listen"))
    ]
    assert sorted(types) == ["beatd_backend_connections", "beatd_backend_listen_reconnects_total"]


def _rows(session: psycopg.Connection[tuple[object, ...]], table: str) -> int:
    row = session.execute(f"SELECT count(*) FROM {table}").fetchone()
    session.commit()
    assert row is not None
    return int(str(row[0]))


def test_a_trimmed_run_takes_its_attempts_and_open_row_along(
    backend: PostgresBackend, namespace: str, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    # nothing references a run by foreign key (it would lock the run at every claim): the trim
    # itself must leave no attempt or open row of a run it deleted
    lease = lead(backend)
    publish(backend, lease, *(run("e", m) for m in range(1, 4)))
    settle(backend, "ack", claimed(backend, "default", "w"), None)
    claimed(backend, "default", "w")  # e at minute 2: running, its attempt open
    assert (_rows(session, f"{namespace}.attempt"), _rows(session, f"{namespace}.run_open")) == (
        2,
        2,
    )
    assert backend.trim(Retention(per_entry=0)) == 1  # the caps pass over unfinished runs
    assert _rows(session, f"{namespace}.attempt") == 1
    assert backend.trim(Retention(max_age=timedelta(0))) == 2  # the age does not
    assert (_rows(session, f"{namespace}.attempt"), _rows(session, f"{namespace}.run_open")) == (
        0,
        0,
    )


def test_a_dead_letter_requeued_and_claimed_again_is_unfinished_again(
    backend: PostgresBackend,
) -> None:
    lease = lead(backend)
    publish(backend, lease, run("e", 1))
    settle(backend, "dead_letter", claimed(backend, "default", "w"), None)
    assert backend.runs(HistoryQuery(unfinished=True)) == []
    assert backend.requeue_dead(run_id("e", 1)) == 1
    claimed(backend, "default", "w")
    again = backend.runs(HistoryQuery(unfinished=True))
    assert [(r.id, r.status, len(r.attempts)) for r in again] == [(run_id("e", 1), "running", 2)]
    assert backend.mark_overdue(run_id("e", 1), T0)
    assert backend.runs(HistoryQuery(unfinished=True)) == []


def test_a_fault_between_the_ack_and_its_record_leaves_both_unwritten(
    backend: PostgresBackend, namespace: str, session: psycopg.Connection[tuple[object, ...]]
) -> None:
    # the attempt's end fails after the message's delete ran, in the same statement: the
    # delete must not stay, or the queue would say done while the history says running
    session.execute(
        f"CREATE FUNCTION {namespace}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
    )
    session.execute(
        f"CREATE TRIGGER refuse BEFORE UPDATE ON {namespace}.attempt "
        f"FOR EACH ROW EXECUTE FUNCTION {namespace}.refuse()"
    )
    session.commit()
    lease = lead(backend)
    publish(backend, lease, run("e", 1))
    delivery = claimed(backend, "default", "w")
    with pytest.raises(BackendError) as caught:
        backend.ack(delivery)
    assert str(caught.value) == f"{backend.where}: {caught.value.__cause__}"
    assert backend.queue_depths() == {"default": 1}
    assert record(backend, run_id("e", 1)).status == "running"
    session.execute(f"DROP TRIGGER refuse ON {namespace}.attempt")
    session.commit()
    backend.ack(delivery)  # the settler writes it again: now both go
    assert backend.queue_depths() == {}
    assert record(backend, run_id("e", 1)).status == "succeeded"


def test_a_namespace_of_63_characters_is_refused_at_open_or_queues_runs(database: str) -> None:
    namespace = "n" * 63  # the longest SCHEMA_NAME accepts
    try:
        backend = PostgresBackend(database, namespace=namespace)
    except BackendError as refused:  # a fix that refuses it up front names the namespace
        assert str(refused).startswith(f"cannot use the namespace {namespace!r} ")
        return
    try:
        backend.enqueue([message("e", 1)])
        assert backend.wait_for_work(["default"], 20)
    finally:
        backend.close()
