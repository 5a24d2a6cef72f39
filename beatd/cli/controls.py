"""Operator controls on the command line (docs/controls.md): `beatd trigger`, `beatd pause`,
`beatd resume` and `beatd audit`. Each write is one atomic step of the backend (`Controls` in
beatd.backends.base) and needs no leader; each records who did it in the audit log.

`--by` is self-declared: whoever can reach the backend can do anything, and the audit log only
says who they said they were.
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from beatd.backends import Backend
from beatd.backends.base import CeleryQueue, Controls
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
from beatd.config import Config, Entry
from beatd.config.convert import suggest
from beatd.controls import (
    NO_CONTROL,
    AuditRecord,
    EntryControl,
    Pause,
    Trigger,
    TriggerResult,
    TriggerStatus,
    manual_run_id,
)
from beatd.durations import read_duration
from beatd.errors import BeatdError, NotApplied, OutcomeUnknown
from beatd.history import RunKind
from beatd.publisher import encode_run
from beatd.service import setup_logging

T = TypeVar("T")
TRIGGER_ATTEMPTS = 5  # a timed-out trigger is sent again, with the same request id, this often
BY_HELP = "Who is acting, for the audit log (self-declared); default: user@host."
LATER_NOT_PAUSED = "entries added to the schedule files later are not paused"


def default_by() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def controls_of(backend: Backend) -> Controls:
    """The backend's operator controls (every backend offers them; a seam the tests wrap)."""
    return backend


def backend_now(backend: Backend) -> datetime:
    return datetime.fromtimestamp(backend.server_time(), UTC)


def find_entry(config: Config, name: str) -> Entry:
    entry = config.entries.get(name)
    if entry is None:
        bad_option(
            "ENTRY",
            f"no entry {name!r} in the schedule files{suggest(name, sorted(config.entries))}",
        )
    return entry


