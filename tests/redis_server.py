"""Real `redis-server` processes for tests: each on a free port, started and stopped by pid.

Tests never touch a shared Redis. `RedisServer` starts one process, waits until it answers,
and can pause (SIGSTOP), resume, kill and restart it on the same port and data directory, so
persistence and outage tests see the same server a deployment would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
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
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer in {timeout}s: {self.log()}")
                time.sleep(0.02)
        finally:
            client.close()

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
        self.kill()
        self.start()
