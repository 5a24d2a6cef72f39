"""Operator controls on the command line (docs/controls.md): `beatd trigger`, `beatd pause`,
`beatd resume` and `beatd audit`. Each write is one atomic step of the backend (`Controls` in
beatd.backends.base) and needs no leader; each records who did it in the audit log.

`--by` is self-declared: whoever can reach the backend can do anything, and the audit log only
says who they said they were.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from beatd.backends import Backend
from beatd.backends.base import Controls
from beatd.cli.common import (
    EXIT_RUNTIME,
    BackendSettings,
    LogSettings,
    ScheduleSettings,
    backend_options,
    bad_option,
    fail,
    logging_options,
    main,
    open_broker,
    read_config,
    schedule_options,
    slot_text,
)
from beatd.cli.history import read_since
from beatd.controls import (
    AuditRecord,
)
from beatd.errors import BeatdError
from beatd.operations.audit import audit_object
from beatd.operations.controls import (
    LATER_NOT_PAUSED,
    BadRequest,
    TriggerAsk,
    backend_now,
    check_idempotency_key,
    check_reason,
    find_entry,
    parse_until,
    pause_text,
    paused_now,
    select_entries,
    trigger_words,
)
from beatd.operations.controls import pause as pause_entries
from beatd.operations.controls import resume as resume_entries
from beatd.operations.controls import trigger as trigger_run
from beatd.service import setup_logging

T = TypeVar("T")
BY_HELP = "Who is acting, for the audit log (self-declared); default: user@host."


def default_by() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def controls_of(backend: Backend) -> Controls:
    """The backend's operator controls (every backend offers them; a seam the tests wrap)."""
    return backend


