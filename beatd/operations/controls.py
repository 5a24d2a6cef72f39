"""Operator controls as both ways in carry them out (docs/controls.md): trigger now, pause and
resume, and the words each outcome is told in. Every write is one atomic step of the backend
(`Controls` in beatd.backends.base) and needs no leader; each records who acted in the audit log.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from beatd.backends import Backend
from beatd.backends.base import CeleryQueue, Controls
from beatd.config import Config, Entry
from beatd.config.convert import suggest
from beatd.controls import (
    NO_CONTROL,
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
from beatd.timetext import stamp

T = TypeVar("T")
TRIGGER_ATTEMPTS = 5  # a timed-out trigger is sent again, with the same request id, this often
LATER_NOT_PAUSED = "entries added to the schedule files later are not paused"
# A key goes into the run id, the history and the logs as it is: letters, digits and `_.:-`
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,200}\Z")


class BadRequest(BeatdError):
    """Input an operation cannot take, naming it: `field` as the API calls it, `option` as the
    command line does."""

    def __init__(self, field: str, option: str, message: str) -> None:
        super().__init__(message)
        self.field, self.option, self.message = field, option, message


MAX_RECORDS = 10_000  # history and audit records one read may ask for (`limit`)


def number_words(field: str, low: int, high: int, given: object) -> str:
    """How every way in refuses a count out of range (the API's query parameters, the client)."""
    return f"{field} must be a whole number from {low} to {high}, got {str(given)!r}"


def whole_number(field: str, value: int, low: int, high: int) -> int:
    """`value` when from `low` to `high`, else BadRequest in the API's words."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(field, f"--{field}", number_words(field, low, high, value))
    return value


class UnknownName(BadRequest):
    """An entry named that nobody knows (the API answers 404)."""


def slot_text(moment: datetime) -> str:
    return stamp(moment.replace(microsecond=0)) or ""


def find_entry(config: Config, name: str) -> Entry:
    entry = config.entries.get(name)
    if entry is None:
        known = sorted(config.entries)
        raise UnknownName(
            "entry", "ENTRY", f"no entry {name!r} in the schedule files{suggest(name, known)}"
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


def backend_now(store: Backend) -> datetime:
    """The backend's clock: the times every node agrees on."""
    return datetime.fromtimestamp(store.server_time(), UTC)


# --- trigger


class Triggered(NamedTuple):
    """What a trigger did, and the entry's controls when they name why (a pause, a busy run)."""

    result: TriggerResult
    control: EntryControl


@dataclass(frozen=True, slots=True)
class TriggerAsk:
    """A trigger as asked: arguments of its own (None: the entry's), a key, --force."""

    args: list[Any] | None = None
    kwargs: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    force: bool = False


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise BadRequest(
            "idempotency_key",
            "--idempotency-key",
            f"{key!r} cannot be part of a run id: give 1 to 200 letters, digits, '_', '.', ':' "
            "or '-' (such as incident-4711)",
        )


def trigger(controls: Controls, now: datetime, entry: Entry, ask: TriggerAsk, by: str) -> Triggered:
    """Publish one manual run of `entry` at `now` (the backend's clock), in one atomic step
    retried with its request id."""
    check_idempotency_key(ask.idempotency_key)
    if ask.args is not None:
        entry = replace(entry, args=tuple(ask.args))
    if ask.kwargs is not None:
        entry = replace(entry, kwargs=dict(ask.kwargs))
    now = now.replace(microsecond=0)
    run_id = manual_run_id(entry.name, ask.idempotency_key)
    run = encode_run(entry, run_id, now, now, RunKind.MANUAL, socket.gethostname())
    request = Trigger(
        entry=entry.name,
        run_id=run_id,
        queue=run.destination.queue,  # an AMQP entry's: the outbox
        celery=isinstance(run.destination, CeleryQueue),
        priority=entry.priority,
        body=run.body,
        request_id=secrets.token_hex(16),
        by=by,
        guard=entry.guard,
        idempotency_key=ask.idempotency_key,
        force=ask.force,
    )
    result = with_retries(lambda: controls.trigger(request))
    control = NO_CONTROL  # read to name the pause or the busy run in what is said
    if result.status in (TriggerStatus.REFUSED_PAUSED, TriggerStatus.HELD):
        control = controls.load_controls([entry.name]).get(entry.name, NO_CONTROL)
    return Triggered(result, control)


class TriggerWords(NamedTuple):
    """How a trigger's outcome is told: the run id (None when nothing went out or was held), a
    note on what happened, and whether it was refused."""

    run_id: str | None
    note: str | None
    refused: bool


def dropped_words(entry: str, dropped: str) -> str | None:
    """What a published trigger says of the stale busy mark it dropped, if it dropped one."""
    if not dropped:
        return None
    return (
        f"dropped a stale busy mark: run {dropped} of {entry} has not ended within the entry's "
        "overlap_timeout, so it no longer counts as running; published beside it"
    )


def trigger_words(done: Triggered, entry: str) -> TriggerWords:
    result, pause, busy = done.result, done.control.pause, done.control.busy
    status = result.status
    if status is TriggerStatus.PUBLISHED:
        return TriggerWords(result.run_id, dropped_words(entry, result.detail), False)
    if status is TriggerStatus.HELD:
        running = busy.run_id if busy else result.detail
        note = (
            f"held: {entry} is busy ({running}) under overlap: buffer_one; the run is published "
            "when that one ends"
        )
        return TriggerWords(result.run_id, note, False)
    if status is TriggerStatus.DUPLICATE:
        note = (
            f"duplicate: this idempotency key was already used for {result.run_id}; nothing "
            "more was published"
        )
        return TriggerWords(result.run_id, note, False)
    if status is TriggerStatus.REFUSED_PAUSED:
        why = pause_text(pause) if pause else result.detail
        note = (
            f"{entry} is paused ({why}); nothing was published: resume it with `beatd resume`, "
            "or add --force"
        )
    elif status is TriggerStatus.REFUSED_HELD:
        note = (
            f"{entry} already holds manual run {result.detail}, to publish when its busy run "
            "ends (overlap: buffer_one keeps one); nothing was published: wait for it to go out, "
            "or add --force to publish now beside the busy run"
        )
    else:
        note = (
            f"{entry} is busy: run {result.detail} has not ended, and its overlap is skip; "
            "nothing was published: wait for it, or add --force"
        )
    return TriggerWords(None, note, True)


# --- pause and resume


def pause_text(pause: Pause) -> str:
    """`by NAME, reason "TEXT", until TIME` (or `until resumed`)."""
    until = slot_text(pause.until) if pause.until is not None else "resumed"
    return f"by {pause.by}, reason {pause.reason!r}, since {slot_text(pause.at)}, until {until}"


def select_entries(
    names: Sequence[str], everything: bool, pattern: str | None, known: Sequence[str]
) -> list[str]:
    """ENTRY..., all or a glob (exactly one of them) among `known`."""
    given = [bool(names), everything, pattern is not None]
    if sum(given) != 1:
        raise BadRequest(
            "entries", "ENTRY/--all/--match", "give entry names, --all or --match GLOB: exactly one"
        )
    if everything:
        return sorted(known)
    if pattern is not None:
        chosen = sorted(name for name in known if fnmatch.fnmatchcase(name, pattern))
        if not chosen:
            raise UnknownName("match", "--match", f"no entry matches {pattern!r}")
        return chosen
    for name in names:
        if name not in known:
            raise UnknownName(
                "entries", "ENTRY", f"no entry {name!r}{suggest(name, sorted(known))}"
            )
    return list(dict.fromkeys(names))


def parse_until(text: str, now: datetime) -> datetime | timedelta:
    """A pause's end: a duration from the backend's now, or an ISO 8601 time with an offset."""
    try:
        return read_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            "until",
            "--until",
            f"cannot read {text!r}: give a duration from now (such as 8h or 2d) or an ISO 8601 "
            "time with an offset (such as 2026-12-05T07:00:00Z)",
        ) from None
    if moment.tzinfo is None:
        raise BadRequest(
            "until",
            "--until",
            f"{text!r} has no offset, so it could mean any zone: add one (Z for UTC, or such as "
            "+01:00)",
        )
    if moment <= now:
        raise BadRequest(
            "until",
            "--until",
            f"{text!r} is already past, so the pause would cover nothing: give a time to come "
            "(or a duration from now, such as 8h)",
        )
    return moment.astimezone(UTC)


