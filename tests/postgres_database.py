"""A scratch database on the PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres; scripts/test
makes sure it runs): created under a unique name, so parallel runs never meet, and dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def scratch_database(server: str = SERVER) -> Iterator[str]:
    """The URL of a new, empty database, dropped (with its sessions) when the block ends."""
    name = f"beatd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
