"""PostgreSQL's node records (`Nodes` in beatd.backends.base): the table `node` (format 2's,
postgres_link.py), kept by the database's clock; and the console's session key (`SessionKeys`),
in the table `console_key`, made with its one row by the first call under an advisory lock (no
format change: a schema without it simply has no key yet)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from beatd.backends.base import SESSION_KEY_BYTES, from_micros
from beatd.backends.postgres_link import NOW_US, PostgresLink
from beatd.nodes import NodeRecord

Db = psycopg.Connection[Any]


class PostgresNodes(PostgresLink):
    """The `Nodes` role."""

    def write_node(self, record: NodeRecord, keep: float) -> None:
        def work(db: Db) -> None:
            node = f"{self.schema}.node"
            db.execute(f"DELETE FROM {node} WHERE expires_us <= {NOW_US}")
            db.execute(
                f"INSERT INTO {node} (name, record, seen_us, expires_us) "
                f"VALUES (%s, %s, {NOW_US}, {NOW_US} + %s) ON CONFLICT (name) DO UPDATE SET "
                "record = excluded.record, seen_us = excluded.seen_us, "
                "expires_us = excluded.expires_us",
                (record.node, record.to_json(), round(keep * 1e6)),
            )

        self._run(work)

    def nodes(self) -> list[NodeRecord]:
        def read(db: Db) -> list[NodeRecord]:
            rows = db.execute(
                f"SELECT name, record, seen_us FROM {self.schema}.node "
                f'WHERE expires_us > {NOW_US} ORDER BY name COLLATE "C"'
            )
            return [NodeRecord.from_json(n, text, from_micros(seen)) for n, text, seen in rows]

        return self._run(read, write=False)

    def session_key(self) -> bytes:
        def work(db: Db) -> bytes:
            table = f"{self.schema}.console_key"
            # concurrent CREATE TABLE IF NOT EXISTS can collide: take turns
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(id integer PRIMARY KEY CHECK (id = 1), key bytea NOT NULL)"
            )
            db.execute(
                f"INSERT INTO {table} (id, key) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                (secrets.token_bytes(SESSION_KEY_BYTES),),
            )
            row = db.execute(f"SELECT key FROM {table} WHERE id = 1").fetchone()
            assert row is not None
            return bytes(row[0])

        return self._run(work)

    def session_generation(self, token: str) -> int:
        def read(db: Db) -> int:
            table = f"{self.schema}.console_signout"
            made = db.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if made is None or made[0] is None:
                return 0  # nobody signed out yet: the table is made by the first sign-out
            row = db.execute(
                f"SELECT generation FROM {table} WHERE token = %s", (token,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return self._run(read)

    def end_sessions(self, token: str) -> int:
        def work(db: Db) -> int:
            table = f"{self.schema}.console_signout"
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(token text PRIMARY KEY, generation bigint NOT NULL)"
            )
            row = db.execute(
                f"INSERT INTO {table} (token, generation) VALUES (%s, 1) "
                f"ON CONFLICT (token) DO UPDATE SET generation = {table}.generation + 1 "
                "RETURNING generation",
                (token,),
            ).fetchone()
            assert row is not None
            return int(row[0])

        return self._run(work)
