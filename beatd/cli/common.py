"""Shared pieces of the command line: exit statuses, error printing, common flags."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

import click
from prometheus_client import CollectorRegistry

from beatd.backends import Backend, default_broker, open_backend
from beatd.backends.base import StorageFailed
from beatd.config import Config, load_config
from beatd.config.convert import to_timezone
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.durations import read_duration
from beatd.errors import BeatdError, ConfigError, NamespaceError
from beatd.metrics import MetricsServer

log = logging.getLogger("beatd")
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
# 128 + SIGPIPE: how a shell reports a tool stopped because the reader of its output went away
EXIT_CLOSED_PIPE = 141
DAEMONS = frozenset({"run", "worker"})  # their output is logs, never a pipe to read from
Decorated = TypeVar("Decorated", bound=Callable[..., Any])
NAMESPACE_HELP = (
    "Key prefix on Redis, schema name on PostgreSQL, so several deployments can share one server."
)
LOG_LEVEL_HELP = "Log events at this level and above; debug shows each publish decision."


def slot_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fail(error: BeatdError) -> NoReturn:
    """Print an error the way users read them and exit with the documented status."""
    for line in str(error).splitlines():
        click.echo(line, err=True)
    if isinstance(error, StorageFailed):  # 3 for a corrupt database: docs/deployment.md
        sys.exit(error.exit_status)
    sys.exit(EXIT_BAD_INPUT if isinstance(error, ConfigError) else EXIT_RUNTIME)


def bad_option(option: str, message: str) -> NoReturn:
    click.echo(f"beatd: {option}: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


class BeatdCommand(click.Command):
    """A command whose summary in the list of commands is its docstring's first paragraph,
    never cut with "...", and whose options all show their `BEATD_*` variable in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:
            return self.short_help
        return " ".join((self.help or "").split("\n\n")[0].split())


class BeatdGroup(BeatdCommand, click.Group):
    command_class = BeatdCommand
    group_class = type  # subgroups (`dead`) are BeatdGroups too

    def invoke(self, ctx: click.Context) -> Any:
        """A command whose reader went away (`beatd history | head`) stops quietly with
        EXIT_CLOSED_PIPE, as other tools do, instead of click's status 1."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            if ctx.invoked_subcommand in DAEMONS:
                raise
            # what is still buffered for stdout would fail again when Python flushes it at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_CLOSED_PIPE)


@click.group(
    cls=BeatdGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="beatd")
def main() -> None:
    """beatd: a periodic scheduler daemon for Python task queues."""


# --- settings, each parsed once from its flags by the decorator that adds them


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """Where the schedule files are and how to read them: `--schedules`, `--timezone`,
    `--max-file-size` and `--celery-config`, parsed once (`schedule_options`)."""

    paths: tuple[str, ...]
    timezone: str
    max_file_size: int
    celery_config: str | None


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Which backend: `--broker` and `--namespace`, parsed once (`backend_options`); for the
    daemons also whether they write the run history (`--history/--no-history`,
    `history_option`)."""

    url: str
    namespace: str
    history: bool = True
    wait_replicas: int | None = None  # Redis: WAIT after commits (None: auto)


@dataclass(frozen=True, slots=True)
class LogSettings:
    """`--log-level` and `--log-format`, parsed once (`logging_options`)."""

    level: str
    format: str = "text"


# --- the flags, each declared once


