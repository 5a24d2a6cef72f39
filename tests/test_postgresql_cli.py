"""The commands on a PostgreSQL broker: `beatd db upgrade`, and `beatd migrate` to and from
SQLite and Redis (each entry goes on from its last published slot; dead letters copied once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from beatd.backends import open_backend
from beatd.backends.base import StateWrite
from beatd.backends.postgres_link import FORMAT_VERSION
from beatd.backends.sqlite import SQLiteBackend
from beatd.cli import main
from tests.backends.contract import message, state
from tests.postgres_database import scratch_database
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database() as url:
        yield url


def beatd(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_db_upgrade_creates_the_schema_once(database: str) -> None:
    first = beatd("db", "upgrade", "--broker", database, "--namespace", "jobs")
    again = beatd("db", "upgrade", "--broker", database, "--namespace", "jobs")
    where = f"schema jobs of {database}"
    assert first == (0, f"{where}: upgraded from format 0 to {FORMAT_VERSION}\n", "")
    assert again == (0, f"{where}: at format {FORMAT_VERSION}, nothing to upgrade\n", "")
    with psycopg.connect(database) as db:
        assert db.execute("SELECT version FROM jobs.format").fetchone() == (FORMAT_VERSION,)


def test_db_upgrade_refuses_a_newer_format_with_exit_status_2(database: str) -> None:
    assert beatd("db", "upgrade", "--broker", database)[0] == 0
    with psycopg.connect(database) as db:
        db.execute(f"UPDATE beatd.format SET version = {FORMAT_VERSION + 1}")
    code, out, err = beatd("db", "upgrade", "--broker", database)
    assert (code, out) == (2, "")
    assert err.startswith(
        f"schema beatd of {database} holds beatd's persisted state in format "
        f"{FORMAT_VERSION + 1}, but this beatd knows formats up to {FORMAT_VERSION} only"
    )


def test_db_upgrade_on_sqlite_leaves_it_to_the_leader(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'beatd.db'}"
    assert beatd("db", "upgrade", "--broker", url) == (
        0,
        f"{url}: nothing to do here; the leader upgrades it as it takes the lease\n",
        "",
    )


def test_migrate_from_sqlite_to_postgresql_and_on_to_redis(database: str, tmp_path: Path) -> None:
    sqlite = SQLiteBackend(tmp_path / "beatd.db")
    lease = sqlite.acquire_lease("old", 30)
    assert lease is not None
    sqlite.commit(lease, [StateWrite(state("e", 3, 2), None)], [message("e", 3)])
    delivery = sqlite.claim(["default"], "w", 30)
    assert delivery is not None
    sqlite.dead_letter(delivery, "boom")
    sqlite.release_lease(lease)
    sqlite.close()
    source = f"sqlite:///{tmp_path / 'beatd.db'}"
    # the message has no slot (no run record), so no history to copy
    copied = (
        "copied 1 state(s), 1 dead letter(s), 0 run record(s), 0 missed-slot record(s), "
        "0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), 0 trigger key(s); "
        "skipped 0 already on the target\n"
    )
    dead = [("e@2026-03-01T12:03:00Z", "default", "boom", 1)]

    assert beatd("migrate", "--from", source, "--to", database) == (0, copied, "")
    assert beatd("migrate", "--from", source, "--to", database) == (
        0,
        "copied 0 state(s), 0 dead letter(s), 0 run record(s), 0 missed-slot record(s), "
        "0 pause(s), 0 busy mark(s), 0 held run(s), 0 audit record(s), 0 trigger key(s); "
        "skipped 2 already on the target\n",
        "",
    )
    postgresql = open_backend(database, read_only=True)
    try:
        assert postgresql.load_states() == {"e": state("e", 3, 2)}
        letters = postgresql.dead_letters()
        assert [(d.id, d.queue, d.reason, d.deliveries) for d in letters] == dead
    finally:
        postgresql.close()

    server = RedisServer(tmp_path / "redis").start()
    try:
        assert beatd("migrate", "--from", database, "--to", server.url) == (0, copied, "")
        redis = open_backend(server.url)
        try:
            assert redis.load_states() == {"e": state("e", 3, 2)}
            letters = redis.dead_letters()
            assert [(d.id, d.queue, d.reason, d.deliveries) for d in letters] == dead
        finally:
            redis.close()
    finally:
        server.stop()
