"""Redis's work queues and their administration (beatd.backends.redis has the key layout).

A claim's deadline lives in the stream's pending list: a claim made with visibility V sets the
entry's delivery time back by RECLAIM_IDLE - V (XCLAIM ... IDLE), so `XAUTOCLAIM` with min-idle
RECLAIM_IDLE takes over exactly the claims whose own visibility lapsed, whatever each claimant
chose. The delivery count of the pending entry is the claim's generation: the receipt carries
it, so a worker whose claim was taken over (the count moved on) can no longer ack or extend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import redis
from redis.client import PubSub

from beatd.backends.base import (
    DeadLetter,
    Delivery,
    Outgoing,
    ack_ends_run,
    unseen,
    utf8_fault,
)
from beatd.backends.redis_history_log_lua import FOLD_BATCH
from beatd.backends.redis_link import BANDS, RedisLink, _ms, band
from beatd.backends.redis_scripts import GROUP
from beatd.errors import BackendError, NotApplied, OutcomeUnknown
from beatd.history import Ending
from beatd.outcomes import Outcome

log = logging.getLogger(__name__)

# An idle waiting connection PINGs after hearing nothing for this many block periods: a little
# over one, so an idle worker sends fewer than one command per block period.
PING_AFTER_SILENCE = 7 / 6
HOST = socket.gethostname()  # a claimant's, in the attempts the run history records
RECLAIM_IDLE_MS = 86_400_000  # a claim lapses when its pending entry is this idle (see above)
# Workers fold the attempts they log, off the leader's path (a leader that folded 15 s of a busy
# worker's runs in its step would hold its publishing up for a second): after every FOLD_EVERY
# log records of its own, a claim folds a batch if the attempts' log holds more than a batch
# (FOLD_BOUND elements), so a fold takes about 1,000 records at a time and the leader's reads
# find at most about that much
FOLD_EVERY = FOLD_BATCH // 2
FOLD_BOUND = 7 * FOLD_BATCH
# UTF-8 as is: Redis's cjson copies it through; only quotes, backslashes, controls escaped
_json: Callable[[Sequence[str | int]], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


class RedisWorkQueue(RedisLink):
    """beatd's queues: a stream per queue and priority band, a zset of delayed retries."""

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
        self._pubsub: PubSub | None = None  # the idle worker's wake-ups (see wait_for_work)
        self._channels: list[str] = []
        self._delayed_at: float | None = None  # monotonic: a delayed retry is ready
        self._heard_at = 0.0  # monotonic: the waiting connection last heard from Redis
        self._unanswered: OutcomeUnknown | None = None  # what the waiting connection's PING met
        self._logged = 0  # history log records this handle appended since its claim last folded

    def enqueue(self, messages: Sequence[Outgoing], delay: float = 0.0) -> None:
        if not messages:
            return
        keys = [self._key("queues")]
        index: dict[str, int] = {}
        queues = sorted({m.destination.queue for m in messages})
        delay_ms = _ms(delay) if delay > 0 else 0
        args: list[str | int] = [delay_ms, len(queues), *queues]
        for m in messages:
            queue, b = m.destination.queue, band(m.destination.priority)
            key = self._key("delayed", queue) if delay_ms else self._stream(queue, b)
            k = index.get(key)
            if k is None:
                keys.append(key)
                k = index[key] = len(keys)
            args += (k, m.id, _delayed_member(b, m.id, m.body) if delay_ms else m.body)
        self._eval("enqueue", keys, args)

    def claim(self, queues: Sequence[str], consumer: str, visibility: float) -> Delivery | None:
        self._check_format("claim")
        if self._unanswered is not None:  # the same server, just found frozen: no second wait
            unanswered, self._unanswered = self._unanswered, None
            raise NotApplied(str(unanswered)) from unanswered.__cause__
        names = list(dict.fromkeys(queues))
        if not names:
            return None
        n = len(names)
        keys = [self._key("delayed", q) for q in names]
        keys += [self._stream(q, b) for b in range(len(BANDS)) for q in names]
        keys += (self._key("dead"), self._key("dead-count"))
        args: list[str | int] = [consumer, _idle_for(visibility), n, RECLAIM_IDLE_MS, *names]
        fold = self._history != "" and self._logged >= FOLD_EVERY
        if fold:
            self._logged = 0
        args += (self._history, HOST, str(os.getpid()), FOLD_BOUND if fold else 0)
        # the claim is made whatever the entry holds; what cannot be read is said in the
        # delivery, so the worker dead-letters it (an exception here would leave it claimed)
        reply = self._send("claim", keys, args, raw=True)()
        if isinstance(reply, int):  # nothing ready: when the soonest delayed retry will be
            self._delayed_at = None if reply < 0 else time.monotonic() + reply / 1000
            return None
        k, entry_id, raw_id, raw_body, deliveries, count = reply
        self._logged += 1
        b, i = divmod(k - 1 - n, n)
        receipt = f"{b}/{entry_id.decode()}/{count}/{consumer}"
        message_id, id_fault = _field_text(raw_id, "id")
        body, body_fault = _field_text(raw_body, "body")
        unreadable = id_fault or body_fault
        return Delivery(message_id, names[i], body, int(deliveries), receipt, unreadable)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until a run is added to one of `queues` or a delayed retry is ready: True, claim
        now; False after `timeout` (at most 3/4 of the operation timeout, so a hung Redis costs
        no more than a call does). Every script that adds a run publishes on its stream's
        channel, and this connection stays subscribed; once it has heard nothing for a little
        over a block period it sends a PING, so a frozen or dead server is noticed within about
        a block period plus the operation timeout. Then it returns True and the next `claim`
        fails at once with what the PING met: the caller reports the outage now, not after
        another operation timeout."""
        channels = sorted({self._stream(q, b) for q in queues for b in range(len(BANDS))})
        if self._pubsub is None or channels != self._channels:
            self._stop_waiting()
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._do("subscribe", lambda: pubsub.subscribe(*channels))
            self._pubsub, self._channels = pubsub, channels
            self._heard_at = time.monotonic()
            return True  # whatever was added before the subscription: claim once
        period = min(timeout, self.op_timeout * 0.75)
        deadline = time.monotonic() + period
        due = self._delayed_at
        if due is not None:
            deadline = min(deadline, due)
        try:
            if self._listen(self._pubsub, deadline, period * PING_AFTER_SILENCE):
                return True
        except BackendError as exc:
            self._stop_waiting()  # subscribe again on the next call
            if isinstance(exc.__cause__, redis.exceptions.NoPermissionError):
                raise BackendError(self._subscribe_refused(self._channels, exc.__cause__)) from exc
            if self._unanswered is None:
                raise
            return True  # the claim says at once what the PING met
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

    def _listen(self, pubsub: PubSub, deadline: float, silence: float) -> bool:
        """Whether a run was published before `deadline`; PINGs after `silence` seconds of
        hearing nothing, and reads until its PONG (OutcomeUnknown when none comes within the
        operation timeout: the socket's)."""
        while (now := time.monotonic()) < deadline:
            ping_at = self._heard_at + silence
            if now >= ping_at:
                self._do("ping", pubsub.ping, unsent=True)
                if self._read_until_pong(pubsub):
                    return True
                continue
            wait = min(deadline, ping_at) - now
            if self._do("wait", partial(pubsub.get_message, timeout=wait)) is not None:
                self._heard_at = time.monotonic()
                return True
        return False

    def _read_until_pong(self, pubsub: PubSub) -> bool:
        """Read up to the PONG of the PING just sent, each read bounded by the operation timeout
        (the connection's socket timeout: PubSub's own blocking read has no bound, and redis-py
        before 6 takes no timeout per read); whether a run was published before it."""
        # subscribed, so connected (redis-py types the attribute as always None)
        connection = cast(redis.connection.AbstractConnection, pubsub.connection)
        published = False
        while True:
            try:
                reply = self._do(
                    "wait",
                    partial(connection.read_response, push_request=True),
                )
            except OutcomeUnknown as exc:
                self._unanswered = exc  # the PING met a frozen or dead server
                raise
            kind = reply[0] if isinstance(reply, list) and reply else None
            if kind == "pong":
                self._heard_at = time.monotonic()
                return published
            published = published or kind == "message"

    def _stop_waiting(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def close(self) -> None:
        self._stop_waiting()
        super().close()

    def _claimed(self, delivery: Delivery) -> tuple[str, int, list[str | int]]:
        """The stream, band and (entry id, consumer, count) that a receipt names."""
        b, entry_id, count, consumer = delivery.receipt.split("/", 3)
        return self._stream(delivery.queue, int(b)), int(b), [entry_id, consumer, int(count)]

    def extend(self, delivery: Delivery, visibility: float) -> bool:
        stream, _, claim = self._claimed(delivery)
        return bool(self._eval("extend", (stream,), (*claim, _idle_for(visibility))))

    def _ending(
        self, delivery: Delivery, ending: Ending | None, outcome: Outcome
    ) -> list[str | int]:
        """The settling scripts' history arguments (redis_scripts: `settled`)."""
        if not self._history:  # still the run id, which `run_final` reads
            return ["", delivery.id, "", "", "", ""]
        self._logged += 1
        e = ending or Ending(outcome)
        return [self._history, delivery.id, e.outcome.value, e.reason, e.error_type, e.error]

    def ack(self, delivery: Delivery, ending: Ending | None = None) -> None:
        stream, _, claim = self._claimed(delivery)
        history = self._ending(delivery, ending, Outcome.SUCCEEDED)
        controls = self._key("") if ack_ends_run(delivery.queue) else ""  # '': `run_final` skips
        self._eval("ack", (stream,), [*claim, *history, controls])

    def release(self, delivery: Delivery, ending: Ending | None = None) -> None:
        stream, _, claim = self._claimed(delivery)
        history = self._ending(delivery, ending, Outcome.RELEASED)
        self._eval("release_claim", (stream,), claim + history)

    def retry(
        self, delivery: Delivery, body: str, delay: float, ending: Ending | None = None
    ) -> None:
        stream, b, claim = self._claimed(delivery)
        keys = (stream, self._key("delayed", delivery.queue))
        member = _delayed_member(b, delivery.id, body)
        history = self._ending(delivery, ending, Outcome.RETRIED)
        self._eval("retry", keys, (*claim, _ms(delay) if delay > 0 else 0, member, *history))

    def dead_letter(self, delivery: Delivery, reason: str, ending: Ending | None = None) -> None:
        stream, b, claim = self._claimed(delivery)
        keys = (stream, self._key("dead"), self._key("dead-count"))
        history = self._ending(delivery, ending, Outcome.DEAD_LETTERED)
        args = (*claim, delivery.queue, b, reason, delivery.deliveries, *history, self._key(""))
        self._eval("dead_letter", keys, args)

    def note_ending(self, delivery: Delivery, ending: Ending) -> None:
        if not self._history:
            return
        stream, _, claim = self._claimed(delivery)
        self._eval("note_ending", (stream,), claim + self._ending(delivery, ending, ending.outcome))


class RedisQueueAdmin(RedisLink):
    """Dead letters and queue depths, for operators and `beatd migrate`."""

    _miscounted = False  # said once per handle: the dead letters' counts disagree

    def _dead_raw(self, count: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The dead letters' stream entries (the `count` oldest, or all), bytes as stored."""
        key = self._key("dead")
        call = self._redis.execute_command
        limit = () if count is None else ("COUNT", count)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self._do(
            "xrange",
            lambda: call("XRANGE", key, "-", "+", *limit, NEVER_DECODE=True),  # type: ignore[no-untyped-call]
        )
        return entries

    def _dead(self) -> list[tuple[str, dict[str, str]]]:
        """The dead letters, their bytes shown as text even where they are not UTF-8."""
        return _as_text(self._dead_raw())

    def dead_letters(self) -> list[DeadLetter]:
        self._check_format("xrange")
        return _letters(self._dead())

    def count_dead_letters(self) -> int:
        self._check_format("xlen")
        return int(self._cmd("XLEN", self._key("dead")))

    def dead_letter_counts(self) -> dict[str, int]:
        """The hash `dead-count` (queue -> letters), which every script that adds or removes a
        letter keeps in its own step, read with the stream's length in one transaction. Their
        sum is the length unless letters came without their count (a namespace of format 2 not
        yet upgraded, a worker of an older beatd beside this one): then the letters are read
        and counted, as before the counts, until the next fresh take of the lease recounts."""
        self._check_format("hgetall")

        def call() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key("dead-count"))
                pipe.xlen(self._key("dead"))
                return pipe.execute()

        held, length = self._do("count dead letters", call)
        counts = {_text(q): int(n) for q, n in held.items() if int(n) > 0}
        if sum(counts.values()) == int(length):
            return counts
        if held and not self._miscounted:  # none at all: format 2, not yet upgraded
            self._miscounted = True
            log.warning(
                "Redis at %s: the dead letters' counts per queue (%s) add up to %d, but %s holds "
                "%d letters: a worker of an older beatd added or removed letters without "
                "counting them. Status and the metrics scrape read every letter to count them "
                "until the next fresh take of the lease counts them again; upgrade every worker",
                self.url,
                self._key("dead-count"),
                sum(counts.values()),
                self._key("dead"),
                int(length),
            )
        return dict(Counter(letter.queue for letter in _letters(self._dead())))

    def dead_letter_page(self, offset: int, limit: int) -> list[DeadLetter]:
        """XRANGE with COUNT `offset + limit`: a stream has no offset, so the letters skipped
        are read and dropped (bounded by the page asked for, never the whole stream)."""
        self._check_format("xrange")
        if limit <= 0:
            return []
        raw = self._dead_raw(max(0, offset) + limit)[max(0, offset) :]
        return _letters(_as_text(raw))

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Store dead letters as they are, in the normal band (migration from another backend).
        Read, then written: run it while nothing else writes dead letters, as migrate does."""
        # ids compared exactly: text that is not UTF-8 carries its bytes as surrogates (as the
        # SQLite backend reads them), so it is decoded here the same way, never replaced
        held = {f.get(b"id", b"").decode("utf-8", "surrogateescape") for _, f in self._dead_raw()}
        new = unseen(letters, held)
        args: list[str | int | bytes] = []
        for d in new:
            failed_at = round(d.failed_at.timestamp() * 1000)
            args += (_raw(d.id), _raw(d.queue), _raw(d.body), _raw(d.reason), d.deliveries)
            args.append(failed_at)
        if new:
            self._eval("add_dead", (self._key("dead"), self._key("dead-count")), args)
        return len(new)

    def requeue_dead(self, message_id: str | None) -> int:
        keys = [self._key("dead"), self._key("queues"), self._key("dead-count")]
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

    def delete_dead(self, message_id: str | None) -> int:
        """The stream entries holding the letter deleted with their counts (one script: atomic;
        an entry already gone counts nothing, so a repeat deletes nothing)."""
        self._check_format("xrange")
        gone = [e for e, f in self._dead() if message_id is None or f["id"] == message_id]
        if not gone:
            return 0
        return int(self._eval("delete_dead", (self._key("dead"), self._key("dead-count")), gone))

    def oldest_waiting(self) -> dict[str, datetime]:
        """Per stream, the first entry after the group's last delivered one (as the claim
        script finds it): its id's milliseconds are Redis's time at its XADD."""
        self._check_format("smembers")
        queues = sorted(self._cmd("SMEMBERS", self._key("queues")))
        keys = [(q, self._stream(q, b)) for q in queues for b in range(len(BANDS))]

        def groups() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                for _, key in keys:
                    pipe.xinfo_groups(key)
                return pipe.execute(raise_on_error=False)

        found = self._do("xinfo", groups) if keys else []
        lasts = {key: _last_delivered(g) for (_, key), g in zip(keys, found, strict=True)}
        waiting = [(q, key) for q, key in keys if lasts[key] is not None]
        if not waiting:
            return {}

        def heads() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                for _, key in waiting:
                    pipe.xrange(key, f"({lasts[key]}", "+", count=1)
                return pipe.execute()

        oldest: dict[str, int] = {}
        for (queue, _), head in zip(waiting, self._do("xrange", heads), strict=True):
            if head:
                ms = int(_text(head[0][0]).partition("-")[0])
                oldest[queue] = min(ms, oldest.get(queue, ms))
        return {q: datetime.fromtimestamp(ms / 1000, UTC) for q, ms in oldest.items()}

    def queued_as_dead_letters(
        self, reason: str, of_queue: Callable[[str], bool] = lambda queue: True
    ) -> list[DeadLetter]:
        """Every run in the queues `of_queue` takes: its bands' streams (claimed entries stay
        in a stream until acknowledged) and its delayed retries, as dead letters (QueuedReads);
        deliveries as the entry records them (those before its last retry)."""
        self._check_format("smembers")
        queues = [q for q in sorted(self._cmd("SMEMBERS", self._key("queues"))) if of_queue(q)]

        def read() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.time()
                for q in queues:
                    for b in range(len(BANDS)):
                        pipe.xrange(self._stream(q, b))
                    pipe.zrange(self._key("delayed", q), 0, -1)
                return pipe.execute()

        replies = self._do("read queued runs", read)
        seconds, micros = replies[0]
        now = datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC)
        letters: list[DeadLetter] = []
        width = len(BANDS) + 1
        for i, queue in enumerate(queues):
            *streams, delayed = replies[1 + i * width : 1 + (i + 1) * width]
            for entries in streams:
                for _, f in entries:
                    letters.append(
                        DeadLetter(f["id"], queue, f["body"], reason, now, int(f.get("d", 0)))
                    )
            for member in delayed:
                _band, message_id, body, _nonce = json.loads(member)
                letters.append(DeadLetter(message_id, queue, body, reason, now, 0))
        return letters

    def queue_depths(self) -> dict[str, int]:
        self._check_format("smembers")
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


def _last_delivered(groups: Any) -> str | None:
    """The workers group's last delivered id, from XINFO GROUPS (None: no such stream or
    group, nothing was ever queued there)."""
    if not isinstance(groups, list):
        return None  # the pipeline's error for a stream that does not exist
    for group in groups:
        if group.get("name") in (GROUP, GROUP.encode()):
            return _text(group.get("last-delivered-id"))
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _as_text(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[str, dict[str, str]]]:
    """Dead letters' stream entries, their bytes shown as text even where they are not UTF-8."""
    return [
        (
            entry_id.decode(),
            {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
        )
        for entry_id, fields in entries
    ]


def _letters(entries: list[tuple[str, dict[str, str]]]) -> list[DeadLetter]:
    return [
        DeadLetter(
            f["id"],
            f["queue"],
            f["body"],
            f["reason"],
            datetime.fromtimestamp(int(f["failed_at"]) / 1000, UTC),
            int(f["deliveries"]),
        )
        for _, f in entries
    ]
