"""Real PostgreSQL servers for the tests that stop or restart one: each in a temporary
directory on a free port, started with `postgres` itself (so the test holds its pid), and
stopped by that pid. The binaries are PostgreSQL's own (/usr/lib/postgresql/VERSION/bin, not
on PATH; scripts/test installs them).

PostgreSQL refuses to run as root: under root the server runs as the `postgres` user, in a
directory of its own outside pytest's (which only root may enter).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.redis_server import free_port


def binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no {name} in /usr/lib/postgresql/*/bin: run scripts/test")
    return found[-1]


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1 and a free port, trust auth for user postgres."""

    def __init__(self, *settings: str, standby_of: PostgresServer | None = None) -> None:
        """A new cluster (initdb), or with `standby_of` a streaming standby of that running
        server (pg_basebackup -R), which a synchronous primary waits for."""
        self.settings = settings  # name=value, as `postgres -c` takes them
        self.as_root = os.getuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="beatd-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if self.as_root:
            account = pwd.getpwnam("postgres")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        if standby_of is None:
            argv = [binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"]
        else:
            argv = [binary("pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream"]
            argv += ["-h", "127.0.0.1", "-p", str(standby_of.port), "-U", "postgres"]
        self._as_server(argv, check=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_server(self, argv: list[str], **kwargs: Any) -> Any:
        user = {"user": "postgres"} if self.as_root else {}
        return subprocess.run(argv, capture_output=True, **user, **kwargs)

    def start(self) -> PostgresServer:
        log = (self.directory / "postgres.log").open("ab")
        argv = [binary("postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"]
        argv += ["-c", "fsync=on", "-c", "max_connections=50"]
        for setting in self.settings:
            argv += ["-c", setting]
        user = {"user": "postgres"} if self.as_root else {}
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **user)
        log.close()
        self.wait_ready()
        return self

    def promote(self) -> None:
        """Make a standby the primary, and wait until it takes writes."""
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute("SELECT pg_promote(true, 30)")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=1) as db:
                    db.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not answer in {timeout}s: {self.log()}")
            time.sleep(0.05)

    def log(self, tail: int | None = 2000) -> str:
        """The server's log, its last `tail` characters (None: all of it)."""
        path = self.directory / "postgres.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if tail is None else text[-tail:]

    def kill(self) -> None:
        """SIGKILL of the postmaster: its backends end when they notice; only what was
        committed (and flushed: fsync=on) comes back at the next start, after crash recovery."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        self._wait_backends_gone()

    def _wait_backends_gone(self, timeout: float = 10.0) -> None:
        """A killed postmaster's children still hold the shared memory a restart needs."""
        pid_file = self.data / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = subprocess.run(
                ["pgrep", "-f", "--", f"-D {self.data}"], capture_output=True, text=True
            ).stdout.split()
            if not held:
                pid_file.unlink(missing_ok=True)
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
