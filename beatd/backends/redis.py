"""Redis: the lease, the run state and the queues of several hosts in one Redis (7.0 or later).

Every write that must be atomic is one Lua script, and every script checks what it guards in
the same step: the lease token and epoch before a commit, the claimant before an ack. Times
(lease expiry, retry delays, claim deadlines) are Redis's clock (`TIME`, `PEXPIRE`), never a
client's. Every call is bounded: one attempt, no client-side retries, socket timeouts of
`op_timeout`, so a hung Redis costs a caller about `op_timeout`, then OutcomeUnknown (the
request was sent: the server may still execute it) or NotApplied (the connection was refused,
the request could not be sent, or the server refused it: LOADING, BUSY, OOM, READONLY...).

Keys (`beatd` is the namespace; docs/redis.md has the full table):
  beatd:lease             hash    node, token, epoch, config; expires with the lease (PEXPIRE)
  beatd:epoch             string  the fencing epoch, raised on every fresh take of the lease
  beatd:format            string  "1": beatd's data is here (gone: Redis lost it; see identity);
                                  beatd before format versions writes it too
  beatd:format-version    string  the persisted-state format, "3" (FORMAT), which no beatd
                                  before format versions writes (redis_scripts.MIGRATIONS)
  beatd:state             hash    entry -> JSON [last_slot_us, last_published_us, identity]
  beatd:queues            set     every queue name ever written to
  beatd:queue:Q:BAND      stream  undone runs of queue Q in priority band high/normal/low,
                                  consumer group `workers`; acknowledged entries are deleted
  beatd:delayed:Q         zset    retries of queue Q waiting, scored by ready time (ms)
  beatd:dead              stream  dead letters with reason, deliveries, failed_at
  beatd:dead-count        hash    queue -> its dead letters, kept beside them (redis_queue.py)
  beatd:h:*               the run history (redis_history.py has its keys)
  beatd:ctl:*             the operator controls (redis_controls.py has their keys)
  Q, Q\x06\x16{3,6,9}      list    runs of a CeleryQueue Q (`protocol: celery`), in kombu's layout
                                  and outside the namespace (see beatd.celery_protocol)

The backend is its parts, one per role, sharing one connection (`RedisLink`, redis_link.py):
`RedisLeaseStore` and `RedisStateStore` here, `RedisWorkQueue` and `RedisQueueAdmin` in
redis_queue.py (with how a claim lapses), `RedisCeleryEvents` in redis_events.py. Behind
Sentinel (`redis+sentinel://`) the connection follows the primary (redis_sentinel.py), and each
commit and take of the lease WAITs for the replicas (redis_replication.py).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring as _string
from typing import Any

from beatd import celery_protocol
from beatd.backends.base import (
    BeatdQueue,
    CeleryQueue,
    Destination,
    LeaderInfo,
    Lease,
    Outgoing,
    StateWrite,
    StoreIdentity,
    from_micros,
    is_celery_run,
    to_micros,
)
from beatd.backends.redis_controls import RedisControls, commit_controls
from beatd.backends.redis_entries import RedisEntries
from beatd.backends.redis_events import RedisCeleryEvents
from beatd.backends.redis_history import RedisRunHistory, published_p
from beatd.backends.redis_link import BANDS, RedisLink, _ms, band, redact
from beatd.backends.redis_nodes import RedisNodes
from beatd.backends.redis_queue import RECLAIM_IDLE_MS, RedisQueueAdmin, RedisWorkQueue, _json
from beatd.backends.redis_scripts import FORMAT_VERSION, SCRIPTS
from beatd.errors import BackendError, NotApplied, OutcomeUnknown
from beatd.state import EntryState

__all__ = ["BANDS", "RECLAIM_IDLE_MS", "SCRIPTS", "RedisBackend", "band", "redact"]

log = logging.getLogger(__name__)
RECORD_SEPARATOR = "\x1e"  # between the bodies of a commit (see redis_scripts.COMMIT)
# states per HSCAN call of load_states: about 10 ms of Redis and 1 MiB of reply each
STATE_PAGE = 10_000


def _pack_state(state: EntryState) -> str:
    published = "null" if state.last_published is None else str(to_micros(state.last_published))
    return f"[{to_micros(state.last_slot)},{published},{_string(state.identity)}]"


def _unpack_state(entry: str, value: str) -> EntryState:
    slot, published, identity = json.loads(value)
    return EntryState(
        entry, from_micros(slot), None if published is None else from_micros(published), identity
    )


class RedisLeaseStore(RedisLink):
    """The lease hash and the fencing epoch; also the server's identity, for data loss."""

    def server_time(self) -> float:
        """Redis's clock, in seconds since the epoch (for the scheduler's clock-skew check)."""
        seconds, micros = self._cmd("TIME")
        return int(seconds) + int(micros) / 1_000_000

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

    def acquire_lease(
        self,
        node: str,
        ttl: float,
        config_hash: str = "",
        *,
        held: Lease | None = None,
        min_epoch: int = 0,
    ) -> Lease | None:
        keys = tuple(self._key(k) for k in ("lease", "epoch", "format", "format-version"))
        token = secrets.token_hex(16)
        mine = (held.token, held.epoch) if held is not None else ("", "")
        prefix = self._key("")
        args = (node, token, _ms(ttl), config_hash, *mine, min_epoch, prefix)
        reply = self._send("acquire", keys, args, replicated=True)()
        if reply is None:
            return None
        if len(reply) > 2 and int(reply[2]) < FORMAT_VERSION:  # upgraded under this fresh take
            log.info(
                "upgraded the persisted state of %s (namespace %s) from format %s to %d",
                self.url,
                self.namespace,
                reply[2],
                FORMAT_VERSION,
            )
        return Lease(node, reply[0], int(reply[1]))

    def renew_lease(self, lease: Lease, ttl: float) -> bool:
        args = (lease.token, lease.epoch, _ms(ttl))
        return bool(self._eval("renew", (self._key("lease"),), args))

    def release_lease(self, lease: Lease) -> None:
        self._eval("release", (self._key("lease"),), (lease.token,))

    def leader(self) -> LeaderInfo | None:
        self._check_format("leader")

        def call() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key("lease"))
                pipe.pttl(self._key("lease"))
                return pipe.execute()

        held, pttl = self._do("leader", call)
        if not held or pttl <= 0:
            return None
        return LeaderInfo(held["node"], int(held["epoch"]), pttl / 1000, held.get("config", ""))