def check_reason(reason: str) -> None:
    if not reason.strip():
        raise BadRequest(
            "reason", "--reason", "say why (it is shown by beatd status and the audit log)"
        )


def pause(
    controls: Controls,
    names: Sequence[str],
    reason: str,
    until: datetime | timedelta | None,
    by: str,
) -> dict[str, Pause | None]:
    """Pause `names`; each one's pause as stored now (None: not paused, it did not take)."""
    check_reason(reason)
    controls.pause(names, reason, until, by)
    now = controls.load_controls(names)
    return {name: now[name].pause if name in now else None for name in names}


def pause_object(paused: Pause | None) -> dict[str, Any] | None:
    """A pause as JSON: when, until when (None: until resumed), why and by whom."""
    if paused is None:
        return None
    until = slot_text(paused.until) if paused.until is not None else None
    return {"at": slot_text(paused.at), "until": until, "reason": paused.reason, "by": paused.by}


def paused_now(controls: Controls) -> dict[str, Pause]:
    return {n: c.pause for n, c in controls.load_controls().items() if c.pause is not None}


def resume(controls: Controls, now: datetime, chosen: Sequence[str], by: str) -> list[str]:
    """Lift the pauses of `chosen` (`now`: the backend's clock); what was done to each, in
    words."""
    pauses = paused_now(controls)
    records = controls.resume(chosen, by)
    lifted = {record.entry for record in records}
    return [resume_text(name, pauses.get(name) if name in lifted else None, now) for name in chosen]


def resume_text(name: str, lifted: Pause | None, now: datetime) -> str:
    """What resuming `name` did: lifted its pause, cleared one that had lapsed, or nothing."""
    if lifted is None:
        return f"{name} was not paused"
    if lifted.until is not None and lifted.until <= now:
        return (
            f"{name} was no longer paused: its pause ended at {slot_text(lifted.until)}; "
            "the lapsed pause was cleared"
        )
    return f"resumed {name}"
