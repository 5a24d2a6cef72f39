"""Backends by URL scheme: `sqlite:///relative.db`, `sqlite:////absolute.db`, and Redis as
`redis://[user:password@]host:port/db`, `rediss://...` (TLS), `unix:///path/redis.sock` or,
behind Sentinel, `redis+sentinel://[user:password@]host1:26379,host2:26379/SERVICE/DB` (or
`rediss+sentinel://`; see beatd.backends.redis_sentinel), and
`postgresql://[user[:password]@]host[:port][,host2...]/dbname[?libpq parameters]` (or
`postgres://`; the namespace is the schema; extra `beatd[postgresql]`), and `memory://NAME`:
one store per process and name, shared by every backend opened on it (tests, a scheduler with
its embedded worker), gone when the process exits."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from beatd.backends.base import (
    Backend,
    DeadLetter,
    Delivery,
    HearsCeleryEvents,
    LeaderInfo,
    Lease,
    Outgoing,
)
from beatd.errors import BeatdError


def default_broker() -> str:
    """`$STATE_DIRECTORY/beatd.db` under systemd, `./beatd.db` elsewhere."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return f"sqlite:///{os.path.join(os.path.abspath(state_dir), 'beatd.db')}"
    return "sqlite:///beatd.db"


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


def open_backend(
    url: str,
    *,
    namespace: str = "beatd",
    op_timeout: float = 2.0,
    read_only: bool = False,
    create: bool = True,
    history: bool = True,
    wait_replicas: int | None = None,
) -> Backend:
    """The backend a URL names; `namespace` and `op_timeout` (seconds per call) are Redis's,
    and `wait_replicas` (the replicas a commit waits for; None: auto) too.
    With `history` False it writes no run history (docs/history.md); reads still work.

    `read_only` (commands that only look) and `create=False` (commands that change what is
    there) never create a SQLite file: a mistyped path is an error, not a new empty database.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from beatd.backends.sqlite import SQLiteBackend

        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise BeatdError(
                f"cannot read broker URL {url!r}: use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        return SQLiteBackend(
            url[len(prefix) :], read_only=read_only, create=create, history=history
        )
    if scheme == "memory":
        from beatd.backends.memory import MemoryBackend

        return MemoryBackend(urlsplit(url).netloc, history=history)
    if scheme in POSTGRESQL_SCHEMES:
        return _open_postgresql(
            url,
            namespace=namespace,
            op_timeout=op_timeout,
            read_only=read_only,
            create=create,
            history=history,
        )
    if scheme in REDIS_SCHEMES:
        from beatd.backends.redis import RedisBackend

        return RedisBackend(
            url,
            namespace=namespace,
            op_timeout=op_timeout,
            history=history,
            wait_replicas=wait_replicas,
        )
    from beatd.backends.redis import redact

    raise BeatdError(
        f"unsupported broker URL scheme {scheme!r} in {redact(url)!r}: "
        "use sqlite://, redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
        "postgresql:// or postgres://"
    )


def _open_postgresql(
    url: str, *, namespace: str, op_timeout: float, read_only: bool, create: bool, history: bool
) -> Backend:
    """PostgreSQL, if the extra that brings its driver is installed."""
    try:
        from beatd.backends.postgres import PostgresBackend
    except ModuleNotFoundError as exc:
        if exc.name not in ("psycopg", "psycopg_pool"):
            raise
        raise BeatdError(
            f"a postgresql:// broker needs the {exc.name} package, which is not installed: "
            "pip install 'beatd[postgresql]'"
        ) from exc
    return PostgresBackend(
        url,
        namespace=namespace,
        op_timeout=op_timeout,
        read_only=read_only,
        create=create,
        history=history,
    )


def open_celery_events(url: str, *, exchange: str = "celeryev") -> HearsCeleryEvents:
    """Celery's task events from the `exchange` of the RabbitMQ broker at `url` (`amqp://` or
    `amqps://`), if the extra that brings its client is installed."""
    try:
        from beatd.backends.amqp_events import AmqpCeleryEvents
    except ModuleNotFoundError as exc:
        if exc.name != "pika":
            raise
        raise BeatdError(
            "hearing Celery's task events on an amqp:// broker needs the pika package, which "
            "is not installed: pip install 'beatd[amqp]'"
        ) from exc
    return AmqpCeleryEvents(url, exchange=exchange)


__all__ = [
    "Backend",
    "DeadLetter",
    "Delivery",
    "LeaderInfo",
    "Lease",
    "Outgoing",
    "default_broker",
    "open_backend",
    "open_celery_events",
]