class RedisStateStore(RedisLink):
    """The state hash, advanced with the runs' messages by one fenced script."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "beatd",
        op_timeout: float = 2.0,
        history: bool = True,
        wait_replicas: int | None = None,
    ) -> None:
        super().__init__(
            url,
            namespace=namespace,
            op_timeout=op_timeout,
            history=history,
            wait_replicas=wait_replicas,
        )
        # by (kind, queue, priority): hashing a dataclass costs a Python call per message
        self._targets: dict[tuple[type[Destination], str, int | None], tuple[str, bool]] = {}
        self._hscan_refused = False  # said once: the ACL line before +hscan

    def accepts(self, kind: type[Destination]) -> bool:
        return kind in (BeatdQueue, CeleryQueue)

    def load_states(self, pace: Callable[[], None] | None = None) -> dict[str, EntryState]:
        """Every state, read by HSCAN in pages of about STATE_PAGE: one HGETALL of 1,000,000
        states held Redis past the per-call limit. A state present throughout the scan is read
        (maybe twice: the dict keeps one); the leader reads under its lease, which fences every
        other state write, so nothing moves under its scan."""
        self._check_format("hscan")
        key, cursor = self._key("state"), 0
        states: dict[str, EntryState] = {}
        while True:
            if (scanned := self._hscan(key, cursor, STATE_PAGE)) is None:
                return self._load_states_whole(key)
            cursor, raw = scanned
            for entry, value in raw.items():
                states[entry] = _unpack_state(entry, value)
            if not cursor:
                return states
            if pace is not None:
                pace()

    def states_of(self, names: Sequence[str]) -> dict[str, EntryState]:
        """HMGET of STATE_PAGE names a call."""
        self._check_format("hmget")
        key, asked = self._key("state"), list(dict.fromkeys(names))
        states: dict[str, EntryState] = {}
        for i in range(0, len(asked), STATE_PAGE):
            chunk = asked[i : i + STATE_PAGE]
            for entry, value in zip(chunk, self._cmd("HMGET", key, *chunk), strict=True):
                if value is not None:
                    states[entry] = _unpack_state(entry, value)
        return states

    def state_page(self, cursor: str, limit: int) -> tuple[dict[str, EntryState], str]:
        """One HSCAN from `cursor` (Redis's own, as text); the whole hash in one read for a user
        without +hscan (`load_states` says so in the log)."""
        self._check_format("hscan")
        key = self._key("state")
        if (scanned := self._hscan(key, int(cursor or 0), limit)) is None:
            return self._load_states_whole(key), ""
        at, raw = scanned
        page = {entry: _unpack_state(entry, value) for entry, value in raw.items()}
        return page, (str(at) if at else "")

    def _load_states_whole(self, key: str) -> dict[str, EntryState]:
        """The states in one HGETALL, for a user left on the ACL line before +hscan."""
        if not self._hscan_refused:
            self._hscan_refused = True
            log.warning(
                "Redis at %s refuses HSCAN to beatd's user: the entries' states are read in one "
                "HGETALL, which with a great many entries can outlast the per-call limit (a "
                "leader then cannot adopt); add +hscan to the user's ACL (docs/redis.md)",
                self.url,
            )
        raw: dict[str, str] = self._cmd("HGETALL", key)
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
        queues = sorted(
            {m.destination.queue for m in messages if type(m.destination) is BeatdQueue}
        )
        flat = (_json(queues), _json(flat_writes), _json(flat_messages), len(streams), bodies)
        celery = [is_celery_run(m.destination) for m in messages]
        history = self._commit_history(lease, writes, messages, celery)
        controls = commit_controls(self._key(""), bool(self._history), writes, messages)
        args = (lease.token, lease.epoch, *flat, *history, *controls)
        wait = self._send_fenced("commit", lease, keys, args, replicated=True)
        return lambda: set(wait())

    def _commit_history(
        self,
        lease: Lease,
        writes: Sequence[StateWrite],
        messages: Sequence[Outgoing],
        celery: Sequence[bool],
    ) -> tuple[str, str, str, str]:
        """The commit script's history arguments (see redis_scripts.COMMIT); `celery` says for
        each message whether it is a Celery task (`is_celery_run`)."""
        if not self._history:
            return "", "", "", ""
        epoch = lease.epoch
        published = [published_p(m, c, epoch) for m, c in zip(messages, celery, strict=True)]
        missed: list[str | int] = []
        for write in writes:
            for m in write.missed:
                missed += (m.entry, m.reason, str(to_micros(m.first)), str(to_micros(m.last)))
                missed.append(str(m.total))
        return self._history, lease.node, _json(published), _json(missed)

    def _target(self, message: Outgoing) -> tuple[str, bool]:
        """The key a message goes to, and whether it is a Celery list (not a beatd stream)."""
        destination = message.destination
        route = (type(destination), destination.queue, destination.priority)
        target = self._targets.get(route)
        if target is None:
            if isinstance(destination, CeleryQueue):
                target = celery_protocol.list_name(destination.queue, destination.priority), True
            else:
                target = self._stream(destination.queue, band(destination.priority)), False
            self._targets[route] = target
        return target

    def forget(self, lease: Lease, entries: Sequence[str]) -> None:
        keys = (self._key("lease"), self._key("state"))
        self._fenced("forget", lease, keys, (lease.token, lease.epoch, *entries))


class RedisBackend(
    RedisLeaseStore,
    RedisStateStore,
    RedisWorkQueue,
    RedisQueueAdmin,
    RedisRunHistory,
    RedisControls,
    RedisEntries,
    RedisNodes,
    RedisCeleryEvents,
):
    """Every role, on one connection pool (see the module doc), and Celery's task events on a
    connection of their own (redis_events.py)."""

    def persistence_warnings(self) -> list[str]:
        """What in Redis's configuration breaks beatd's guarantees: what, consequence, fix."""
        try:
            config: dict[str, str] = {}
            for name in ("appendonly", "save", "maxmemory-policy"):
                config.update(self._cmd("CONFIG GET", name))
        except (NotApplied, OutcomeUnknown):
            raise
        except BackendError as exc:  # CONFIG renamed, disabled or not allowed for this user
            return [
                f"cannot check the persistence settings of Redis at {self.url}: CONFIG GET "
                f"failed ({exc.__cause__ or exc}); beatd's guarantees need appendonly yes and "
                "maxmemory-policy noeviction: check them by hand, or allow beatd's user "
                "CONFIG GET (+config|get)"
            ]
        return _warnings(self.url, config)


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
