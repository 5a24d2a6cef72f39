"""A Redis primary, one replica and three sentinels, each a real process on a free port.

Started by the test and stopped by pid (tests/redis_server.py); Sentinel watches the primary as
service `beatd-test` with `down-after-milliseconds 1000` and quorum 2, so a killed primary is
replaced by the replica within a few seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import NamedTuple

import redis

from tests.redis_server import REDIS_SERVER, RedisServer, free_port
from tests.waiting import wait_for

SERVICE = "beatd-test"
DOWN_AFTER_MS = 1000


class Certificates(NamedTuple):
    """A CA and a server certificate every process serves TLS with (tests: make_certificates)."""

    ca: Path
    cert: Path
    key: Path

    def options(self, tls_port: int) -> list[str]:
        """The TLS settings of a server or sentinel: TLS on `tls_port` beside the plain port
        (the tests' own look), TLS between them, no client certificates."""
        return [
            *("--tls-port", str(tls_port), "--tls-replication", "yes"),
            *("--tls-auth-clients", "no", "--tls-ca-cert-file", str(self.ca)),
            *("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)),
        ]


class SentinelProcess:
    """One `redis-server --sentinel` with a generated configuration file."""

    def __init__(
        self, directory: Path, number: int, primary_port: int, tls: Certificates | None = None
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.myid = f"{number + 1:040x}"
        self.primary_port = primary_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def reach_port(self) -> int:
        """The port beatd and the other sentinels use (TLS when the set serves it)."""
        return self.tls_port or self.port

    def start(self, replica_port: int, others: list[SentinelProcess]) -> SentinelProcess:
        """Started knowing the replica and the other sentinels, so that it can vote and fail
        over at once (found on its own, they take a few seconds of INFO and hello messages)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"
        known = "".join(
            f"sentinel known-sentinel {SERVICE} 127.0.0.1 {o.reach_port} {o.myid}\n" for o in others
        )
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.directory}\n"
            f"sentinel myid {self.myid}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
            f"sentinel known-replica {SERVICE} 127.0.0.1 {replica_port}\n{known}"
        )
        log = (self.directory / "sentinel.log").open("ab")
        tls = self.tls.options(self.reach_port) if self.tls else []
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(config), "--sentinel", *tls],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def log(self) -> str:
        path = self.directory / "sentinel.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class SentinelCluster:
    """Primary, replica and three sentinels; `url` names them as beatd reads it."""

    def __init__(
        self, directory: Path, *, persistent: bool = True, tls: Certificates | None = None
    ) -> None:
        self.tls = tls
        # no 5 s wait for more replicas before a full sync
        fast = ["--repl-diskless-sync-delay", "0"]
        servers = {}
        self.reach: dict[str, int] = {}  # the port the others use, TLS when served
        for name in ("primary", "replica"):
            port = free_port()
            self.reach[name] = port
            extra = fast + (tls.options(port) if tls else [])
            servers[name] = RedisServer(directory / name, persistent=persistent, extra=extra)
            if not tls:
                self.reach[name] = servers[name].port
        self.primary, self.replica = servers["primary"], servers["replica"]
        self.sentinels = [
            SentinelProcess(directory / f"sentinel{i}", i, self.reach["primary"], tls)
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.reach_port}" for s in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        options = f"?ssl_ca_certs={self.tls.ca}" if self.tls else ""
        return f"{scheme}://{hosts}/{SERVICE}/0{options}"

    def start(self) -> SentinelCluster:
        """Every process started and seeing the others; what was started is stopped again if
        the set does not come up (a failed fixture's servers outlived the test run)."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelCluster:
        self.primary.start()
        if not self.tls:  # a server whose port was taken meanwhile started on another
            self.reach["primary"] = self.primary.port
        self.replica.extra += ("--replicaof", "127.0.0.1", str(self.reach["primary"]))
        self.replica.start()
        if not self.tls:
            self.reach["replica"] = self.replica.port
        wait_for(self._replica_synced, what="the replica to sync")
        for sentinel in self.sentinels:
            sentinel.primary_port = self.reach["primary"]
            others = [s for s in self.sentinels if s is not sentinel]
            sentinel.start(self.reach["replica"], others)
        wait_for(self._sentinels_ready, what="the sentinels to see the replica and each other")
        return self

    def _replica_synced(self) -> bool:
        """The replica acknowledges writes (after a full sync the primary streams to it only
        once its first acknowledgement arrived: before that a WAIT waits for it)."""
        with self.primary.client() as client:
            client.set("sentinel-test:probe", "1")
            acknowledged = client.wait(1, 100)
            client.delete("sentinel-test:probe")
        return bool(acknowledged >= 1)

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                try:
                    state = client.sentinel_master(SERVICE)
                except redis.ConnectionError:
                    return False
            if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port, as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            with sentinel.client() as client:
                try:
                    _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                    return int(port)
                except redis.ConnectionError:
                    continue
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()
