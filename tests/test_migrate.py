"""`beatd migrate`: SQLite to Redis in-process, and end to end between real `beatd run`s."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from beatd.backends import open_backend
from beatd.backends.base import StateWrite
from beatd.backends.redis import RedisBackend
from beatd.backends.sqlite import SQLiteBackend
from beatd.celery_amqp import OUTBOX_QUEUE
from beatd.cli import main
from beatd.history import HistoryQuery, RunKind
from beatd.runtime_entries import ResolvedEntry, resolve_entry
from tests.backends.contract import message, state
from tests.postgres_database import scratch_database
from tests.redis_server import RedisServer
from tests.test_amqp_outbox import amqp_schedule
from tests.test_daemon import EVERY_SECOND, assert_contiguous, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path / "redis", persistent=True).start()
    yield started
    started.stop()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(tmp_path / "beatd.db")
    yield backend
    backend.close()


@pytest.fixture
def target(server: RedisServer) -> Iterator[RedisBackend]:
    backend = RedisBackend(server.url)
    yield backend
    backend.close()


def copied_line(states: int, letters: int, skipped: int, runs: int = 0, missed: int = 0) -> str:
    """What `beatd migrate` prints when it is done."""
    return (
        f"copied {states} state(s), {letters} dead letter(s), {runs} run record(s), {missed} "
        f"missed-slot record(s), 0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), "
        f"0 trigger key(s); skipped "
        f"{skipped} already on the target\n"
    )


def beatd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help() -> None:
    code, out, _ = beatd("migrate", "--help")
    assert code == 0
    # beatd's words, however click lays them out: the summary and every option
    command = main.commands["migrate"]
    summary = (command.help or "").split("\n\n")[0]
    assert " ".join(summary.split()) in " ".join(out.split())
    shown = {word for word in out.split() if word.startswith("--")}
    assert {opt for param in command.params for opt in param.opts} <= shown


def test_moves_states_and_dead_letters_and_keeps_what_the_target_has(
    sqlite: SQLiteBackend, target: RedisBackend, server: RedisServer, tmp_path: Path
) -> None:
    lease = sqlite.acquire_lease("old", 30)
    assert lease is not None
    sqlite.commit(
        lease,
        [StateWrite(state("e", 3, 2), None), StateWrite(state("f", 5), None)],
        [message("e", 3)],
    )
    delivery = sqlite.claim(["default"], "w", 30)
    assert delivery is not None
    sqlite.dead_letter(delivery, "boom")
    sqlite.release_lease(lease)
    held = target.acquire_lease("new", 30)
    assert held is not None
    target.commit(held, [StateWrite(state("f", 9), None)], [])  # already moved on there
    target.release_lease(held)

    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, out, err = beatd("migrate", "--from", source, "--to", server.url)

    assert (code, err) == (0, "")
    assert out == copied_line(1, 1, 1)
    assert target.load_states() == {"e": state("e", 3, 2), "f": state("f", 9)}
    dead = [("e@2026-03-01T12:03:00Z", "default", '{"id": "e@2026-03-01T12:03:00Z"}', "boom", 1)]
    assert [(d.id, d.queue, d.body, d.reason, d.deliveries) for d in target.dead_letters()] == dead
    assert target.leader() is None  # the migration's own lease is released
    # copied, not moved: the source keeps what it had
    assert [(d.id, d.reason) for d in sqlite.dead_letters()] == [(dead[0][0], "boom")]
    assert set(sqlite.load_states()) == {"e", "f"}


@pytest.mark.parametrize("to", ["redis", "sqlite"])
def test_migrating_twice_copies_nothing_twice_and_a_retry_queues_each_run_once(
    sqlite: SQLiteBackend, server: RedisServer, tmp_path: Path, to: str
) -> None:
    lease = sqlite.acquire_lease("old", 30)
    assert lease is not None
    sqlite.commit(lease, [StateWrite(state("e", 3, 2), None)], [message("e", 3), message("e", 4)])
    for _ in range(2):
        delivery = sqlite.claim(["default"], "w", 30)
        assert delivery is not None
        sqlite.dead_letter(delivery, "boom")
    sqlite.release_lease(lease)
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    target_url = server.url if to == "redis" else f"sqlite:///{tmp_path / 'new.db'}"

    first = beatd("migrate", "--from", source, "--to", target_url)
    again = beatd("migrate", "--from", source, "--to", target_url)

    assert first == (
        0,
        copied_line(1, 2, 0),
        "",
    )
    assert again == (
        0,
        copied_line(0, 0, 3),
        "",
    )
    assert beatd("dead", "retry", "--all", "--broker", target_url)[:2] == (
        0,
        "requeued 2 dead letter(s)\n",
    )
    target = RedisBackend(server.url) if to == "redis" else SQLiteBackend(tmp_path / "new.db")
    try:
        assert target.queue_depths() == {"default": 2}
    finally:
        target.close()
    assert len(sqlite.dead_letters()) == 2


@pytest.mark.parametrize("to", ["redis", "sqlite"])
def test_a_dead_letter_whose_bytes_are_not_utf8_is_copied_byte_for_byte(
    sqlite: SQLiteBackend, server: RedisServer, tmp_path: Path, to: str
) -> None:
    """The worker dead-letters a queue entry that is not UTF-8 and keeps its bytes; migrating
    must copy it like any other, not stop with a UnicodeEncodeError traceback."""
    body = b'{"id": "bad@1", "note": "\xed\xa0\x80"}'
    with sqlite3.connect(tmp_path / "beatd.db") as db:  # as another program may write it
        db.execute(
            "INSERT INTO message (id, queue, priority, body, ready_at) VALUES (?, ?, ?, ?, ?)",
            (b"bad@\xff", "default", 5, body, 0.0),  # its id not UTF-8 either
        )
    delivery = sqlite.claim(["default"], "w", 30)
    assert delivery is not None and delivery.unreadable
    sqlite.dead_letter(delivery, delivery.unreadable)
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    target_url = server.url if to == "redis" else f"sqlite:///{tmp_path / 'new.db'}"

    result = CliRunner().invoke(main, ["migrate", "--from", source, "--to", target_url])

    assert (result.exit_code, result.stdout) == (
        0,
        copied_line(0, 1, 0),
    ), result.exception
    again = CliRunner().invoke(main, ["migrate", "--from", source, "--to", target_url])
    assert (again.exit_code, again.stdout) == (  # its id is matched exactly: not copied twice
        0,
        copied_line(0, 0, 1),
    ), again.exception
    if to == "redis":
        ((_, fields),) = redis.Redis.from_url(server.url).xrange("beatd:dead")
        assert fields[b"body"] == body
    else:
        with sqlite3.connect(tmp_path / "new.db") as db:
            assert db.execute("SELECT CAST(body AS BLOB) FROM dead_letter").fetchall() == [(body,)]


def test_refuses_while_a_scheduler_leads_the_source(
    sqlite: SQLiteBackend, server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    lease = sqlite.acquire_lease("host1", 30)
    assert lease is not None
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, out, err = beatd("migrate", "--from", source, "--to", server.url)
    assert (code, out) == (1, "")
    assert err == (
        f"the source {source} has a running leader (node=host1); stop every `beatd run` "
        "before migrating\n"
    )
    assert target.load_states() == {}


def test_refuses_while_the_target_has_a_leader(
    sqlite: SQLiteBackend, server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    assert target.acquire_lease("redis-host", 30) is not None
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, _, err = beatd("migrate", "--from", source, "--to", server.url)
    assert code == 1
    assert err == (
        f"the target {server.url} has a running leader (node=redis-host); stop every "
        "`beatd run` before migrating\n"
    )


def test_refuses_while_runs_wait_on_the_source_queues(
    sqlite: SQLiteBackend, server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    sqlite.enqueue([message("e", 1), message("e", 2), message("r", 1, queue="reports")])
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, out, err = beatd("migrate", "--from", source, "--to", server.url)
    assert (code, out) == (1, "")
    assert err == (
        f"{source} still holds 3 undone run(s) (default=2 reports=1); once the workers use the "
        f"target, no worker would run them: stop every `beatd run`, let the workers on {source} "
        "finish them, then migrate again; or, if no worker can (a damaged file), add "
        "--queued-as-dead-letters to copy them as dead letters\n"
    )
    assert target.load_states() == {}


def damage_table(db: Path, table: str) -> None:
    """Overwrite the root page of `table` (SQLite then says the file is malformed)."""
    with sqlite3.connect(db) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
        (root,) = page.fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as file:
        file.seek((root - 1) * size)
        file.write(b"\x07" * size)
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("SELECT * FROM epoch").fetchall()


def test_runs_queued_in_a_damaged_file_are_copied_as_dead_letters_when_asked(
    sqlite: SQLiteBackend, server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    """docs/deployment.md's recovery: the file is damaged, so no worker can empty its queues;
    --queued-as-dead-letters copies the runs there, once, to be run on the target."""
    lease = sqlite.acquire_lease("a", 10)  # the epoch table gets a row
    assert lease is not None
    sqlite.release_lease(lease)
    queued = [message("e", 1), message("e", 2), message("r", 1, queue="reports")]
    sqlite.enqueue(queued)
    sqlite.close()
    damage_table(tmp_path / "beatd.db", "epoch")
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    flag = "--queued-as-dead-letters"
    code, _, err = beatd("migrate", "--from", source, "--to", server.url)
    assert (code, err.partition(";")[0]) == (
        1,
        f"{source} still holds 3 undone run(s) (default=2 reports=1)",
    )

    code, out, err = beatd("migrate", "--from", source, "--to", server.url, flag)

    assert (code, out, err) == (
        0,
        copied_line(0, 3, 0)
        + "3 queued run(s) read as dead letters: see them with `beatd dead list` and run them "
        "with `beatd dead retry ID` or `--all`\n",
        "",
    )
    reason = (
        f"queued in {source} when it was migrated, never run there; run it with `beatd dead retry`"
    )
    assert [(d.id, d.queue, d.body, d.reason) for d in target.dead_letters()] == [
        (m.id, m.destination.queue, m.body, reason) for m in queued
    ]
    again = beatd("migrate", "--from", source, "--to", server.url, flag)
    assert again == (
        0,
        copied_line(0, 0, 3)
        + "3 queued run(s) read as dead letters: see them with `beatd dead list` and run them "
        "with `beatd dead retry ID` or `--all`\n",
        "",
    )
    assert target.requeue_dead(None) == 3
    assert target.queue_depths() == {"default": 2, "reports": 1}


def test_queued_as_dead_letters_reads_a_sqlite_source_only(
    server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    target.enqueue([message("e", 1)])
    to = f"sqlite:///{tmp_path / 'new.db'}"
    code, _, err = beatd("migrate", "--from", server.url, "--to", to, "--queued-as-dead-letters")
    assert (code, err) == (
        2,
        f"beatd: --queued-as-dead-letters: reads a SQLite source only, not {server.url}\n",
    )


def test_a_missing_source_file_or_the_same_url_twice_is_bad_input(
    server: RedisServer, tmp_path: Path
) -> None:
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    code, _, err = beatd("migrate", "--from", missing, "--to", server.url)
    assert (code, err) == (
        2,
        f"beatd: --from: no database at {tmp_path / 'nope.db'} (from {missing}); check the path\n",
    )
    assert not (tmp_path / "nope.db").exists()
    code, _, err = beatd("migrate", "--from", server.url, "--to", server.url)
    assert (code, err) == (2, f"beatd: --to: is the same backend as --from ({server.url!r})\n")


# --- end to end: beatd run on SQLite, stop, migrate, beatd run on Redis --------------------


def run_daemon(tmp_path: Path, node: str, broker: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{node}.log").open("wb") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "beatd", "run", "--node", node, "--broker", broker),
                *("-s", str(tmp_path / "schedules"), "--lease-ttl", "2s", "--no-watch"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )


def redis_slots(admin: redis.Redis) -> list[datetime]:
    entries: Any = admin.xrange("beatd:queue:default:normal")
    return [datetime.fromisoformat(json.loads(f["body"])["scheduled_for"]) for _, f in entries]


def test_sqlite_to_redis_end_to_end_neither_repeats_nor_skips_a_slot(
    tmp_path: Path, server: RedisServer
) -> None:
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "s.yaml").write_text(EVERY_SECOND)
    db = tmp_path / "beatd.db"
    source = f"sqlite:///{db}"
    old = run_daemon(tmp_path, "old", source)
    try:
        sqlite = SQLiteBackend(db)
        wait_for(lambda: sum(sqlite.queue_depths().values()) >= 3, what="publishing on SQLite")
    finally:
        old.send_signal(signal.SIGTERM)
    assert old.wait(10) == 0
    # what a worker on SQLite does before the move: run (here: take) every queued run
    done: list[datetime] = []
    while (delivery := sqlite.claim(["default"], "w", 30)) is not None:
        done.append(datetime.fromisoformat(json.loads(delivery.body)["scheduled_for"]))
        sqlite.ack(delivery)
    sqlite.close()

    copied = subprocess.run(
        [sys.executable, "-m", "beatd", "migrate", "--from", source, "--to", server.url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert (copied.returncode, copied.stderr) == (0, "")
    # the history comes along: each run taken on SQLite, finished there
    assert copied.stdout == copied_line(1, 0, 0, runs=len(done))
    target = RedisBackend(server.url)
    try:
        runs = target.runs(HistoryQuery(limit=100))
    finally:
        target.close()
    assert sorted(run.slot for run in runs) == sorted(done)
    assert {run.status for run in runs} == {"succeeded"}
    # the copy takes a while: at least two slots come due meanwhile, to be caught up on Redis
    gap_ends = max(done) + timedelta(seconds=2.5)
    time.sleep(max(0.0, (gap_ends - datetime.now(UTC)).total_seconds()))

    admin = server.client()
    started = datetime.now(UTC)
    new = run_daemon(tmp_path, "new", server.url)
    try:
        wait_for(lambda: len(redis_slots(admin)) >= 5, what="publishing on Redis")
    finally:
        new.send_signal(signal.SIGTERM)
    assert new.wait(10) == 0
    after = redis_slots(admin)
    admin.close()
    assert after[0] == max(done) + timedelta(seconds=1)  # the next slot, not a repeat
    assert_contiguous(done + after, timedelta(seconds=1))
    assert after[0] < started - timedelta(seconds=1)  # the gap of the move was caught up


def test_runtime_entries_are_carried_with_their_versions_once(
    sqlite: SQLiteBackend, target: RedisBackend, server: RedisServer, tmp_path: Path
) -> None:
    now = datetime.fromtimestamp(sqlite.server_time(), UTC)

    def resolved(name: str, queue: str = "default") -> ResolvedEntry:
        return resolve_entry(name, {"task": "t.x", "every": "1m", "queue": queue}, now=now)

    sqlite.put_entry(resolved("a"), "ops@a")
    sqlite.put_entry(resolved("a", "q2"), "ops@b")
    changed = sqlite.put_entry(resolved("a", "q3"), "ops@c", request_id="r3")
    sqlite.put_entry(resolved("b"), "ops@a")
    sqlite.remove_entry("b", "ops@a")
    kept = sqlite.put_entry(resolved("c"), "ops@a")
    already = target.put_entry(resolved("c", "there"), "ops@target")

    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, out, err = beatd("migrate", "--from", source, "--to", server.url)

    assert (code, err) == (0, "")
    assert out.splitlines()[1:] == ["copied 1 runtime entr(ies) with their versions"]
    assert target.list_entries() == [changed, already]
    assert target.get_entry("a") == changed and changed.version == 3
    assert kept != already
    actions = sorted(r.action for r in target.audit("a"))
    assert actions == ["entry.add", "entry.set", "entry.set"]  # with the audit log
    page = target.entry_changes(None)
    assert target.entry_changes(page.cursor - 1).changes == ((page.cursor, "a", 3),)

    code, out, err = beatd("migrate", "--from", source, "--to", server.url)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1  # nothing copied twice
    assert target.entry_changes(page.cursor).changes == ()


def test_undelivered_outbox_runs_are_carried_to_the_targets_outbox_once(
    server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    """A run committed for RabbitMQ and not yet relayed is no dead letter: it goes on waiting
    in the target's outbox, as it is, for the new leader's relay; a second copy adds nothing."""
    schedule = amqp_schedule(tmp_path)
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, _, err = beatd("trigger", "nightly", "-s", str(schedule), "--broker", source)
    assert (code, err) == (0, "")
    sqlite = SQLiteBackend(tmp_path / "beatd.db")
    (waiting,) = sqlite.queued_as_dead_letters("")
    sqlite.close()

    first = beatd("migrate", "--from", source, "--to", server.url)

    def summary(skipped: int, copied: int, carried: int) -> str:
        return (
            f"copied 0 state(s), 0 dead letter(s), {copied} run record(s), 0 missed-slot "
            f"record(s), 0 pause(s), 0 busy mark(s), 0 held run(s), {copied} audit record(s), "
            f"{copied} trigger key(s); "
            f"skipped {skipped} already on the target\ncarried {carried} undelivered run(s) to "
            f"the target's outbox ({OUTBOX_QUEUE}) for its relay\n"
        )

    assert first == (0, summary(0, 1, 1), "")
    assert target.queue_depths() == {OUTBOX_QUEUE: 1}
    assert target.dead_letters() == []
    record = target.run(waiting.id)
    assert record is not None and record.kind is RunKind.MANUAL
    second = beatd("migrate", "--from", source, "--to", server.url)
    assert second == (0, summary(4, 0, 0), "")  # the record, audit record, key and run
    assert target.queue_depths() == {OUTBOX_QUEUE: 1}
    delivery = target.claim([OUTBOX_QUEUE], "amqp-relay", 30)
    assert delivery is not None and (delivery.id, delivery.body) == (waiting.id, waiting.body)


@pytest.fixture(params=["redis", "postgresql"])
def outbox_source(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis or PostgreSQL source URL, empty."""
    if request.param == "redis":
        yield request.getfixturevalue("server").url
        return
    with scratch_database() as url:
        yield url


