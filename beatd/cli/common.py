"""Shared pieces of the command line: exit statuses, error printing, common flags."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from prometheus_client import CollectorRegistry

from beatd.backends import Backend, default_broker, open_backend
from beatd.backends.base import StorageFailed
from beatd.config import Config, load_config
from beatd.config.entries import to_duration, to_timezone
from beatd.config.yamlsafe import DEFAULT_MAX_BYTES
from beatd.errors import BeatdError, ConfigError
from beatd.metrics import MetricsServer

log = logging.getLogger("beatd")
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
Decorated = TypeVar("Decorated", bound=Callable[..., Any])


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


def config_options(func: Decorated) -> Decorated:
    """The flags every command that reads schedule files shares."""
    options = [
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
        click.option(
            "--celery-config",
            envvar="BEATD_CELERY_CONFIG",
            expose_value=False,
            callback=_remember,
            help="Also read a Celery beat_schedule: a config MODULE, or MODULE:APP.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def celery_config() -> str | None:
    """The --celery-config of the running command, if any."""
    value = click.get_current_context().meta.get("beatd.celery_config")
    return str(value) if value else None


def schedule_paths(paths: Sequence[str]) -> tuple[str, ...]:
    """`paths`, except that --celery-config alone does not also read ./schedules."""
    ctx = click.get_current_context()
    source = ctx.get_parameter_source("schedules")
    if (
        celery_config()
        and source is click.core.ParameterSource.DEFAULT
        and not ctx.params.get("paths")
    ):
        return tuple(p for p in paths if Path(p).exists())
    return tuple(paths)


def read_config(
    paths: Sequence[str], timezone: str, max_file_size: int, yaml_only: bool = False
) -> Config:
    try:
        zone = to_timezone(timezone)
    except ValueError as exc:
        bad_option("--timezone", str(exc))
    try:
        return load_config(
            schedule_paths(paths),
            default_timezone=zone,
            yaml_only=yaml_only,
            max_bytes=max_file_size,
            celery_config=celery_config(),
        )
    except BeatdError as exc:
        fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="beatd")
def main() -> None:
    """beatd: a periodic scheduler daemon for Python task queues."""


def daemon_options(func: Decorated) -> Decorated:
    """The flags `run` and `worker` share."""
    options = [
        click.option(
            "--broker",
            envvar="BEATD_BROKER",
            default=default_broker,
            show_default="sqlite:///beatd.db, or $STATE_DIRECTORY/beatd.db under systemd",
            help="Backend URL: sqlite:///relative.db, sqlite:////absolute.db or redis://...",
        ),
        click.option(
            "--namespace",
            envvar="BEATD_NAMESPACE",
            default="beatd",
            show_default=True,
            expose_value=False,
            callback=_remember,
            help="Key prefix on Redis, so several deployments can share one server.",
        ),
        click.option(
            "--log-level",
            envvar="BEATD_LOG_LEVEL",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default="info",
            show_default=True,
        ),
        click.option(
            "--log-format",
            envvar="BEATD_LOG_FORMAT",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta[f"beatd.{param.name}"] = value
    return value


def read_optional_config(
    schedules: Sequence[str], timezone: str, max_file_size: int
) -> Config | None:
    """The configuration, for commands that can do without one: none when --schedules was
    left at its default and there is no ./schedules (a worker host needs no schedule files)."""
    source = click.get_current_context().get_parameter_source("schedules")
    if source is click.core.ParameterSource.DEFAULT and not os.path.exists(schedules[0]):
        return None
    return read_config(schedules, timezone, max_file_size)


def open_broker(
    url: str, op_timeout: float = 2.0, *, read_only: bool = False, create: bool = True
) -> Backend:
    """The backend at `url`; a Redis call never blocks longer than about `op_timeout`.
    `read_only` and `create=False`: see `open_backend` (a SQLite file is never created)."""
    namespace = click.get_current_context().meta.get("beatd.namespace", "beatd")
    try:
        return open_backend(
            url, namespace=namespace, op_timeout=op_timeout, read_only=read_only, create=create
        )
    except StorageFailed as exc:  # no bad input: the file is there, but damaged
        fail(exc)
    except BeatdError as exc:
        bad_option("--broker", str(exc))


def metrics_option(default: str) -> Callable[[Decorated], Decorated]:
    return click.option(
        "--metrics-addr",
        envvar="BEATD_METRICS_ADDR",
        default=default,
        show_default=True,
        help="Serve /metrics, /healthz and /readyz at HOST:PORT; 'off' turns it off.",
    )


# --- the worker: `beatd worker`, `beatd run --with-worker` ---------------------------------


def seconds_option(option: str, value: str) -> float:
    try:
        seconds = to_duration(value).total_seconds()
    except ValueError as exc:
        bad_option(option, str(exc))
    if seconds <= 0:
        bad_option(option, f"must be positive, got {value!r}")
    return seconds


def start_metrics(
    address: str, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]
) -> MetricsServer | None:
    """The metrics server at `address`, or None when it is turned off."""
    if address.lower() in ("", "off"):
        return None
    try:
        return MetricsServer(address, registry, ready)
    except (OSError, ValueError) as exc:
        source = click.get_current_context().get_parameter_source("metrics_addr")
        if source is not click.core.ParameterSource.DEFAULT:
            bad_option("--metrics-addr", f"cannot serve metrics at {address!r}: {exc}")
        # Several daemons on one host (the SQLite default's standby) share the default port.
        log.warning(
            "serving no metrics: the default address %s is taken (%s), perhaps by another beatd "
            "on this host; give each process its own --metrics-addr",
            address,
            exc,
        )
        return None