def with_retries(step: Callable[[], T], attempts: int = TRIGGER_ATTEMPTS) -> T:
    """`step` again after a transient fault (bounded): only for a step safe to repeat."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except (OutcomeUnknown, NotApplied) as exc:
            if attempt == attempts:
                raise BeatdError(
                    f"the backend did not answer {attempts} times ({exc}); the request may have "
                    "been applied: repeat the same command with --idempotency-key to be sure "
                    "it runs once"
                ) from exc
            time.sleep(min(0.2 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


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
    entry = find_entry(read_config(schedule), entry_name)
    args = read_json_option("--args", args_json, list)
    kwargs = read_json_option("--kwargs", kwargs_json, dict)
    if args is not None:
        entry = replace(entry, args=tuple(args))
    if kwargs is not None:
        entry = replace(entry, kwargs=kwargs)
    store = open_broker(backend)
    try:
        controls = controls_of(store)
        now = backend_now(store).replace(microsecond=0)
        run_id = manual_run_id(entry.name, idempotency_key)
        run = encode_run(entry, run_id, now, now, RunKind.MANUAL, socket.gethostname())
        request = Trigger(
            entry=entry.name,
            run_id=run_id,
            queue=run.destination.queue,  # an AMQP entry's: the outbox
            celery=isinstance(run.destination, CeleryQueue),
            priority=entry.priority,
            body=run.body,
            request_id=secrets.token_hex(16),
            by=by or default_by(),
            guard=entry.guard,
            idempotency_key=idempotency_key,
            force=force,
        )
        result = with_retries(lambda: controls.trigger(request))
        control = NO_CONTROL  # read to name the pause or the busy run in what is said
        if result.status in (TriggerStatus.REFUSED_PAUSED, TriggerStatus.HELD):
            control = controls.load_controls([entry.name]).get(entry.name, NO_CONTROL)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    report_trigger(result, entry.name, control)


def report_trigger(result: TriggerResult, entry: str, control: EntryControl = NO_CONTROL) -> None:
    pause, busy = control.pause, control.busy
    if result.status is TriggerStatus.PUBLISHED:
        click.echo(result.run_id)
    elif result.status is TriggerStatus.HELD:
        click.echo(result.run_id)
        click.echo(
            f"held: {entry} is busy ({busy.run_id if busy else result.detail}) under overlap: "
            "buffer_one; the run is "
            "published when that one ends",
            err=True,
        )
    elif result.status is TriggerStatus.DUPLICATE:
        click.echo(result.run_id)
        click.echo(
            f"duplicate: this idempotency key was already used for {result.run_id}; nothing "
            "more was published",
            err=True,
        )
    elif result.status is TriggerStatus.REFUSED_PAUSED:
        click.echo(
            f"beatd: {entry} is paused ({pause_text(pause) if pause else result.detail}); "
            "nothing was published: resume it "
            "with `beatd resume`, or add --force",
            err=True,
        )
        raise SystemExit(EXIT_RUNTIME)
    else:
        click.echo(
            f"beatd: {entry} is busy: run {result.detail} has not ended, and its overlap is "
            "skip; nothing was published: wait for it, or add --force",
            err=True,
        )
        raise SystemExit(EXIT_RUNTIME)


def pause_text(pause: Pause) -> str:
    """`by NAME, reason "TEXT", until TIME` (or `until resumed`)."""
    until = slot_text(pause.until) if pause.until is not None else "resumed"
    return f"by {pause.by}, reason {pause.reason!r}, since {slot_text(pause.at)}, until {until}"


# --- beatd pause / beatd resume


def select_entries(
    names: Sequence[str], everything: bool, pattern: str | None, known: Sequence[str]
) -> list[str]:
    """ENTRY..., --all or --match GLOB (exactly one of them) among `known`; exit 2 if none."""
    given = [bool(names), everything, pattern is not None]
    if sum(given) != 1:
        bad_option("ENTRY/--all/--match", "give entry names, --all or --match GLOB: exactly one")
    if everything:
        chosen = sorted(known)
    elif pattern is not None:
        chosen = sorted(name for name in known if fnmatch.fnmatchcase(name, pattern))
        if not chosen:
            bad_option("--match", f"no entry matches {pattern!r}")
    else:
        for name in names:
            if name not in known:
                bad_option("ENTRY", f"no entry {name!r}{suggest(name, sorted(known))}")
        chosen = list(dict.fromkeys(names))
    return chosen


def read_until(text: str | None) -> datetime | timedelta | None:
    """--until: a duration from the backend's now, or an ISO 8601 time with an offset."""
    if text is None:
        return None
    try:
        return read_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        bad_option(
            "--until",
            f"cannot read {text!r}: give a duration from now (such as 8h or 2d) or an ISO 8601 "
            "time with an offset (such as 2026-12-05T07:00:00Z)",
        )
    if moment.tzinfo is None:
        bad_option(
            "--until",
            f"{text!r} has no offset, so it could mean any zone: add one (Z for UTC, or such as "
            "+01:00)",
        )
    if moment <= datetime.now(UTC):
        bad_option(
            "--until",
            f"{text!r} is already past, so the pause would cover nothing: give a time to come "
            "(or a duration from now, such as 8h)",
        )
    return moment.astimezone(UTC)


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
    chosen = select_entries(names, everything, pattern, sorted(config.entries))
    end = read_until(until)
    if not reason.strip():
        bad_option("--reason", "say why (it is shown by beatd status and the audit log)")
    store = open_broker(backend)
    try:
        controls = controls_of(store)
        controls.pause(chosen, reason, end, by or default_by())
        now = controls.load_controls(chosen)
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    for name in chosen:
        paused = now[name].pause if name in now else None
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
        paused = sorted(n for n, c in controls.load_controls().items() if c.pause is not None)
        if names and not everything and pattern is None:
            chosen = list(dict.fromkeys(names))
        else:
            chosen = select_entries(names, everything, pattern, paused)
        records = controls.resume(chosen, by or default_by())
    except BeatdError as exc:
        fail(exc)
    finally:
        store.close()
    lifted = {record.entry for record in records}
    for name in chosen:
        click.echo(f"resumed {name}" if name in lifted else f"{name} was not paused")


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
        click.echo(json.dumps([audit_json(r) for r in records], indent=2))
        return
    for record in records:
        click.echo(audit_line(record))
    click.echo(f"{len(records)} action(s)")


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "action": record.action,
        "entry": record.entry,
        "by": record.by,
        "detail": dict(record.detail),
        "before": None if record.before is None else dict(record.before),
        "after": None if record.after is None else dict(record.after),
    }


def audit_line(record: AuditRecord) -> str:
    """`TIME  BY  ACTION ENTRY  key=value...  before=... after=...` (JSON values)."""
    parts = [slot_text(record.at), record.by, f"{record.action} {record.entry or '-'}"]
    if record.detail:
        parts.append(" ".join(f"{k}={json.dumps(v)}" for k, v in sorted(record.detail.items())))
    if record.before is not None or record.after is not None:
        parts.append(f"before={json.dumps(record.before)} after={json.dumps(record.after)}")
    return "  ".join(parts)