def url_with_password(variable: str) -> Callable[[click.Context, click.Parameter, str], str]:
    """An option callback: warn, once per option, when a URL with a password is given on the
    command line, where every user of the host reads it in `ps`; `variable` is the safe way."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        source = ctx.get_parameter_source(param.name or "")
        if source is click.core.ParameterSource.COMMANDLINE and has_password(value):
            click.echo(
                f"beatd: warning: {param.opts[0]}: the URL holds a password, which every user "
                f"of this host can read in ps; give the URL in {variable} instead",
                err=True,
            )
        return value

    return check


def has_password(url: str) -> bool:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    secrets = query.get("password", []) + query.get("sentinel_password", [])
    return bool(parts.password) or any(secrets)


SCHEDULE_FLAGS = [
    click.option(
        "--schedules",
        "-s",
        "schedules",
        multiple=True,
        envvar="BEATD_SCHEDULES",
        default=("schedules",),
        show_default=True,
        help="Schedule files or directories (repeatable; the variable is space-separated).",
    ),
    click.option(
        "--timezone",
        envvar="BEATD_TIMEZONE",
        default="UTC",
        show_default=True,
        help="Timezone of entries whose file gives none.",
    ),
    click.option(
        "--max-file-size",
        envvar="BEATD_MAX_FILE_SIZE",
        type=int,
        default=DEFAULT_MAX_BYTES,
        show_default=True,
        help="Refuse schedule files larger than this many bytes.",
    ),
]
CELERY_CONFIG_FLAG: dict[str, Any] = {
    "envvar": "BEATD_CELERY_CONFIG",
    "help": "Also read a Celery beat_schedule from a config MODULE (or MODULE:APP), as celery "
    "beat would: its entries go to queue celery in Celery's protocol, and its broker_url is the "
    "broker unless --broker is given.",
}
NAMESPACE_FLAG: dict[str, Any] = {
    "envvar": "BEATD_NAMESPACE",
    "default": "beatd",
    "show_default": True,
    "help": NAMESPACE_HELP,
}


def _with_flags(flags: Sequence[Callable[[Any], Any]], func: Decorated) -> Decorated:
    """`func` with the click options `flags`, shown in --help in the order given."""
    for flag in reversed(flags):
        func = flag(func)
    return func


BROKER_FLAG = click.option(
    "--broker",
    envvar="BEATD_BROKER",
    callback=url_with_password("BEATD_BROKER"),
    default=default_broker,
    show_default="sqlite:///beatd.db, or $STATE_DIRECTORY/beatd.db under systemd",
    help="Backend URL: sqlite:///relative.db, sqlite:////absolute.db, redis://... or "
    "postgresql://...; "
    "give a URL with a password in the variable, not on the command line.",
)
LOG_FORMAT_FLAG = click.option(
    "--log-format",
    envvar="BEATD_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="One line of text per event, with key=value context (no timestamp of its own under "
    "journald), or one JSON object per line with that context as fields.",
)


def _log_level_flag(default: str) -> Callable[[Any], Any]:
    return click.option(
        "--log-level",
        envvar="BEATD_LOG_LEVEL",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default=default,
        show_default=True,
        help=LOG_LEVEL_HELP,
    )


def schedule_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The flags of every command that reads schedule files, handed to it as one value,
    `schedule: ScheduleSettings`."""

    @functools.wraps(func)
    def command(
        *args: Any,
        schedules: tuple[str, ...],
        timezone: str,
        max_file_size: int,
        celery_config: str | None,
        **kwargs: Any,
    ) -> Any:
        paths = _schedule_paths(schedules, celery_config)
        kwargs["schedule"] = ScheduleSettings(paths, timezone, max_file_size, celery_config or None)
        return func(*args, **kwargs)

    flags = [*SCHEDULE_FLAGS, click.option("--celery-config", **CELERY_CONFIG_FLAG)]
    return _with_flags(flags, command)


