"""The bench's own PostgreSQL database: a scratch database on the server at 127.0.0.1:5432
(trust auth, as tests/postgres_database.py uses it), created for one bench run and dropped with
its sessions at the end, so the bench never touches another database of that server.

`BEATD_BENCH_POSTGRES` names another server (`postgresql://USER@HOST:PORT`, no database).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

SERVER = "postgresql://postgres@127.0.0.1:5432"
SCHEMA = "beatd"  # beatd's default namespace, which the bench keeps
SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "max_connections")


class ScratchDatabase:
    """A database named `beatd_bench_<random>` on `server`; `url` is beatd's `--broker`."""

    def __init__(self, server: str | None = None) -> None:
        self.server = server or os.environ.get("BEATD_BENCH_POSTGRES", SERVER)
        self.name = f"beatd_bench_{uuid.uuid4().hex[:12]}"
        self.url = f"{self.server}/{self.name}"

    def create(self) -> ScratchDatabase:
        import psycopg

        with psycopg.connect(f"{self.server}/postgres", autocommit=True, connect_timeout=5) as db:
            db.execute(f"CREATE DATABASE {self.name}")
        return self

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            row = db.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def settings(self) -> dict[str, str]:
        """The server settings the figures depend on, for the report."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            rows = db.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s) "
                "ORDER BY name",
                (list(SETTINGS),),
            ).fetchall()
        return dict(rows)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(f"{self.server}/postgres", autocommit=True, connect_timeout=5) as db:
            db.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def reset(url: str) -> None:
    """Drop beatd's schema (its tables with it), so the next `open_backend` starts empty."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def table_sizes(url: str) -> dict[str, int]:
    """Bytes on disk of each of beatd's tables, indexes and TOAST included
    (`pg_total_relation_size`); the history's tables as soon as the backend has them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname",
            (SCHEMA,),
        ).fetchall()
    return {name: int(size) for name, size in rows}


def backend_pids(url: str) -> list[int]:
    """The server processes serving this database's sessions now (the bench's connections)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def server_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each server process serving this database (from /proc: the server
    runs on this machine); a process that ended since the listing is left out."""
    from bench.common import proc_cpu

    out: dict[int, float] = {}
    for pid in backend_pids(url):
        if Path(f"/proc/{pid}").exists():
            try:
                out[pid] = proc_cpu(pid)
            except OSError:
                continue
    return out


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the server spent for this database between two `server_cpu` readings: a process
    that started in between counts from zero."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
