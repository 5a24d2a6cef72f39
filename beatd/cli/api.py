"""The HTTP API on the command line: `beatd run`'s `--api-*` options, which start the server
beside the scheduler, and `beatd api token`, which makes a token (docs/api.md)."""

from __future__ import annotations

import functools
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import click
from click.core import ParameterSource
from prometheus_client import CollectorRegistry

from beatd.cli.common import EXIT_RUNTIME, BackendSettings, bad_option, main, open_broker
from beatd.clock import SystemClock
from beatd.entry_index import EntryIndex
from beatd.http import build_app
from beatd.http.app import Access
from beatd.http.context import ApiContext
from beatd.http.metrics import ApiMetrics
from beatd.http.server import ApiServer, ServerSettings, answering
from beatd.http.tokens import Scope, TokenFileError, TokenSource, new_token
from beatd.metrics import parse_address
from beatd.operations.status import totals_of
from beatd.scheduler import Scheduler

log = logging.getLogger("beatd")
DEFAULT_API_ADDR = "127.0.0.1:9479"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """`--api-addr`, `--api-tokens`, `--api-public-read`, `--api-allowed-hosts` and
    `--api-trusted-proxy`, parsed."""

    addr: str
    tokens: str | None
    public_read: bool
    allowed_hosts: tuple[str, ...]
    trusted_proxy: str | None = None

    @property
    def off(self) -> bool:
        return self.addr.lower() in ("", "off")