def schedule_reading_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How to read schedule files (`--timezone`, `--max-file-size`, `--celery-config`) for a
    command that takes the files as arguments (`diff OLD NEW`): `schedule: ScheduleSettings`
    with no paths, which the command fills in."""

    @functools.wraps(func)
    def command(
        *args: Any, timezone: str, max_file_size: int, celery_config: str | None, **kwargs: Any
    ) -> Any:
        kwargs["schedule"] = ScheduleSettings((), timezone, max_file_size, celery_config or None)
        return func(*args, **kwargs)

    flags = [*SCHEDULE_FLAGS[1:], click.option("--celery-config", **CELERY_CONFIG_FLAG)]
    return _with_flags(flags, command)


def _schedule_paths(schedules: tuple[str, ...], celery_config: str | None) -> tuple[str, ...]:
    """`schedules`, except that --celery-config alone does not also read ./schedules."""
    source = click.get_current_context().get_parameter_source("schedules")
    if celery_config and source is click.core.ParameterSource.DEFAULT:
        return tuple(p for p in schedules if Path(p).exists())
    return schedules


def backend_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--broker` and `--namespace`, handed to the command as `backend: BackendSettings`."""

    @functools.wraps(func)
    def command(*args: Any, broker: str, namespace: str, **kwargs: Any) -> Any:
        kwargs["backend"] = BackendSettings(broker, namespace)
        return func(*args, **kwargs)

    return _with_flags([BROKER_FLAG, click.option("--namespace", **NAMESPACE_FLAG)], command)


def runtime_entries_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--broker` without a default, and `--namespace`, for the commands that read schedule
    files and, given a backend, its runtime entries too (`check`, `next`): handed to the
    command as `backend: BackendSettings | None` (None: no --broker nor BEATD_BROKER)."""

    @functools.wraps(func)
    def command(*args: Any, broker: str | None, namespace: str, **kwargs: Any) -> Any:
        kwargs["backend"] = None if broker is None else BackendSettings(broker, namespace)
        return func(*args, **kwargs)

    broker_flag = click.option(
        "--broker",
        envvar="BEATD_BROKER",
        callback=url_with_password("BEATD_BROKER"),
        help="Also read the runtime entries of this backend (read-only; docs/api.md); without "
        "it only the schedule files' entries are known.",
    )
    return _with_flags([broker_flag, click.option("--namespace", **NAMESPACE_FLAG)], command)


HISTORY_FLAG = click.option(
    "--history/--no-history",
    envvar="BEATD_HISTORY",
    default=True,
    show_default=True,
    help="Record each run, its attempts and the missed slots in the run history "
    "(docs/history.md); without it nothing is written to the history, which can still be read "
    "(and `beatd run` still trims it).",
)


def history_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--history/--no-history`, folded into the `backend: BackendSettings` that
    `backend_options` (above this decorator) hands the command."""

    @functools.wraps(func)
    def command(*args: Any, history: bool, backend: BackendSettings, **kwargs: Any) -> Any:
        return func(*args, backend=dataclasses.replace(backend, history=history), **kwargs)

    return HISTORY_FLAG(command)


def logging_options(
    level: str = "info", *, with_format: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--log-level` (default `level`) and `--log-format`, handed to the command as
    `log: LogSettings`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(*args: Any, log_level: str, log_format: str = "text", **kwargs: Any) -> Any:
            kwargs["log"] = LogSettings(log_level, log_format)
            return func(*args, **kwargs)

        flags = [_log_level_flag(level), *([LOG_FORMAT_FLAG] if with_format else [])]
        return _with_flags(flags, command)

    return decorate


# --- what the settings open


def read_config(settings: ScheduleSettings, yaml_only: bool = False) -> Config:
    """The configuration the settings name; bad input ends the command (exit 2)."""
    try:
        zone = to_timezone(settings.timezone)
    except ValueError as exc:
        bad_option("--timezone", str(exc))
    try:
        return load_config(
            settings.paths,
            default_timezone=zone,
            yaml_only=yaml_only,
            max_bytes=settings.max_file_size,
            celery_config=settings.celery_config,
        )
    except BeatdError as exc:
        fail(exc)


def read_optional_config(settings: ScheduleSettings) -> Config | None:
    """The configuration, for commands that can do without one: none when --schedules was
    left at its default and there is no ./schedules (a worker host needs no schedule files)."""
    source = click.get_current_context().get_parameter_source("schedules")
    if source is click.core.ParameterSource.DEFAULT and not (
        settings.paths and os.path.exists(settings.paths[0])
    ):
        return None
    return read_config(settings)


def open_broker(
    settings: BackendSettings,
    op_timeout: float = 2.0,
    *,
    read_only: bool = False,
    create: bool = True,
) -> Backend:
    """The backend `settings` name; a Redis call never blocks longer than about `op_timeout`.
    `read_only` and `create=False`: see `open_backend` (a SQLite file is never created)."""
    try:
        return open_backend(
            settings.url,
            namespace=settings.namespace,
            op_timeout=op_timeout,
            read_only=read_only,
            create=create,
            history=settings.history,
            wait_replicas=settings.wait_replicas,
        )
    except StorageFailed as exc:  # no bad input: the file is there, but damaged
        fail(exc)
    except NamespaceError as exc:
        bad_option("--namespace", str(exc))
    except BeatdError as exc:
        bad_option("--broker", str(exc))


REDIS_WAIT_FLAG = click.option(
    "--redis-wait-replicas",
    envvar="BEATD_REDIS_WAIT_REPLICAS",
    default="auto",
    show_default=True,
    metavar="auto|N",
    help="Redis: after each commit and take of the lease, WAIT until N replicas acknowledged "
    "it (half the per-call timeout at most); a commit none acknowledged pauses publishing "
    "until one does or a failover ends. auto: 1 while the primary has a replica; 0: never "
    "wait (docs/redis.md, Sentinel).",
)


def redis_wait_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--redis-wait-replicas`, folded into the `backend: BackendSettings` that
    `backend_options` (above this decorator) hands the command."""

    @functools.wraps(func)
    def command(
        *args: Any, redis_wait_replicas: str, backend: BackendSettings, **kwargs: Any
    ) -> Any:
        wanted = _wait_replicas(redis_wait_replicas)
        return func(*args, backend=dataclasses.replace(backend, wait_replicas=wanted), **kwargs)

    return REDIS_WAIT_FLAG(command)


