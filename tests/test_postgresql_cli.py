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


def test_migrate_carries_history_controls_audit_and_runtime_entries_to_sqlite_and_back(
    database: str, tmp_path: Path
) -> None:
    """The migration above carries states and dead letters only: here a run record, a pause,
    the audit log and a runtime entry written on PostgreSQL read back the same, as the
    commands show them, after PostgreSQL → SQLite → PostgreSQL (another schema)."""
    schedules = tmp_path / "s.yaml"
    schedules.write_text("entries:\n  e:\n    task: t.x\n    every: 1h\n", encoding="utf-8")
    on_postgresql = ("-s", str(schedules), "--broker", database)
    assert beatd("db", "upgrade", "--broker", database)[0] == 0
    add = ("entries", "add", "rt", "--task", "t.y", "--every", "10s", "--by", "rev")
    assert beatd(*add, *on_postgresql)[0] == 0
    assert beatd("trigger", "e", "--by", "rev", *on_postgresql)[0] == 0
    assert beatd("pause", "e", "--reason", "review", "--by", "rev", *on_postgresql)[0] == 0
    backend = open_backend(database)
    try:
        delivery = backend.claim(["default"], "w", 30)
        assert delivery is not None
        backend.ack(delivery)
    finally:
        backend.close()

    def shown(url: str, namespace: str = "beatd") -> list[tuple[int, str, str]]:
        where = ("--broker", url, "--namespace", namespace)
        return [
            beatd("audit", *where),
            beatd("history", *where),
            beatd("entries", "list", "--json", "-s", str(schedules), *where),
            beatd("status", "-s", str(schedules), *where),
        ]

    before = shown(database)
    PAUSED = "\npaused   e: by rev, reason 'review', since "
    assert [code for code, _, _ in before] == [0, 0, 0, 0]
    assert before[0][1].endswith("3 action(s)\n")  # entry.add, trigger, pause
    assert before[1][1].count(" succeeded ") == 1 and before[1][1].endswith(" manual\n")
    assert PAUSED in before[3][1]
    sqlite = f"sqlite:///{tmp_path / 'beatd.db'}"
    assert beatd("migrate", "--from", database, "--to", sqlite)[0] == 0
    after = shown(sqlite)
    assert after[:3] == before[:3] and PAUSED in after[3][1]
    assert beatd("migrate", "--from", sqlite, "--to", database, "--namespace", "back")[0] == 0
    back = shown(database, "back")
    assert back[:3] == before[:3] and PAUSED in back[3][1]


@pytest.fixture
def roles(database: str) -> Iterator[tuple[str, str]]:
    """The URLs of docs/postgresql.md's two roles on `database`, set up as its "Roles and
    grants" says: an owner that may create the schema, and the daemons' role, which may only
    read and write its tables once the owner ran `beatd db upgrade` (`grant_daemons`)."""
    suffix = database.rsplit("_", 1)[1]
    owner, daemons = f"beatd_owner_{suffix}", f"beatd_{suffix}"
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {owner} LOGIN")
        admin.execute(f"CREATE ROLE {daemons} LOGIN")
        admin.execute(f"GRANT CREATE ON DATABASE {name} TO {owner}")
    try:
        yield (
            database.replace("postgres@", f"{owner}@"),
            database.replace("postgres@", f"{daemons}@"),
        )
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            # One role at a time: listing both trips over the owner's default ACL for the
            # daemons ("could not find tuple for default ACL"), which the first drop removes.
            admin.execute(f"DROP OWNED BY {owner} CASCADE")
            admin.execute(f"DROP OWNED BY {daemons} CASCADE")
            admin.execute(f"DROP ROLE {owner}")
            admin.execute(f"DROP ROLE {daemons}")


DOCS = Path(__file__).parent.parent / "docs" / "postgresql.md"


def documented_grants() -> list[str]:
    """The statements docs/postgresql.md's "Roles and grants" runs after `beatd db upgrade`."""
    section = DOCS.read_text(encoding="utf-8").split("## Roles and grants", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    after_upgrade = block.split("beatd db upgrade", 1)[1].split("\n", 1)[1]
    lines = [line for line in after_upgrade.splitlines() if not line.startswith("--")]
    return [" ".join(part.split()) for part in " ".join(lines).split(";") if part.strip()]


def role_of(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


def grant_daemons(owner: str, daemons: str) -> None:
    """Run the documented grants as the owner, with the test's role names."""
    with psycopg.connect(owner, autocommit=True) as db:
        for statement in documented_grants():
            statement = statement.replace("FOR ROLE beatd_owner ", f"FOR ROLE {role_of(owner)} ")
            assert statement.endswith(" TO beatd")
            db.execute(statement.removesuffix(" TO beatd") + f" TO {role_of(daemons)}")


def test_the_documented_grants_reach_a_table_a_later_format_adds(roles: tuple[str, str]) -> None:
    owner, daemons = roles
    assert beatd("db", "upgrade", "--broker", owner)[0] == 0
    grant_daemons(owner, daemons)
    with psycopg.connect(owner, autocommit=True) as db:  # as a later format's migration would
        db.execute("CREATE TABLE beatd.later (id bigserial PRIMARY KEY, note text)")
    with psycopg.connect(daemons, autocommit=True) as db:
        db.execute("INSERT INTO beatd.later (note) VALUES ('x')")
        db.execute("UPDATE beatd.later SET note = 'y'")
        assert db.execute("SELECT note FROM beatd.later").fetchall() == [("y",)]
        db.execute("DELETE FROM beatd.later")


def test_the_roles_and_grants_of_the_docs_let_the_daemons_role_publish_and_claim(
    roles: tuple[str, str], tmp_path: Path
) -> None:
    owner, daemons = roles
    assert beatd("db", "upgrade", "--broker", owner)[0] == 0
    grant_daemons(owner, daemons)
    schedules = tmp_path / "s.yaml"
    schedules.write_text("entries:\n  e:\n    task: t.x\n    every: 1h\n", encoding="utf-8")
    on_daemons = ("-s", str(schedules), "--broker", daemons)
    assert beatd("pause", "e", "--reason", "r", "--by", "rev", *on_daemons)[0] == 0
    assert beatd("trigger", "e", "--force", "--by", "rev", *on_daemons)[0] == 0
    backend = open_backend(daemons)
    try:
        lease = backend.acquire_lease("n", 30)
        assert lease is not None
        backend.commit(lease, [StateWrite(state("f", 3, 2), None)], [message("f", 3)])
        claimed = [backend.claim(["default"], "w", 30) for _ in range(2)]
        for delivery in claimed:
            assert delivery is not None
            backend.ack(delivery)
        assert backend.claim(["default"], "w", 30) is None
    finally:
        backend.close()


def test_db_upgrade_by_the_daemons_role_on_a_current_schema_has_nothing_to_do(
    roles: tuple[str, str],
) -> None:
    owner, daemons = roles
    assert beatd("db", "upgrade", "--broker", owner)[0] == 0
    grant_daemons(owner, daemons)
    assert beatd("db", "upgrade", "--broker", daemons) == (
        0,
        f"schema beatd of {daemons}: at format {FORMAT_VERSION}, nothing to upgrade\n",
        "",
    )


def test_a_namespace_that_is_no_schema_name_is_reported_against_namespace(database: str) -> None:
    code, out, err = beatd("status", "--broker", database, "--namespace", "Beatd")
    assert (code, out) == (2, "")
    assert err.startswith(
        "beatd: --namespace: cannot use the namespace 'Beatd' as a PostgreSQL schema name: "
    )
