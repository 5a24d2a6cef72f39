"""Redis behind Sentinel: the `redis+sentinel://` URL, and the client that follows the primary.

    redis+sentinel://[user:password@]host1[:26379][,host2[:26379]...]/SERVICE[/DB][?options]
    rediss+sentinel://...  (TLS to the sentinels and to the primary)

`user:password` are the data server's (the ACL user of docs/redis.md); the sentinels' own
credentials, if they have any, are the options `sentinel_username` and `sentinel_password`.
TLS takes `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` and `ssl_cert_reqs`, for both. Kombu
names the sentinels as `sentinel://h1:26379;sentinel://h2:26379` and the service in a transport
option; beatd keeps the whole address in one URL, read like a plain Redis URL with the service
as the first path segment.

The client is redis-py's `Sentinel(...).master_for(service)`: every new connection asks the
sentinels for the primary, so after a failover (`+switch-master`) the next call after a refused
or broken connection (or a READONLY reply from the demoted primary) reaches the new one.
`FollowedPrimary` counts those changes and logs each once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from beatd.errors import BackendError

log = logging.getLogger(__name__)

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
CERT_REQS = ("none", "optional", "required")
FORM = "redis+sentinel://[user:password@]host1:26379,host2:26379/SERVICE/DB"


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)

    def sentinel_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "username": self.options.get("sentinel_username"),
            "password": self.options.get("sentinel_password"),
        }
        return kwargs | self._tls()

    def primary_kwargs(self) -> dict[str, Any]:
        kwargs = {"db": self.db, "username": self.username, "password": self.password}
        return kwargs | self._tls()

    def _tls(self) -> dict[str, Any]:
        if not self.tls:
            return {}
        tls = {k: v for k, v in self.options.items() if k in TLS_OPTIONS}
        return {"ssl": True, **tls}


def parse_sentinel_url(url: str, shown: str) -> SentinelAddress:
    """The sentinels, service, database and options of `url`; BackendError naming `shown`
    (the URL with its passwords hidden) and what is wrong."""

    def bad(what: str) -> BackendError:
        return BackendError(f"cannot use Redis Sentinel URL {shown}: {what}; the form is {FORM}")

    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = tuple(_host_port(h, bad) for h in hosts.split(","))
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not segments:
        raise bad("no service name (the name in Sentinel's `sentinel monitor` line) in the path")
    if len(segments) > 2:
        raise bad(f"the path {parts.path!r} has more than a service name and a database")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise bad(f"the database {db!r} is not a number")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = SENTINEL_OPTIONS + TLS_OPTIONS
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise bad(f"unknown option {', '.join(unknown)}: use {', '.join(known)}")
    tls = parts.scheme == "rediss+sentinel"
    if not tls and set(options) & set(TLS_OPTIONS):
        raise bad("TLS options without TLS: use rediss+sentinel://")
    if options.get("ssl_cert_reqs", "required") not in CERT_REQS:
        raise bad(f"ssl_cert_reqs {options['ssl_cert_reqs']!r} is not one of {CERT_REQS}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return SentinelAddress(sentinels, unquote(segments[0]), int(db), user, password, tls, options)


def _host_port(text: str, bad: Any) -> tuple[str, int]:
    if not text:
        raise bad("a sentinel's host is empty")
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not colon:
        host, port = text, str(SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"the sentinel address {text!r} is not host or host:port")
    return host, int(port)


class FollowedPrimary(Sentinel):
    """Sentinel discovery that notices when the primary moved: logged once per change, and
    counted in `changes` (the metric `beatd_backend_primary_changes_total`)."""

    def __init__(self, shown: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown = shown
        self.primary: tuple[str, int] | None = None
        self.changes = 0

    def discover_master(self, service_name: str) -> tuple[str, int]:
        found: tuple[str, int] = tuple(super().discover_master(service_name))
        if self.primary is not None and found != self.primary:
            self.changes += 1
            log.warning(
                "Redis Sentinel service %s moved to a new primary: %s:%s (was %s:%s); "
                "reconnecting there url=%s",
                service_name,
                *found,
                *self.primary,
                self.shown,
            )
        self.primary = found
        return found


def sentinel_client(
    address: SentinelAddress, shown: str, **connection: Any
) -> tuple[redis.Redis, FollowedPrimary]:
    """A client of the service's primary, and its Sentinel (for `changes`); `connection` are
    the keyword arguments of every connection, to the sentinels and to the primary."""
    sentinel_kwargs = {**connection, **address.sentinel_kwargs()}
    sentinel_kwargs.pop("decode_responses", None)  # discovery parses replies itself
    sentinel = FollowedPrimary(
        shown, address.sentinels, sentinel_kwargs=sentinel_kwargs, **connection
    )
    client = sentinel.master_for(address.service, **address.primary_kwargs())
    return client, sentinel
