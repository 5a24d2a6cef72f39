"""Backends for the runtime-entry tests of the three ways in: a SQLite file, and a private
redis-server (one per test module, flushed before each test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from beatd.backends import Backend, open_backend
from tests.redis_server import RedisServer

BACKENDS = ("sqlite", "redis")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend URL, empty at the start of the test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'beatd.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    redis.Redis(port=server.port).flushall()
    return server.url


@pytest.fixture
def store(broker: str) -> Iterator[Backend]:
    opened = open_backend(broker)
    yield opened
    opened.close()


def register_files(store: Backend, files: dict[str, str]) -> None:
    """What the leader does at adoption: register the file entries' names."""
    lease = store.acquire_lease("leader", 600)
    assert lease is not None
    assert store.register_file_entries(lease, files) == []
