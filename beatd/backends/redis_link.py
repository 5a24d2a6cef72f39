"""The connection a Redis backend's parts share: bounded calls, and redis-py's errors turned
into beatd's (module beatd.backends.redis tells the whole story).

Every call is one attempt, no client-side retries, with socket timeouts of `op_timeout`. A call
that fails before its request could reach Redis (refused, a send that failed) or that Redis
refused before writing (LOADING, BUSY, OOM, READONLY...) is NotApplied; one whose reply was
lost (a timeout, a connection lost while waiting) is OutcomeUnknown: Redis may still run it.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from beatd.backends.base import FormatTooNew, Lease
from beatd.backends.redis_history_log_lua import FOLD_MORE
from beatd.backends.redis_replication import Replication, ReplicaWait
from beatd.backends.redis_scripts import FORMAT_NEWER, FORMAT_VERSION, LEASE_LOST, SCRIPTS
from beatd.backends.redis_sentinel import (
    FollowedPrimary,
    is_sentinel,
    parse_sentinel_url,
    sentinel_client,
)
from beatd.errors import (
    BackendError,
    LeaseLost,
    NamespaceError,
    NotApplied,
    OutcomeUnknown,
    TransientBackendError,
)

T = TypeVar("T")

BANDS = ("high", "normal", "low")  # read in this order
RECORD_SEPARATOR = "\x1e"  # between the bodies of a commit (see redis_scripts.COMMIT)
RECLAIM_IDLE_MS = 86_400_000  # a claim lapses when its pending entry is this idle (see above)
# error replies that mean "busy or failing over, try again", not "wrong": each is given before
# the first write of the command or script (Redis checks OOM and replicas there), so nothing
# was written
TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")
# no CLIENT SETINFO on connect: one reply less to wait for, one command less to allow by ACL
NO_CLIENT_SETINFO: dict[str, None] = (
    {"driver_info": None}  # redis-py 8
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)
# URL options that would undo the bound on every call (redis-py lets the URL override kwargs)
UNBOUNDING_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "timeout",
    "retry_on_timeout",
    "retry_on_error",
)


SECRET_OPTIONS = ("password", "sentinel_password")


def band(priority: int | None) -> int:
    """Index into BANDS: 7-9 high, 4-6 or unset normal, 0-3 low."""
    if priority is None or 4 <= priority <= 6:
        return 1
    return 0 if priority > 6 else 2


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for logs and metrics."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown += "?" + urlencode(
            [(k, "***" if k in SECRET_OPTIONS else v) for k, v in pairs], safe="*/"
        )
    return shown


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisLink:
    """One Redis connection pool, its namespace, and the bounded calls every part makes."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "beatd",
        op_timeout: float = 2.0,
        history: bool = True,
        wait_replicas: int | None = None,
    ) -> None:
        """`wait_replicas`: the replicas each commit and take of the lease waits for (WAIT;
        redis_replication.py), None for 1 while the primary has any."""
        if not namespace:
            raise NamespaceError("the Redis namespace must not be empty: use e.g. 'beatd'")
        if op_timeout <= 0:
            raise BackendError(f"op_timeout must be positive, got {op_timeout!r}")
        self.url = redact(url)
        options = [k for k, _ in parse_qsl(urlsplit(url).query) if k in UNBOUNDING_OPTIONS]
        if options:
            raise BackendError(
                f"cannot use Redis URL {self.url}: {', '.join(options)} would override the "
                f"per-call timeout of {op_timeout} s that keeps every call well inside the "
                "lease; remove it from the URL (the timeout follows the lease TTL)"
            )
        self.namespace = namespace
        self.op_timeout = op_timeout
        # the key prefix the scripts write the run history under; '' writes none
        self._history = self._key("") if history else ""
        self._format_checked = False  # see _check_format
        self._wait_ms = _ms(op_timeout / 2)  # WAIT's timeout: well inside the call's
        self._replicas = ReplicaWait(wait_replicas, self._wait_ms, self.url)
        connection: dict[str, Any] = dict(
            decode_responses=True,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            # one attempt per call: a retry after a timeout could double the wait and
            # re-send a write that the server may still execute (see the module doc)
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
            protocol=2,  # RESP2: no HELLO round trip before the first command
            **NO_CLIENT_SETINFO,
        )
        self._redis: redis.Redis
        # the Sentinel that finds the primary, when the URL names one (redis_sentinel.py)
        self._sentinel: FollowedPrimary | None = None
        self._changes_seen = 0  # the primary changes the replica count was looked at after
        if is_sentinel(url):
            address = parse_sentinel_url(url, self.url)
            self._redis, self._sentinel = sentinel_client(address, self.url, **connection)
            return
        try:
            self._redis = redis.Redis.from_url(url, **connection)
        except ValueError as exc:  # redis-py's complaint about the URL, e.g. a bad scheme
            raise BackendError(f"cannot use Redis URL {self.url}: {exc}") from None

    # --- keys, calls and errors ----------------------------------------------------------

    def _where(self) -> str:
        return f"Redis at {self.url} (namespace {self.namespace})"

    def _check_format(self, what: str) -> None:
        """Refuse data in a newer format than this beatd knows (FormatTooNew), checked before
        the first call `what` that reads it; a leader's take checks again, atomically."""
        if self._format_checked:
            return

        def call() -> list[Any]:  # as ACQUIRE reads them (two GETs: the ACL allows no MGET)
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._key("format-version"))
                pipe.get(self._key("format"))
                return pipe.execute()

        version, marker = self._do(what, call)
        found = version if version is not None else marker
        if isinstance(found, str) and found.isdigit() and int(found) > FORMAT_VERSION:
            raise FormatTooNew(self._where(), int(found), FORMAT_VERSION)
        self._format_checked = True

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _stream(self, queue: str, band_index: int) -> str:
        return self._key("queue", queue, BANDS[band_index])

    def _do(self, what: str, call: Callable[[], T], *, unsent: bool = False) -> T:
        """Run one Redis call (or pipeline), turning redis-py's errors into backend errors.
        `unsent`: `call` connects or sends, and never waits for a reply, so a connection error
        means the server cannot have executed anything."""
        try:
            return call()
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise BackendError(f"{self.url}: {what}: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # TimeoutError is not a ConnectionError in redis-py: both mean "try again", except
            # a server certificate that fails verification, which waiting will not fix
            error: type[BackendError] = BackendError
            if not _untrusted(exc):
                error = NotApplied if unsent or _never_connected(exc) else OutcomeUnknown
            raise error(f"{self.url}: {what}: {type(exc).__name__}: {exc}") from exc
        except (redis.exceptions.OutOfMemoryError, redis.ReadOnlyError) as exc:
            raise NotApplied(f"{self.url}: {what}: {exc}") from exc
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith(LEASE_LOST):
                raise LeaseLost(text) from None
            if text.startswith(FORMAT_NEWER):
                found = int(text.split()[1])
                raise FormatTooNew(self._where(), found, FORMAT_VERSION) from None
            if text.startswith(TRANSIENT_REPLIES):
                raise NotApplied(f"{self.url}: {what}: {text}") from exc
            raise BackendError(f"{self.url}: {what}: {text}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"{self.url}: {what}: {type(exc).__name__}: {exc}") from exc

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        return self._send(name, keys, args)()

    def _send(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | int | bytes],
        *,
        raw: bool = False,
        replicated: bool = False,
    ) -> Callable[[], Any]:
        """Send one script call; the returned function waits for its reply.

        Between the two the caller can work while Redis runs the script; the connection stays
        out of the pool until the reply is read, so each call must be waited for. A `raw` reply
        keeps its strings as bytes, for replies that carry what someone else stored. A
        `replicated` write waits for the replicas too (redis_replication.py).
        """
        script = SCRIPTS[name]
        if replicated and (paused := self._replicas.gate(name, self._replication)):
            raise NotApplied(paused)
        pool = self._redis.connection_pool
        connection = self._do(name, pool.get_connection, unsent=True)  # connects if need be

        def send(command: str, body: str) -> None:
            connection.send_command(command, body, len(keys), *keys, *args)  # type: ignore[no-untyped-call]

        def reply() -> Any:
            try:
                return connection.read_response(disable_decoding=raw)
            except redis.exceptions.NoScriptError:  # a restarted Redis: send it in full once
                send("EVAL", script.source)
                return connection.read_response(disable_decoding=raw)

        def wait() -> Any:
            try:
                result = self._do(name, reply)
                if replicated:
                    self._await_replicas(name, connection)
                return result
            finally:
                pool.release(connection)

        try:
            # a send that fails leaves the command incomplete: the server never runs it
            self._do(name, lambda: send("EVALSHA", script.sha), unsent=True)
        except BaseException:  # a backend error, or an argument redis-py cannot encode
            pool.release(connection)
            raise
        return wait

    def _await_replicas(self, name: str, connection: Any) -> None:
        """WAIT, on the connection that wrote, for the replicas the setting asks for."""
        if self._sentinel is not None and self._sentinel.changes != self._changes_seen:
            self._changes_seen = self._sentinel.changes  # a new primary: its own replicas
            self._replicas.forget()
        wanted = self._replicas.wanted(self._replication)
        if wanted == 0:
            return
        acked = int(self._do("wait", lambda: _reply(connection, "WAIT", wanted, self._wait_ms)))

        def written() -> Replication:  # the primary this connection wrote to
            return Replication.parse(self._do("info", lambda: _reply(connection, *INFO)))

        doubt = self._replicas.acknowledged(name, acked, wanted, written)
        if doubt is not None:
            self._follow_primary()
            raise OutcomeUnknown(doubt)

    def _replication(self) -> Replication:
        """The replication of the primary the next call reaches."""
        self._follow_primary()
        pool = self._redis.connection_pool
        connection = self._do("info", pool.get_connection, unsent=True)
        try:
            return Replication.parse(self._do("info", lambda: _reply(connection, *INFO)))
        finally:
            pool.release(connection)

    def _follow_primary(self) -> None:
        """Under Sentinel, ask the sentinels for the primary now: if they name another one
        (a failover, while the old primary still answers), the pooled connections to the old
        one are dropped, so the next call goes to the new one (redis-py's pool does this)."""
        if self._sentinel is None:
            return
        pool = self._redis.connection_pool
        with contextlib.suppress(TransientBackendError):  # the next call says it again
            self._do("sentinel masters", pool.get_master_address)  # type: ignore[attr-defined]

    def replication_stats(self) -> dict[str, int]:
        """`unacknowledged` writes (no replica acknowledged them in time) and the times the
        Sentinel service moved to a new primary (`primary_changes`), since start."""
        changes = self._sentinel.changes if self._sentinel is not None else 0
        return {"unacknowledged": self._replicas.unacknowledged, "primary_changes": changes}

    def _fold_log(self, *, ends_only: bool = False) -> None:
        """Fold the run history's logs into its records (redis_history_lua: `fold`), a batch a
        call, until they are empty: what a reader of the records does first. `ends_only`: only
        when a start or an end is logged (what a reader of the summaries needs)."""
        args = (self._key(""), "1" if ends_only else "0")
        while int(self._eval("fold", (), args)) > 0:
            pass

    def _eval_folded(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """A script that reads or writes the records: each call folds a batch of the log
        first, and replies FOLD_MORE, having done nothing else, while some is left."""
        while (reply := self._eval(name, keys, args)) == FOLD_MORE:
            pass
        return reply

    def _cmd(self, *args: str | int) -> Any:
        """One plain command, parsed by redis-py's reply callbacks (HGETALL gives a dict)."""
        call = self._redis.execute_command
        return self._do(str(args[0]).lower(), lambda: call(*args))  # type: ignore[no-untyped-call]

    def _hscan(self, key: str, cursor: int, count: int) -> tuple[int, dict[str, str]] | None:
        """One HSCAN page of `key` from `cursor`: the cursor after it and the fields read. None
        when the first page is refused for want of +hscan (a user on the ACL line before it),
        for the caller to read the hash in one command, as before."""
        try:
            after, page = self._cmd("HSCAN", key, cursor, "COUNT", count)
        except BackendError as exc:
            if cursor or not isinstance(exc.__cause__, redis.exceptions.NoPermissionError):
                raise
            return None
        return int(after), page

    def _fenced(
        self, name: str, lease: Lease, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        return self._send_fenced(name, lease, keys, args)()

    def _send_fenced(
        self,
        name: str,
        lease: Lease,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        replicated: bool = False,
    ) -> Callable[[], Any]:
        """Send a script that refuses to write unless `lease` (token and epoch) still holds."""
        wait = self._send(name, keys, args, replicated=replicated)

        def fenced() -> Any:
            try:
                return wait()
            except LeaseLost as exc:
                holder = str(exc).removeprefix(LEASE_LOST + " ")
                raise LeaseLost(
                    f"lease epoch {lease.epoch} of {lease.node} is no longer held ({holder})"
                ) from None

        return fenced

    def close(self) -> None:
        self._redis.close()

    def ping(self) -> None:
        self._cmd("PING")


INFO = ("INFO", "replication")


def _reply(connection: Any, *command: str | int) -> Any:
    """One command on `connection`, its reply unparsed (a string)."""
    connection.send_command(*command)
    return connection.read_response()


def _never_connected(exc: BaseException) -> bool:
    """Whether the connection failed before anything was sent: refused, no such socket file,
    no such host (redis-py raises its error while handling the OS's)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, MasterNotFoundError):  # no sentinel named a primary: none to send to
        return True
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError | FileNotFoundError | socket.gaierror):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _untrusted(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
