"""Real `redis-server` processes for tests: each on a free port, started and stopped by pid.

Tests never touch a shared Redis. `RedisServer` starts one process, waits until it answers,
and can pause (SIGSTOP), resume, kill and restart it on the same port and data directory, so
persistence and outage tests see the same server a deployment would.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


_handed_out: set[int] = set()


class PortTaken(RuntimeError):
    """Another process listened on the port between its pick and the server's start."""


def _ephemeral_ports() -> range:
    """The ports the kernel picks for bind(0) and for outgoing connections."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


EPHEMERAL = _ephemeral_ports()
# Below the kernel's own range, so that no bind(0) and no client connection of another test
# process takes a port between its pick and its server's start (the kernel gives a port just
# released to the next bind(0): a Sentinel set's five picks in a row once held two the same),
# and drawn at random, so that the test processes running at once seldom draw the same.
PICKED_FROM = range(10_000, EPHEMERAL.start) if EPHEMERAL.start > 12_000 else EPHEMERAL


def free_port() -> int:
    """A port nothing listens on now, never the same one twice in this process."""
    while True:
        port = random.choice(PICKED_FROM)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # a service, or another test's server
                continue
        _handed_out.add(port)
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1 and a free port (and a unix socket)."""

    def __init__(
        self, directory: Path, *, persistent: bool = False, extra: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.socket = directory / "redis.sock"
        self.persistent = persistent
        self.extra = tuple(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where the last start's output begins in redis.log

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--save", ""]
        args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return [*args, *self.extra]

    def start(self) -> RedisServer:
        """Started and answering; on a new port if another process took this one meanwhile
        (a port is only free until something binds it), never on a restart."""
        for _ in range(5):
            try:
                self._spawn()
                return self
            except PortTaken:
                self.port = free_port()
        raise RuntimeError(f"redis-server found 5 ports taken: {self.log()}")

    def _spawn(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self._log_start = log.tell()
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until this server answers: an answer from another process's server on the same port
        raises PortTaken."""
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        self._check_owner(client)
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if self.process is not None and self.process.poll() is not None:
                    if "Address already in use" in self._new_log():
                        raise PortTaken(self._new_log())
                    raise RuntimeError(f"redis-server exited: {self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer in {timeout}s: {self.log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _check_owner(self, client: redis.Redis) -> None:
        if self.process is None or client.info("server")["process_id"] == self.process.pid:
            return
        self.process.wait(10)  # it could not bind the port, so it exits
        raise PortTaken(self._new_log())

    def _new_log(self) -> str:
        path = self.directory / "redis.log"
        with path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self) -> redis.Redis:
        """A plain admin client (no beatd in between), for arranging and inspecting."""
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save; only what was already persisted survives."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """On the same port: its clients know it."""
        self.kill()
        self._spawn()