def read_json_option(option: str, text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        bad_option(option, f"not JSON ({exc}): {text!r}")
    if not isinstance(value, kind):
        wanted = "a JSON array" if kind is list else "a JSON object"
        bad_option(option, f"must be {wanted}, got {text!r}")
    return value


# --- beatd trigger


@main.command()
@click.argument("entry_name", metavar="ENTRY")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Run once per KEY (remembered 7 days): the run id is ENTRY@manual-KEY, and the same "
    "KEY again publishes nothing.",
)
@click.option("--force", is_flag=True, help="Run even if the entry is paused or busy.")
@click.option("--by", metavar="NAME", help=BY_HELP)
@schedule_options
@backend_options
@logging_options("warning", with_format=False)
def trigger(
    entry_name: str,
    args_json: str | None,
    kwargs_json: str | None,
    idempotency_key: str | None,
    force: bool,
    by: str | None,
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Publish one run of ENTRY now, marked manual, and print its id.

    The entry's schedule is not moved: its next slot runs as usual. A timed-out request is sent
    again with the same request id, so it never becomes two runs. A paused entry, or a busy one
    under `overlap: skip`, is refused (exit 1) unless --force; under `overlap: buffer_one` the
    run is held until the busy one ends.
    """
    setup_logging(log.level, log.format)
    entry = asked(lambda: find_entry(read_config(schedule), entry_name))
    asked(lambda: check_idempotency_key(idempotency_key))
    ask = TriggerAsk(
        read_json_option("--args", args_json, list),
        read_json_option("--kwargs", kwargs_json, dict),
        idempotency_key,
        force,
    )
    store = open_broker(backend)
    try:
        done = trigger_run(controls_of(store), backend_now(store), entry, ask, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    words = trigger_words(done, entry.name)
    if words.run_id is not None:
        click.echo(words.run_id)
    if words.note is not None:
        click.echo(f"beatd: {words.note}" if words.refused else words.note, err=True)
    if words.refused:
        raise SystemExit(EXIT_RUNTIME)


# --- beatd pause / beatd resume


def read_until(text: str | None) -> datetime | timedelta | None:
    """--until: a duration from the backend's now, or an ISO 8601 time with an offset."""
    if text is None:
        return None
    return parse_until(text, datetime.now(UTC))


def asked(step: Callable[[], T]) -> T:
    """`step`, with bad input ending the command as bad input (exit 2) naming the option."""
    try:
        return step()
    except BadRequest as exc:
        bad_option(exc.option, exc.message)


SELECTION = [
    click.argument("names", metavar="[ENTRY]...", nargs=-1),
    click.option("--all", "everything", is_flag=True, help="Every entry there is now."),
    click.option("--match", "pattern", metavar="GLOB", help="Every entry whose name matches now."),
]


def selection(func: Callable[..., Any]) -> Callable[..., Any]:
    for flag in reversed(SELECTION):
        func = flag(func)
    return func


@main.command()
@selection
@click.option("--reason", required=True, metavar="TEXT", help="Why, for status and the audit.")
@click.option(
    "--until",
    metavar="ISO|DURATION",
    help="Resume by itself then: an ISO 8601 time with an offset, or a duration (8h). Default: "
    "until `beatd resume`.",
)
@click.option("--by", metavar="NAME", help=BY_HELP)
@schedule_options
@backend_options
@logging_options("warning", with_format=False)
def pause(
    names: tuple[str, ...],
    everything: bool,
    pattern: str | None,
    reason: str,
    until: str | None,
    by: str | None,
    schedule: ScheduleSettings,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Pause entries: every slot due from now until --until (or `beatd resume`) ends missed,
    reason paused, under every `missed:` policy; resuming never publishes them.

    ENTRY..., --all or --match GLOB choose among the entries of the schedule files now.
    """
    setup_logging(log.level, log.format)
    config = read_config(schedule)
    chosen = asked(lambda: select_entries(names, everything, pattern, sorted(config.entries)))
    end = asked(lambda: read_until(until))
    asked(lambda: check_reason(reason))
    store = open_broker(backend)
    try:
        pauses = pause_entries(controls_of(store), chosen, reason, end, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for name, paused in pauses.items():
        click.echo(f"paused {name}: {pause_text(paused)}" if paused else f"{name}: not paused")
    if everything or pattern is not None:
        click.echo(LATER_NOT_PAUSED)


@main.command()
@selection
@click.option("--by", metavar="NAME", help=BY_HELP)
@backend_options
@logging_options("warning", with_format=False)
def resume(
    names: tuple[str, ...],
    everything: bool,
    pattern: str | None,
    by: str | None,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Lift the pause of entries: their next slot after now runs as usual; the slots due
    while paused stay missed (`beatd backfill` publishes them, if they are wanted).

    ENTRY..., --all or --match GLOB choose among the entries paused now.
    """
    setup_logging(log.level, log.format)
    store = open_broker(backend)
    try:
        controls = controls_of(store)
        if names and not everything and pattern is None:
            chosen = list(dict.fromkeys(names))
        else:
            known = sorted(paused_now(controls))
            chosen = asked(lambda: select_entries(names, everything, pattern, known))
        said = resume_entries(controls, backend_now(store), chosen, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for line in said:
        click.echo(line)


# --- beatd audit


@main.command()
@click.argument("entry_name", metavar="[ENTRY]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option(
    "-n",
    "limit",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Show the newest N actions.",
)
@click.option(
    "--since", metavar="WHEN", help="Only actions since then: a duration back (2d) or ISO time."
)
@backend_options
@logging_options("warning", with_format=False)
def audit(
    entry_name: str | None,
    as_json: bool,
    limit: int,
    since: str | None,
    backend: BackendSettings,
    log: LogSettings,
) -> None:
    """Show the audit log, newest first: who paused, resumed, triggered, backfilled or
    requeued what, when, with the state before and after."""
    setup_logging(log.level, log.format)
    store = open_broker(backend, read_only=True)
    try:
        start = read_since(since, backend_now(store))
        records = controls_of(store).audit(entry_name, start, limit)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([audit_object(r) for r in records], indent=2))
        return
    for record in records:
        click.echo(audit_line(record))
    click.echo(f"{len(records)} action(s)")


def audit_line(record: AuditRecord) -> str:
    """`TIME  BY  ACTION ENTRY  key=value...  before=... after=...` (JSON values)."""
    parts = [slot_text(record.at), record.by, f"{record.action} {record.entry or '-'}"]
    if record.detail:
        parts.append(" ".join(f"{k}={json.dumps(v)}" for k, v in sorted(record.detail.items())))
    if record.before is not None or record.after is not None:
        parts.append(f"before={json.dumps(record.before)} after={json.dumps(record.after)}")
    return "  ".join(parts)
