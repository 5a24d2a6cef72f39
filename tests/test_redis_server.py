"""The tests' own servers: a port handed out once, and a server that found its port taken
starts on another instead of passing for the server that holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.redis_sentinel import SentinelCluster, SentinelProcess
from tests.redis_server import EPHEMERAL, RedisServer, free_port


def test_free_port_never_hands_out_the_same_port_twice_in_a_process() -> None:
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_free_port_is_not_one_the_kernel_gives_to_other_processes() -> None:
    assert EPHEMERAL.start > 12_000  # Linux's default 32768-60999 here
    assert all(free_port() not in EPHEMERAL for _ in range(100))


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    holder = RedisServer(tmp_path / "holder").start()
    late = RedisServer(tmp_path / "late")
    late.port = holder.port  # another process's server took it between the pick and the start
    try:
        late.start()
        assert late.port != holder.port
        with late.client() as client:
            assert late.process is not None
            assert client.info("server")["process_id"] == late.process.pid
    finally:
        late.stop()
        holder.stop()


def test_a_sentinel_set_that_does_not_come_up_leaves_no_server_running(tmp_path: Path) -> None:
    cluster = SentinelCluster(tmp_path, persistent=False)

    def refused(*args: object) -> SentinelProcess:
        raise RuntimeError("this sentinel does not start")

    cluster.sentinels[0].start = refused  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="this sentinel does not start"):
        cluster.start()
    assert cluster.primary.process is None and cluster.replica.process is None