def _wait_replicas(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit():
        bad_option(
            "--redis-wait-replicas", f"{value!r} is neither auto nor a number of replicas (0, 1...)"
        )
    return int(value)


def metrics_option(default: str) -> Callable[[Decorated], Decorated]:
    return click.option(
        "--metrics-addr",
        envvar="BEATD_METRICS_ADDR",
        default=default,
        show_default=True,
        help="Serve /metrics, /healthz and /readyz at HOST:PORT; a port alone is 127.0.0.1:PORT, "
        "0.0.0.0:PORT or [::]:PORT every interface; 'off' turns it off.",
    )


# --- the worker: `beatd worker`, `beatd run --with-worker` ---------------------------------


def seconds_option(option: str, value: str, *, zero_ok: bool = False) -> float:
    """A duration flag's seconds: positive (or zero), finite and at most 100 years, else exit 2."""
    try:
        return read_duration(value, zero_ok=zero_ok).total_seconds()
    except ValueError as exc:
        bad_option(option, str(exc))


def start_metrics(
    address: str, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]
) -> MetricsServer | None:
    """The metrics server at `address`, or None when it is turned off.

    A malformed address is bad input (exit 2). An explicit address that cannot be bound is a
    runtime failure (exit 1: systemd restarts the unit, and the port may be free by then); the
    default one taken is only a warning.
    """
    if address.lower() in ("", "off"):
        return None
    try:
        return MetricsServer(address, registry, ready)
    except ValueError as exc:
        bad_option("--metrics-addr", str(exc))
    except OSError as exc:
        source = click.get_current_context().get_parameter_source("metrics_addr")
        if source is not click.core.ParameterSource.DEFAULT:
            click.echo(
                f"beatd: --metrics-addr: cannot serve metrics at {address!r}: {exc}", err=True
            )
            sys.exit(EXIT_RUNTIME)
        # Several daemons on one host (the SQLite default's standby) share the default port.
        log.warning(
            "serving no metrics: the default address %s is taken (%s), perhaps by another beatd "
            "on this host; give each process its own --metrics-addr",
            address,
            exc,
        )
        return None
