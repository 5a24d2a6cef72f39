"""Hearing Celery's task events on Redis (`HearsCeleryEvents`): a pattern subscription, on a
connection of its own, to the channels kombu's Redis transport publishes them on
(beatd.celery_events.channel_patterns, for the database of the backend's URL, which must be the
Celery broker's).

The connection reads bytes (what workers publish is theirs: it is decoded by
beatd.celery_events, not by redis-py) and is bounded as every call is: a read waits at most the
caller's timeout, and after `PING_AFTER` seconds of silence a PING must be answered within the
operation timeout, so a server that froze or vanished without closing the connection is noticed.
Any error drops the subscription; the next call subscribes again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
from redis.client import PubSub

from beatd.backends.redis_link import RedisLink
from beatd.celery_events import channel_patterns
from beatd.errors import BackendError, OutcomeUnknown

PING_AFTER = 5.0  # seconds of silence before the subscription asks Redis whether it is there
MAX_BATCH = 1000  # payloads handed back by one call at most


@dataclass(slots=True)
class _Subscription:
    pubsub: PubSub
    heard_at: float  # monotonic: Redis last said something on this connection
    ping_sent_at: float | None = None  # monotonic: a PING is waiting for its PONG


class RedisCeleryEvents(RedisLink):
    """The Celery event subscription of a Redis backend (see the module doc)."""

    _celery: _Subscription | None = None

    @property
    def celery_patterns(self) -> tuple[str, ...]:
        db = int(self._redis.connection_pool.connection_kwargs.get("db") or 0)
        return channel_patterns(db)

    def celery_events(self, timeout: float) -> list[bytes]:
        subscription = self._celery
        if subscription is None:
            subscription = self._celery = self._subscribe_celery()
        try:
            return self._read_celery(subscription, time.monotonic() + timeout)
        except BackendError:
            self.stop_celery_events()
            raise

    def stop_celery_events(self) -> None:
        subscription, self._celery = self._celery, None
        if subscription is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                subscription.pubsub.close()
            with contextlib.suppress(redis.RedisError, OSError):
                subscription.pubsub.connection_pool.disconnect()

    def _subscribe_celery(self) -> _Subscription:
        """PSUBSCRIBE on a bytes connection of its own, confirmed before returning."""
        pool = self._redis.connection_pool
        kwargs = {**pool.connection_kwargs, "decode_responses": False}
        own = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        pubsub = redis.Redis(connection_pool=own).pubsub()
        patterns = self.celery_patterns
        try:
            self._do("psubscribe", lambda: pubsub.psubscribe(*patterns))
            for _ in patterns:  # the confirmations, or the refusal (ACL) in their place
                reply = self._do("psubscribe", partial(pubsub.get_message, timeout=self.op_timeout))
                if reply is None:
                    raise OutcomeUnknown(
                        f"{self.url}: psubscribe: no confirmation within {self.op_timeout} s"
                    )
        except BackendError as exc:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
            own.disconnect()
            if isinstance(exc.__cause__, redis.exceptions.NoPermissionError):
                raise BackendError(self._celery_refused(patterns, exc.__cause__)) from exc
            raise
        return _Subscription(pubsub, time.monotonic())

    def _celery_refused(self, patterns: tuple[str, ...], exc: Exception) -> str:
        allowed = " ".join(f"&{pattern}" for pattern in patterns)
        return (
            f"{self.url}: PSUBSCRIBE to Celery's event channels {', '.join(patterns)} refused "
            f"({exc}): the outcomes of Celery runs are not recorded and their history shows "
            f"them unknown; grant the patterns to beatd's ACL user: add {allowed} to its ACL "
            "SETUSER line (docs/redis.md)"
        )

    def _read_celery(self, subscription: _Subscription, deadline: float) -> list[bytes]:
        """What arrives before `deadline` (returning at the first), then what is already there."""
        found: list[bytes] = []
        while not found:
            now = time.monotonic()
            wait = self._celery_liveness(subscription, now)
            if now >= deadline:
                return found
            self._take(subscription, min(deadline - now, wait), found)
        while len(found) < MAX_BATCH and self._take(subscription, 0.0, found):
            pass
        return found

    def _celery_liveness(self, subscription: _Subscription, now: float) -> float:
        """PING after silence; OutcomeUnknown when a PING went unanswered for the operation
        timeout. How long a read may wait before this must be looked at again."""
        sent = subscription.ping_sent_at
        if sent is not None:
            if now - sent >= self.op_timeout:
                raise OutcomeUnknown(
                    f"{self.url}: celery events: no reply to PING within {self.op_timeout} s"
                )
            return sent + self.op_timeout - now
        if now - subscription.heard_at >= PING_AFTER:
            self._do("ping", subscription.pubsub.ping, unsent=True)
            subscription.ping_sent_at = now
            return self.op_timeout
        return subscription.heard_at + PING_AFTER - now

    def _take(self, subscription: _Subscription, wait: float, found: list[bytes]) -> bool:
        """Read one reply within `wait` seconds; whether there was one."""
        reply: dict[str, Any] | None = self._do(
            "celery events", partial(subscription.pubsub.get_message, timeout=wait)
        )
        if reply is None:
            return False
        subscription.heard_at = time.monotonic()
        subscription.ping_sent_at = None
        if reply["type"] in ("pmessage", "message"):
            found.append(reply["data"])
        return True
