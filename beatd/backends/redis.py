"""Redis: the lease, the run state and the queues of several hosts in one Redis (7.0 or later).

Every write that must be atomic is one Lua script, and every script checks what it guards in
the same step: the lease token and epoch before a commit, the claimant before an ack. Times
(lease expiry, retry delays, claim deadlines) are Redis's clock (`TIME`, `PEXPIRE`), never a
client's. Every call is bounded: one attempt, no client-side retries, socket timeouts of
`op_timeout`, so a hung Redis costs a caller about `op_timeout`, then TransientBackendError.

Keys (`beatd` is the namespace; docs/redis.md has the full table):
  beatd:lease             hash    node, token, epoch, config; expires with the lease (PEXPIRE)
  beatd:epoch             string  the fencing epoch, raised on every fresh take of the lease
  beatd:format            string  "1": beatd's data is here (gone: Redis lost it; see identity)
  beatd:state             hash    entry -> JSON [last_slot_us, last_published_us, identity]
  beatd:queues            set     every queue name ever written to
  beatd:queue:Q:BAND      stream  undone runs of queue Q in priority band high/normal/low,
                                  consumer group `workers`; acknowledged entries are deleted
  beatd:delayed:Q         zset    retries of queue Q waiting, scored by ready time (ms)
  beatd:dead              stream  dead letters with reason, deliveries, failed_at
  Q, Q\x06\x16{3,6,9}      list    runs of a `protocol: celery` queue Q, in kombu's own layout
                                  and outside the namespace (see beatd.celery_protocol)

A claim's deadline lives in the stream's pending list: a claim made with visibility V sets the
entry's delivery time back by RECLAIM_IDLE - V (XCLAIM ... IDLE), so `XAUTOCLAIM` with min-idle
RECLAIM_IDLE takes over exactly the claims whose own visibility lapsed, whatever each claimant
chose. The delivery count of the pending entry is the claim's generation: the receipt carries
it, so a worker whose claim was taken over (the count moved on) can no longer ack or extend.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring as _string
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from beatd import celery_protocol
from beatd.backends.base import (
    DeadLetter,
    Delivery,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    StoreIdentity,
    from_micros,
    to_micros,
    unseen,
    utf8_fault,
)
from beatd.backends.redis_scripts import LEASE_LOST, SCRIPTS
from beatd.core import EntryState
from beatd.errors import BackendError, LeaseLost, TransientBackendError

T = TypeVar("T")

BANDS = ("high", "normal", "low")  # read in this order
RECORD_SEPARATOR = "\x1e"  # between the bodies of a commit (see redis_scripts.COMMIT)
RECLAIM_IDLE_MS = 86_400_000  # a claim lapses when its pending entry is this idle (see above)
# error replies that mean "busy or failing over, try again", not "wrong"
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
            [(k, "***" if k == "password" else v) for k, v in pairs], safe="*/"
        )
    return shown


def _pack_state(state: EntryState) -> str:
    published = "null" if state.last_published is None else str(to_micros(state.last_published))
    return f"[{to_micros(state.last_slot)},{published},{_string(state.identity)}]"


def _unpack_state(entry: str, value: str) -> EntryState:
    slot, published, identity = json.loads(value)
    return EntryState(
        entry, from_micros(slot), None if published is None else from_micros(published), identity
    )


# UTF-8 as is: Redis's cjson copies it through; only quotes, backslashes, controls escaped
_json: Callable[[Sequence[str | int]], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBackend:
    def __init__(self, url: str, *, namespace: str = "beatd", op_timeout: float = 2.0) -> None:
        if not namespace:
            raise BackendError("the Redis namespace must not be empty: use e.g. 'beatd'")
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
        self._targets: dict[tuple[str, int | None, str], tuple[str, bool]] = {}
        self._pubsub: PubSub | None = None  # the idle worker's wake-ups (see wait_for_work)
        self._channels: list[str] = []
        self._delayed_at: float | None = None  # monotonic: a delayed retry is ready
        try:
            self._redis: redis.Redis = redis.Redis.from_url(
                url,
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
        except ValueError as exc:  # redis-py's complaint about the URL, e.g. a bad scheme
            raise BackendError(f"cannot use Redis URL {self.url}: {exc}") from None

    # --- keys, calls and errors ----------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def _stream(self, queue: str, band_index: int) -> str:
        return self._key("queue", queue, BANDS[band_index])

    def _do(self, what: str, call: Callable[[], T]) -> T:
        """Run one Redis call (or pipeline), turning redis-py's errors into backend errors."""
        try:
            return call()
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise BackendError(f"{self.url}: {what}: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # TimeoutError is not a ConnectionError in redis-py: both mean "try again", except
            # a server certificate that fails verification, which waiting will not fix
            error = BackendError if _untrusted(exc) else TransientBackendError
            raise error(f"{self.url}: {what}: {type(exc).__name__}: {exc}") from exc
        except (redis.exceptions.OutOfMemoryError, redis.ReadOnlyError) as exc:
            raise TransientBackendError(f"{self.url}: {what}: {exc}") from exc
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith(LEASE_LOST):
                raise LeaseLost(text) from None
            if text.startswith(TRANSIENT_REPLIES):
                raise TransientBackendError(f"{self.url}: {what}: {text}") from exc
            raise BackendError(f"{self.url}: {what}: {text}") from exc
        except redis.RedisError as exc:
            raise BackendError(f"{self.url}: {what}: {type(exc).__name__}: {exc}") from exc

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return self._send(name, keys, args)()

    def _send(
        self, name: str, keys: Sequence[str], args: Sequence[str | int], *, raw: bool = False
    ) -> Callable[[], Any]:
        """Send one script call; the returned function waits for its reply.

        Between the two the caller can work while Redis runs the script; the connection stays
        out of the pool until the reply is read, so each call must be waited for. A `raw` reply
        keeps its strings as bytes, for replies that carry what someone else stored.
        """
        script = SCRIPTS[name]
        pool = self._redis.connection_pool
        connection = self._do(name, pool.get_connection)

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
                return self._do(name, reply)
            finally:
                pool.release(connection)

        try:
            self._do(name, lambda: send("EVALSHA", script.sha))
        except BaseException:  # a backend error, or an argument redis-py cannot encode
            pool.release(connection)
            raise
        return wait

    def _cmd(self, *args: str | int) -> Any:
        """One plain command, parsed by redis-py's reply callbacks (HGETALL gives a dict)."""
        call = self._redis.execute_command
        return self._do(str(args[0]).lower(), lambda: call(*args))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._stop_waiting()
        self._redis.close()

    def ping(self) -> None:
        self._cmd("PING")

    def server_time(self) -> float:
        """Redis's clock, in seconds since the epoch (for the scheduler's clock-skew check)."""
        seconds, micros = self._cmd("TIME")
        return int(seconds) + int(micros) / 1_000_000

    def persistence_warnings(self) -> list[str]:
        """What in Redis's configuration breaks beatd's guarantees: what, consequence, fix."""
        try:
            config: dict[str, str] = {}
            for name in ("appendonly", "save", "maxmemory-policy"):
                config.update(self._cmd("CONFIG GET", name))
        except TransientBackendError:
            raise
        except BackendError as exc:  # CONFIG renamed, disabled or not allowed for this user
            return [
                f"cannot check the persistence settings of Redis at {self.url}: CONFIG GET "
                f"failed ({exc.__cause__ or exc}); beatd's guarantees need appendonly yes and "
                "maxmemory-policy noeviction: check them by hand, or allow beatd's user "
                "CONFIG GET (+config|get)"
            ]
        return _warnings(self.url, config)

    def identity(self) -> StoreIdentity:
        """The server's run id ('' when INFO is not allowed), and whether beatd's format marker
        and epoch are there."""

        def call() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.info("server")
                pipe.exists(self._key("format"))
                pipe.get(self._key("epoch"))
                replies: list[Any] = pipe.execute(raise_on_error=False)
            for reply in replies[1:]:  # only INFO may be refused
                if isinstance(reply, Exception):
                    raise reply
            return replies

        info, marked, epoch = self._do("identity", call)
        run_id = "" if isinstance(info, Exception) else str(info.get("run_id", ""))
        return StoreIdentity(run_id, self._key("format"), bool(marked), int(epoch or 0))

    # --- leadership -----------------------------------------------------------------------

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        keys = (self._key("lease"), self._key("epoch"), self._key("format"))
        token = secrets.token_hex(16)
        mine = (held.token, held.epoch) if held is not None else ("", "")
        reply = self._eval("acquire", keys, (node, token, _ms(ttl), config_hash, *mine, min_epoch))
        if reply is None:
            return None
        return Lease(node, reply[0], int(reply[1]))

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        args = (lease.token, lease.epoch, _ms(ttl))
        return bool(self._eval("renew", (self._key("lease"),), args))

    def release_lease(self, lease: Lease) -> None:
        self._eval("release", (self._key("lease"),), (lease.token,))

    def leader(self) -> LeaderInfo | None:
        def call() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key("lease"))
                pipe.pttl(self._key("lease"))
                return pipe.execute()

        held, pttl = self._do("leader", call)
        if not held or pttl <= 0:
            return None
        return LeaderInfo(held["node"], int(held["epoch"]), pttl / 1000, held.get("config", ""))

    # --- run state ------------------------------------------------------------------------

    def load_states(self) -> dict[str, EntryState]:
        raw: dict[str, str] = self._cmd("HGETALL", self._key("state"))
        return {entry: _unpack_state(entry, value) for entry, value in raw.items()}

    def commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> set[str]:
        return self.send_commit(lease, writes, messages)()

    def send_commit(
        self, lease: Lease, writes: Sequence[StateWrite], messages: Sequence[Outgoing]
    ) -> Callable[[], set[str]]:
        keys = [self._key("lease"), self._key("state"), self._key("queues")]
        flat_writes: list[str] = []
        for write in writes:
            expected = "" if write.expected is None else f"[{to_micros(write.expected)},"
            flat_writes += (write.state.entry, expected, _pack_state(write.state))
        # streams first, then Celery's lists: the script tells them apart by position
        targets = [self._target(m) for m in messages]
        streams = sorted({key for key, is_list in targets if not is_list})
        lists = sorted({key for key, is_list in targets if is_list})
        keys += streams + lists
        index = {key: k for k, key in enumerate(keys, 1)}
        flat_messages: list[str | int] = []
        for m, (key, _) in zip(messages, targets, strict=True):
            flat_messages += (index[key], m.entry, m.id)
        bodies = RECORD_SEPARATOR.join(m.body for m in messages)
        if bodies.count(RECORD_SEPARATOR) != max(0, len(messages) - 1):
            raise BackendError("a message body holds U+001E: bodies are JSON, which never does")
        queues = sorted({m.queue for m in messages if m.protocol != "celery"})
        flat = (_json(queues), _json(flat_writes), _json(flat_messages), len(streams), bodies)
        wait = self._send_fenced("commit", lease, keys, (lease.token, lease.epoch, *flat))
        return lambda: set(wait())

    def _target(self, message: Outgoing) -> tuple[str, bool]:
        """The key a message goes to, and whether it is a Celery list (not a beatd stream)."""
        route = (message.queue, message.priority, message.protocol)
        target = self._targets.get(route)
        if target is None:
            if message.protocol == "celery":
                target = celery_protocol.list_name(message.queue, message.priority), True
            else:
                target = self._stream(message.queue, band(message.priority)), False
            self._targets[route] = target
        return target

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        keys = (self._key("lease"), self._key("state"))
        self._fenced("forget", lease, keys, (lease.token, lease.epoch, *entries))

    def _fenced(
        self, name: str, lease: Lease, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        return self._send_fenced(name, lease, keys, args)()

    def _send_fenced(
        self, name: str, lease: Lease, keys: Sequence[str], args: Sequence[str | int]
    ) -> Callable[[], Any]:
        """Send a script that refuses to write unless `lease` (token and epoch) still holds."""
        wait = self._send(name, keys, args)

        def fenced() -> Any:
            try:
                return wait()
            except LeaseLost as exc:
                holder = str(exc).removeprefix(LEASE_LOST + " ")
                raise LeaseLost(
                    f"lease epoch {lease.epoch} of {lease.node} is no longer held ({holder})"
                ) from None

        return fenced

    # --- queues ---------------------------------------------------------------------------

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        if not messages:
            return
        keys = [self._key("queues")]
        index: dict[str, int] = {}
        queues = sorted({m.queue for m in messages})
        delay_ms = _ms(delay) if delay > 0 else 0
        args: list[str | int] = [delay_ms, len(queues), *queues]
        for m in messages:
            b = band(m.priority)
            key = self._key("delayed", m.queue) if delay_ms else self._stream(m.queue, b)
            k = index.get(key)
            if k is None:
                keys.append(key)
                k = index[key] = len(keys)
            args += (k, m.id, _delayed_member(b, m.id, m.body) if delay_ms else m.body)
        self._eval("enqueue", keys, args)

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        names = list(dict.fromkeys(queues))
        if not names:
            return None
        n = len(names)
        keys = [self._key("delayed", q) for q in names]
        keys += [self._stream(q, b) for b in range(len(BANDS)) for q in names]
        keys.append(self._key("dead"))
        args: list[str | int] = [consumer, _idle_for(visibility), n, RECLAIM_IDLE_MS, *names]
        # the claim is made whatever the entry holds; what cannot be read is said in the
        # delivery, so the worker dead-letters it (an exception here would leave it claimed)
        reply = self._send("claim", keys, args, raw=True)()
        if isinstance(reply, int):  # nothing ready: when the soonest delayed retry will be
            self._delayed_at = None if reply < 0 else time.monotonic() + reply / 1000
            return None
        k, entry_id, raw_id, raw_body, deliveries, count = reply
        b, i = divmod(k - 1 - n, n)
        receipt = f"{b}/{entry_id.decode()}/{count}/{consumer}"
        message_id, id_fault = _field_text(raw_id, "id")
        body, body_fault = _field_text(raw_body, "body")
        unreadable = id_fault or body_fault
        return Delivery(message_id, names[i], body, int(deliveries), receipt, unreadable)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until a run is added to one of `queues` or a delayed retry is ready: True, claim
        now; False after `timeout` (at most 3/4 of the operation timeout, so a hung Redis costs
        no more than a call does). Waiting sends Redis nothing: every script that adds a run
        publishes on its stream's channel, and this connection stays subscribed."""
        channels = sorted({self._stream(q, b) for q in queues for b in range(len(BANDS))})
        if self._pubsub is None or channels != self._channels:
            self._stop_waiting()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._do("subscribe", lambda: pubsub.subscribe(*channels))
            self._pubsub, self._channels = pubsub, channels
            return True  # whatever was added before the subscription: claim once
        pubsub, due = self._pubsub, self._delayed_at
        deadline = time.monotonic() + min(timeout, self.op_timeout * 0.75)
        if due is not None:
            deadline = min(deadline, due)
        try:
            while (left := deadline - time.monotonic()) > 0:  # past subscribe confirmations
                if self._do("wait", lambda: pubsub.get_message(timeout=left)) is not None:
                    return True
        except BackendError as exc:
            self._stop_waiting()  # subscribe again on the next call
            if isinstance(exc.__cause__, redis.exceptions.NoPermissionError):
                raise BackendError(self._subscribe_refused(channels, exc.__cause__)) from exc
            raise
        if due is not None and time.monotonic() >= due:
            self._delayed_at = None
            return True
        return False

    def _subscribe_refused(self, channels: Sequence[str], exc: Exception) -> str:
        return (
            f"{self.url}: SUBSCRIBE to {', '.join(channels)} refused ({exc}): idle workers are "
            f"not woken when a run is added and claim it only after their visibility timeout; "
            f"grant the channels to beatd's ACL user: add &{self.namespace}:queue:* to its ACL "
            f"SETUSER line (docs/redis.md)"
        )

    def _stop_waiting(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def _claimed(self, delivery: Delivery) -> tuple[str, int, list[str | int]]:
        """The stream, band and (entry id, consumer, count) that a receipt names."""
        b, entry_id, count, consumer = delivery.receipt.split("/", 3)
        return self._stream(delivery.queue, int(b)), int(b), [entry_id, consumer, int(count)]

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        stream, _, claim = self._claimed(delivery)
        return bool(self._eval("extend", (stream,), (*claim, _idle_for(visibility))))

    def ack(self, delivery: Delivery) -> None:
        stream, _, claim = self._claimed(delivery)
        self._eval("ack", (stream,), claim)

    def release(self, delivery: Delivery) -> None:
        stream, _, claim = self._claimed(delivery)
        self._eval("release_claim", (stream,), claim)

    def retry(self, delivery: Delivery, body: str, delay: float) -> None:
        stream, b, claim = self._claimed(delivery)
        keys = (stream, self._key("delayed", delivery.queue))
        member = _delayed_member(b, delivery.id, body)
        self._eval("retry", keys, (*claim, _ms(delay) if delay > 0 else 0, member))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        stream, b, claim = self._claimed(delivery)
        keys = (stream, self._key("dead"))
        self._eval("dead_letter", keys, (*claim, delivery.queue, b, reason, delivery.deliveries))

    def _dead_raw(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The dead letters' stream entries, bytes as stored."""
        key = self._key("dead")
        call = self._redis.execute_command
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self._do(
            "xrange",
            lambda: call("XRANGE", key, "-", "+", NEVER_DECODE=True),  # type: ignore[no-untyped-call]
        )
        return entries

    def _dead(self) -> list[tuple[str, dict[str, str]]]:
        """The dead letters, their bytes shown as text even where they are not UTF-8."""
        return [
            (
                entry_id.decode(),
                {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
            )
            for entry_id, fields in self._dead_raw()
        ]

    def dead_letters(self) -> list[DeadLetter]:
        return [
            DeadLetter(
                f["id"],
                f["queue"],
                f["body"],
                f["reason"],
                datetime.fromtimestamp(int(f["failed_at"]) / 1000, UTC),
                int(f["deliveries"]),
            )
            for _, f in self._dead()
        ]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters as they are, in the normal band (migration from another backend).
        Read, then written: run it while nothing else writes dead letters, as migrate does."""
        # ids compared exactly: text that is not UTF-8 carries its bytes as surrogates (as the
        # SQLite backend reads them), so it is decoded here the same way, never replaced
        held = {f.get(b"id", b"").decode("utf-8", "surrogateescape") for _, f in self._dead_raw()}
        new = unseen(letters, held)

        def call() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                for d in new:
                    fields = {
                        "id": _raw(d.id),
                        "queue": _raw(d.queue),
                        "band": 1,
                        "body": _raw(d.body),
                        "reason": _raw(d.reason),
                        "deliveries": d.deliveries,
                        "failed_at": round(d.failed_at.timestamp() * 1000),
                    }
                    pipe.xadd(self._key("dead"), fields)  # type: ignore[arg-type]
                pipe.execute()

        if new:
            self._do("add dead letters", call)
        return len(new)

    def requeue_dead(self, message_id: str | None) -> int:
        keys = [self._key("dead"), self._key("queues")]
        index: dict[str, int] = {}
        args: list[str | int] = []
        for entry_id, f in self._dead():
            if message_id is not None and f["id"] != message_id:
                continue
            key = self._stream(f["queue"], int(f["band"]))
            k = index.get(key)
            if k is None:
                keys.append(key)
                k = index[key] = len(keys)
            args += (entry_id, k, f["queue"])
        if not args:
            return 0
        return int(self._eval("requeue", keys, args))

    def queue_depths(self) -> dict[str, int]:
        queues = sorted(self._cmd("SMEMBERS", self._key("queues")))

        def call() -> list[int]:
            with self._redis.pipeline(transaction=False) as pipe:
                for q in queues:
                    for b in range(len(BANDS)):
                        pipe.xlen(self._stream(q, b))
                    pipe.zcard(self._key("delayed", q))
                return pipe.execute()

        counts = self._do("queue depths", call) if queues else []
        width = len(BANDS) + 1
        depths = {q: sum(counts[i * width : (i + 1) * width]) for i, q in enumerate(queues)}
        return {q: depth for q, depth in depths.items() if depth}


def _field_text(value: bytes | None, name: str) -> tuple[str, str]:
    """A queue entry's field as text, and why it cannot be read ('' when it can)."""
    if value is None:
        return "", f"the queue entry has no {name} field"
    fault = utf8_fault(value, name)
    return value.decode(errors="replace" if fault else "strict"), fault


def _raw(text: str) -> bytes:
    """Text as the bytes it was read from: a letter that is not UTF-8 keeps its bytes as
    surrogates (see the SQLite backend), which redis-py would refuse to encode."""
    return text.encode("utf-8", "surrogateescape")


def _untrusted(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _idle_for(visibility: float) -> int:
    """The idle time to give a fresh claim so that it lapses after `visibility` seconds."""
    ms = _ms(visibility)
    if ms > RECLAIM_IDLE_MS:
        raise BackendError(
            f"visibility {visibility} s is longer than the Redis backend's limit of "
            f"{RECLAIM_IDLE_MS // 1000} s: use a shorter visibility and extend the claim"
        )
    return RECLAIM_IDLE_MS - ms


def _delayed_member(band_index: int, message_id: str, body: str) -> str:
    """A delayed zset member: unique (a nonce) even when the same run is retried twice."""
    return _json([band_index, message_id, body, secrets.token_hex(8)])


def _warnings(url: str, config: dict[str, str]) -> list[str]:
    warnings = []
    save = config.get("save", "")
    if config.get("appendonly") != "yes":
        if not save:
            warnings.append(
                f"Redis at {url} does not persist anything (appendonly no, save ''): a Redis "
                "restart loses every entry's last published slot, every queued run and every "
                "dead letter (beatd notices, keeps the fencing epoch rising and restores the "
                "positions a node still holds; the queued runs never run); enable AOF "
                "(appendonly yes in redis.conf, or CONFIG SET appendonly yes)"
            )
        else:
            warnings.append(
                f"Redis at {url} persists only RDB snapshots (appendonly no, save '{save}'): "
                "a crash loses every write since the last snapshot, so the fencing epoch and "
                "the run state go back in time and runs already published can be published "
                "again; enable AOF (appendonly yes in redis.conf, or CONFIG SET appendonly yes)"
            )
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis at {url} evicts keys when memory is full (maxmemory-policy {policy}): the "
            "lease, the run state or queued runs can vanish without an error, so runs can be "
            "skipped or repeated; set maxmemory-policy noeviction (in redis.conf, or CONFIG SET)"
        )
    return warnings