def test_undelivered_outbox_runs_are_carried_from_redis_and_postgresql(
    outbox_source: str, tmp_path: Path
) -> None:
    """As from SQLite: a run waiting for the relay, and one a relay claimed and did not finish
    (its process killed), go on waiting in the target's outbox; a second copy adds nothing."""
    schedule = amqp_schedule(tmp_path)
    for _ in range(2):
        code, _, err = beatd("trigger", "nightly", "-s", str(schedule), "--broker", outbox_source)
        assert (code, err) == (0, "")
    source = open_backend(outbox_source)
    claimed = source.claim([OUTBOX_QUEUE], "amqp-relay@dead", 30)
    assert claimed is not None and source.queue_depths() == {OUTBOX_QUEUE: 2}
    source.close()
    to = f"sqlite:///{tmp_path / 'new.db'}"

    code, out, err = beatd("migrate", "--from", outbox_source, "--to", to)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        f"carried 2 undelivered run(s) to the target's outbox ({OUTBOX_QUEUE}) for its relay"
    )
    code, out, err = beatd("migrate", "--from", outbox_source, "--to", to)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        f"carried 0 undelivered run(s) to the target's outbox ({OUTBOX_QUEUE}) for its relay"
    )
    target = SQLiteBackend(tmp_path / "new.db")
    try:
        assert target.queue_depths() == {OUTBOX_QUEUE: 2} and target.dead_letters() == []
        carried = [target.claim([OUTBOX_QUEUE], "amqp-relay", 30) for _ in range(2)]
        ids = sorted((d.id, d.body) for d in carried if d is not None)
        assert claimed.id in [i for i, _ in ids] and len(set(ids)) == 2
    finally:
        target.close()


def test_an_unreadable_outbox_run_is_copied_as_a_dead_letter_saying_why(
    sqlite: SQLiteBackend, server: RedisServer, target: RedisBackend, tmp_path: Path
) -> None:
    damaged = message("e", 1, queue=OUTBOX_QUEUE)  # beatd's run message: no outbox run
    sqlite.enqueue([damaged])
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    code, out, err = beatd("migrate", "--from", source, "--to", server.url)
    assert (code, out, err) == (
        0,
        copied_line(0, 1, 0)
        + f"carried 0 undelivered run(s) to the target's outbox ({OUTBOX_QUEUE}) for its relay\n",
        "",
    )
    assert [(d.id, d.queue, d.body, d.reason) for d in target.dead_letters()] == [
        (damaged.id, OUTBOX_QUEUE, damaged.body, "unreadable outbox run: outbox format None, "
         "this beatd reads 1"),
    ]  # fmt: skip
    assert target.queue_depths() == {}
