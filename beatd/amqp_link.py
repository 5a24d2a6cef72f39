"""Where an AMQP broker is and how to log in: the one reading of an `amqp://` URL that beatd's
AMQP parts share (the Celery relay publishes, the celeryev listener consumes).

A URL reads as Celery (kombu) reads it: `amqp://[user[:password]@]host[:port]/[vhost]`,
`amqps://` for TLS, `pyamqp://` as a synonym of `amqp://`. The user and password default to
`guest`, the port to 5672 (5671 with TLS), and the vhost to `/`, which a path of `/` or `//`
also names (Celery's `amqp://host//`); `%2F` in the vhost is a slash, as in RabbitMQ's URI
spec. The one query option is `heartbeat` (seconds, 0 for none).

The password comes from the URL when the URL comes from a flag, the environment or a Celery
config; else from `password` (`--amqp-password`, `BEATD_AMQP_PASSWORD`). A schedule file never
holds one: its readers refuse a URL with a password (`has_password`). Logs, metrics and errors
show `redact(url)`, or `AmqpLink.shown`.

pika is imported by `connect` alone, so reading and checking URLs needs no extra installed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from beatd.errors import BeatdError

if TYPE_CHECKING:
    import pika  # no hints of its own (see pyproject.toml): its names read as Any

SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"  # kombu's and RabbitMQ's default; RabbitMQ allows it on loopback only
DEFAULT_HEARTBEAT = 60
INSTALL_HINT = "pip install 'beatd[amqp]'"


class AmqpUrlError(BeatdError):
    """An AMQP URL beatd cannot use; the message shows the URL redacted."""


@dataclass(frozen=True, slots=True)
class AmqpLink:
    """One AMQP broker and its login: a value, compared and hashed without the password."""

    host: str
    port: int
    vhost: str
    user: str
    password: str = field(repr=False, compare=False)
    tls: bool = False
    heartbeat: int = DEFAULT_HEARTBEAT

    @property
    def shown(self) -> str:
        """The broker for logs and metrics: no password."""
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"


class Logins:
    """How to log in to each broker named by a URL without password (a schedule file's, the
    outbox's): with the password of a URL given with one (the Celery config's broker_url) for
    the same broker and user, else `password` (--amqp-password), else Celery's default."""

    def __init__(self, password: str | None = None, urls: tuple[str, ...] = ()) -> None:
        self.password = password
        self._known = [parse_amqp_url(url) for url in urls]

    def link(self, url: str) -> AmqpLink:
        link = parse_amqp_url(url, password=self.password)
        return next((known for known in self._known if known == link), link)


def has_password(url: str) -> bool:
    """Whether the URL carries a password (a schedule file must not)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for logs, metrics and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unreadable AMQP URL>"
    if password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def without_password(url: str) -> str:
    """The URL with its password left out (the user stays): what may be stored and shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}").geturl()


def is_amqp_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def parse_amqp_url(url: str, *, password: str | None = None) -> AmqpLink:
    """The broker `url` names; `password` stands in for one the URL does not carry (the
    URL's own wins: it came from the same operator, closer to the broker it names)."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
        url_password = parts.password
    except ValueError:  # a port that is no number, an unclosed IPv6 bracket
        raise AmqpUrlError(
            f"cannot read AMQP URL {shown}: its host or port is malformed (the port is a "
            "number from 1 to 65535)"
        ) from None
    if parts.scheme not in SCHEMES:
        raise AmqpUrlError(
            f"cannot use AMQP URL {shown}: the scheme must be amqp://, amqps:// or pyamqp://"
        )
    if not parts.hostname:
        raise AmqpUrlError(f"cannot use AMQP URL {shown}: it names no host")
    tls = parts.scheme == "amqps"
    return AmqpLink(
        host=parts.hostname,
        port=port or (5671 if tls else 5672),
        vhost=_vhost(parts.path),
        user=unquote(parts.username) if parts.username else DEFAULT_USER,
        password=_password(url_password, password),
        tls=tls,
        heartbeat=_heartbeat(parts.query, shown),
    )


def _vhost(path: str) -> str:
    """Celery's reading: '' and '/' are the default vhost '/', '//' is '/' too, '/name' is
    'name'; percent-escapes are decoded after the split, so '%2F' is a slash."""
    name = path[1:] if path.startswith("/") else path
    return unquote(name) if name else "/"


def _password(in_url: str | None, given: str | None) -> str:
    if in_url is not None:
        return unquote(in_url)
    return given if given is not None else DEFAULT_PASSWORD


def _heartbeat(query: str, shown: str) -> int:
    heartbeat = DEFAULT_HEARTBEAT
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "heartbeat":
            raise AmqpUrlError(
                f"cannot use AMQP URL {shown}: unknown option {key!r}; the one option is "
                "heartbeat (seconds, 0 for none)"
            )
        if not value.isdigit():
            raise AmqpUrlError(
                f"cannot use AMQP URL {shown}: heartbeat must be whole seconds, got {value!r}"
            )
        heartbeat = int(value)
    return heartbeat


def require_client() -> None:
    """Raise AmqpUrlError naming the extra to install when pika, the AMQP client, is missing."""
    try:
        import pika  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "pika":
            raise
        raise AmqpUrlError(
            f"an AMQP destination needs the pika package, which is not installed: {INSTALL_HINT}"
        ) from None


def connect(link: AmqpLink, *, timeout: float) -> pika.BlockingConnection:
    """A blocking connection to `link`, each socket step bounded by `timeout` seconds.

    Raises AmqpUrlError naming the extra when pika is not installed; pika's own connection
    errors (pika.exceptions.AMQPConnectionError and kin) pass through for the caller, which
    knows whether a failure is worth a retry.
    """
    require_client()
    import pika

    credentials = pika.PlainCredentials(link.user, link.password, erase_on_connect=True)
    tls = pika.SSLOptions(ssl.create_default_context(), link.host) if link.tls else None
    parameters = pika.ConnectionParameters(
        host=link.host,
        port=link.port,
        virtual_host=link.vhost,
        credentials=credentials,
        heartbeat=link.heartbeat,
        # a broker that blocks publishers (a memory or disk alarm) fails the publish after this,
        # well inside the relay's claim, which would otherwise lapse and bring a republish
        blocked_connection_timeout=timeout * 4,
        socket_timeout=timeout,
        stack_timeout=timeout * 2,
        connection_attempts=1,
        ssl_options=tls,
        client_properties={"connection_name": "beatd"},
    )
    return pika.BlockingConnection(parameters)