def api_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add the `--api-*` options and hand `func` them parsed, as `api: ApiSettings`."""

    @functools.wraps(func)
    def parsed(**kwargs: Any) -> None:
        hosts = kwargs.pop("api_allowed_hosts")
        api = ApiSettings(
            kwargs.pop("api_addr"),
            kwargs.pop("api_tokens"),
            kwargs.pop("api_public_read"),
            tuple(h.strip().lower() for h in (hosts or "").split(",") if h.strip()),
            kwargs.pop("api_trusted_proxy") or None,
        )
        func(**kwargs, api=api)

    options = [
        click.option(
            "--api-addr",
            envvar="BEATD_API_ADDR",
            default=DEFAULT_API_ADDR,
            show_default=True,
            help="Serve the HTTP API at HOST:PORT (a port alone is 127.0.0.1:PORT; `off` for "
            "none). It answers only with --api-tokens or --api-public-read.",
        ),
        click.option(
            "--api-tokens",
            envvar="BEATD_API_TOKENS",
            metavar="FILE",
            help="The API's tokens, one `NAME SCOPE sha256:HEX` line each (`beatd api token` "
            "makes one); readable by beatd's user only. SIGHUP rereads it.",
        ),
        click.option(
            "--api-public-read",
            envvar="BEATD_API_PUBLIC_READ",
            is_flag=True,
            help="Answer reads without a token. They show every entry's args and kwargs: only "
            "where everyone who can reach the address may see them.",
        ),
        click.option(
            "--api-allowed-hosts",
            envvar="BEATD_API_ALLOWED_HOSTS",
            metavar="HOST,...",
            help="Host header values the API answers to, besides its own address (and the "
            "loopback names when it listens on loopback); others get 421.",
        ),
        click.option(
            "--api-trusted-proxy",
            envvar="BEATD_API_TRUSTED_PROXY",
            metavar="ADDR",
            help="The IP address of the reverse proxy that terminates TLS in front of the API: "
            "its X-Forwarded-Proto says whether a request came over https (the console's "
            "Secure cookie and Origin check); that header from anyone else is dropped.",
        ),
    ]
    for option in reversed(options):
        parsed = option(parsed)
    return parsed


@dataclass(frozen=True, slots=True)
class ServedApi:
    """The running API: its server, its backend connections and its tokens."""

    server: ApiServer
    context: ApiContext
    tokens: TokenSource
    index_stop: threading.Event | None = None  # stops the entry index's thread

    @property
    def address(self) -> str:
        """HOST:PORT as bound (the port the system chose for port 0; [IPv6]:PORT)."""
        host = self.server.host
        return f"[{host}]:{self.server.port}" if ":" in host else f"{host}:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()
        if self.index_stop is not None:
            self.index_stop.set()
        self.context.close()


def allowed_hosts(host: str, port: int, extra: tuple[str, ...]) -> frozenset[str]:
    names = {host.lower(), f"[{host.lower()}]", *extra}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= set(LOOPBACK_NAMES)
    if host in ("0.0.0.0", "::"):  # every interface: this host's own names
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset({*names, *(f"{name}:{port}" for name in names)})


def start_api(
    api: ApiSettings,
    broker: BackendSettings,
    scheduler: Scheduler,
    history_max_age: timedelta,
    registry: CollectorRegistry,
) -> ServedApi | None:
    """The API server, started, or None when it is off or has nothing to answer; its metrics
    in `registry`."""
    if api.off:
        return None
    try:
        host, port = parse_address(api.addr)
    except ValueError as exc:
        bad_option("--api-addr", str(exc))
    try:
        tokens = TokenSource(api.tokens)
    except TokenFileError as exc:
        bad_option("--api-tokens", str(exc))
    if api.tokens is None and not api.public_read:
        log.info("HTTP API not served: give it --api-tokens (docs/api.md)")
        return None
    # the console's entries page reads this node's entry index, built and fed in its own thread
    # from the runtime entries the scheduler holds (none read or built a second time)
    index = EntryIndex(
        lambda: open_broker(broker),
        lambda: scheduler.config,
        SystemClock(),
        view=scheduler.runtime,
        turns=scheduler.turns,  # its refreshes wait for gaps in the loop's rounds
    )
    context = ApiContext(
        lambda: open_broker(broker),
        lambda: scheduler.config,
        counts=lambda: totals_of(scheduler.counts),
        node=scheduler.leadership.settings.node,
        history_max_age=history_max_age,
        entry_index=index,
    )
    metrics = ApiMetrics(registry)
    hosts = allowed_hosts(host, port, api.allowed_hosts)
    access = Access(tokens, hosts, api.public_read, lambda why: metrics.refused.labels(why).inc())
    try:
        app = answering(metrics.wrap(build_app(context, access)), scheduler.turns)
        settings = ServerSettings(host, port, trusted_proxy=api.trusted_proxy)
        server = ApiServer(app, settings).start()
    except OSError as exc:
        _not_bound(api, exc)
        return None
    log.info("HTTP API at http://%s:%d/v1/ tokens=%d", host, server.port, len(tokens()))
    served = ServedApi(server, context, tokens, index.start())
    scheduler.node_reports.serving(served.address)  # the node record says where it answers
    return served


def _not_bound(api: ApiSettings, exc: OSError) -> None:
    source = click.get_current_context().get_parameter_source("api_addr")
    if source is not ParameterSource.DEFAULT:
        click.echo(f"beatd: --api-addr: cannot serve the API at {api.addr!r}: {exc}", err=True)
        sys.exit(EXIT_RUNTIME)
    log.warning(
        "serving no HTTP API: the default address %s is taken (%s), perhaps by another beatd on "
        "this host; give each process its own --api-addr",
        api.addr,
        exc,
    )


@main.group()
def api() -> None:
    """The HTTP API's tools (docs/api.md)."""


@api.command()
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.READ.value,
    show_default=True,
    help="read: every GET; write: everything.",
)
def token(name: str, scope: str) -> None:
    """Make a new 256-bit API token called NAME: print the token (shown this once) and the line
    to add to the --api-tokens file, which holds only the token's hash."""
    try:
        made = new_token(name, Scope(scope))
    except ValueError as exc:
        bad_option("NAME", str(exc))
    click.echo(f"token: {made.token}")
    click.echo(f"line for the --api-tokens file: {made.line}")
    click.echo("the token is not kept anywhere: store it now", err=True)
