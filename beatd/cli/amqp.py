"""`beatd run`'s AMQP flag and the relay it builds for entries with an AMQP destination."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

import click

from beatd.amqp_link import AmqpUrlError, Logins, is_amqp_url, require_client
from beatd.amqp_relay import AmqpRelay, RelaySettings
from beatd.amqp_relaying import relay_targets
from beatd.assemble import RunSettings
from beatd.backends import open_backend
from beatd.backends.base import Backend
from beatd.cli.common import BackendSettings, ScheduleSettings, bad_option
from beatd.clock import SystemClock
from beatd.config import Config
from beatd.config.celeryconf import read_celery_config

AMQP_PASSWORD_FLAG = click.option(
    "--amqp-password",
    envvar="BEATD_AMQP_PASSWORD",
    default=None,
    show_default="the Celery config's broker_url's, else guest",
    help="The password for the AMQP destinations (RabbitMQ) named without one; give it in "
    "BEATD_AMQP_PASSWORD rather than on the command line, where ps shows it.",
    callback=lambda ctx, param, value: _warn_on_command_line(ctx, param, value),
)


def _warn_on_command_line(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    source = ctx.get_parameter_source(param.name or "")
    if value and source is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "beatd: warning: --amqp-password: every user of this host can read it in ps; give "
            "it in BEATD_AMQP_PASSWORD instead",
            err=True,
        )
    return value


def celery_amqp_url(celery_config: str | None) -> str | None:
    """The Celery config's broker_url when it names RabbitMQ (with its password, if any)."""
    if not celery_config:
        return None
    url = read_celery_config(celery_config, "UTC").broker_url
    return url if url and is_amqp_url(url) else None


def build_relay(
    backend: BackendSettings,
    run: RunSettings,
    schedule: ScheduleSettings,
    password: str | None,
    config: Config,
) -> AmqpRelay:
    """The relay for `beatd run`: idle until this node leads AMQP destinations; its outbox
    handle, without run history, opened at its first claim. Exits at once (status 2) when
    `config` has AMQP destinations and the AMQP client is not installed."""
    if relay_targets(config):
        try:
            require_client()
        except AmqpUrlError as exc:
            bad_option("--schedules", str(exc))
    op_timeout = run.lease_ttl / 5  # as the scheduler's: a hung backend cannot outlast the lease
    logins = amqp_logins(schedule, password)

    def open_outbox() -> Backend:
        url, namespace = backend.url, backend.namespace
        return open_backend(url, namespace=namespace, op_timeout=op_timeout, history=False)

    settings = RelaySettings(consumer=f"amqp-relay@{run.node}", stop_after_confirm=_fault_point())
    return AmqpRelay(open_outbox, logins.link, SystemClock(), settings)


FAULT_POINTS = ("relay-after-confirm",)
log = logging.getLogger(__name__)


def _fault_point() -> bool:
    """BEATD_FAULT_POINT, read once at start: `relay-after-confirm` stops the process after the
    relay's first confirm, before the run's removal, for tests that kill it there
    (tests/test_amqp_relay.py). Unset (or empty) in production."""
    value = os.environ.get("BEATD_FAULT_POINT", "")
    if not value:
        return False
    if value not in FAULT_POINTS:
        bad_option(
            "BEATD_FAULT_POINT",
            f"{value!r} is no fault point: the one beatd knows is relay-after-confirm (for "
            "tests only); unset it",
        )
    log.warning("fault point %s armed: for tests only, never in production", value)
    return True


def amqp_logins(schedule: ScheduleSettings, password: str | None) -> Logins:
    """How to log in to the AMQP brokers: the Celery config's broker_url's password, else
    --amqp-password."""
    celery_url = celery_amqp_url(schedule.celery_config)
    try:
        return Logins(password, (celery_url,) if celery_url else ())
    except AmqpUrlError as exc:
        bad_option("--celery-config", f"broker_url: {exc}")


def celery_events_url(
    config: Config, schedule: ScheduleSettings, password: str | None
) -> str | None:
    """Where the leader hears Celery's task events when Celery runs go to RabbitMQ: the first
    AMQP broker the entries name (by URL), with its login; None when none does."""
    targets = relay_targets(config)
    if not targets:
        return None
    link = amqp_logins(schedule, password).link(min(targets))
    scheme = "amqps" if link.tls else "amqp"
    login = f"{quote(link.user, safe='')}:{quote(link.password, safe='')}"
    return f"{scheme}://{login}@{link.host}:{link.port}/{quote(link.vhost, safe='')}"
