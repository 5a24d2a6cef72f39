"""The console's view models: the API's JSON turned into what a page shows, in the words and
units of `beatd status`, `beatd history` and `beatd next` (beatd.timetext). Pure: each takes
the API's answer (and `now`), and returns plain values for a template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

from flask import url_for

from beatd.console.chart import ChartRun
from beatd.timetext import relative, span_text


def parse_stamp(text: str | None) -> datetime | None:
    """An API time (`2026-12-05T01:30:00Z`, or with an offset) as aware UTC; None for none."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_text(text: str | None) -> str | None:
    """A time of the API (any ISO form) as the console writes it: `2026-12-05T01:30:00Z`."""
    moment = parse_stamp(text)
    return None if moment is None else f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def relative_text(text: str | None, now: datetime) -> str:
    """ "in 4 min", "3 h ago"; "-" for no time."""
    moment = parse_stamp(text)
    return "-" if moment is None else relative(moment, now)


def seconds_text(value: float | None) -> str:
    """A duration or delay in seconds as `beatd history` shows it ("412 ms", "4 min 12 s")."""
    return span_text(None if value is None else timedelta(seconds=value))


@dataclass(frozen=True, slots=True)
class Moment:
    """A time shown twice: absolute (UTC, for the record) and relative (for people)."""

    stamp: str
    relative: str

    @classmethod
    def of(cls, text: str | None, now: datetime) -> Moment | None:
        moment = parse_stamp(text)
        if moment is None:
            return None
        return cls(f"{moment:%Y-%m-%dT%H:%M:%SZ}", relative(moment, now))


def name_in_url(name: str) -> str:
    """An entry's name (or a run's id) as a console URL carries it: its slashes sent as %2F, so
    that no browser resolves a stored name's "." or ".." parts (`x/../../dead/delete-all`) to
    another page (beatd.console.app.EntryName decodes it back)."""
    return quote(name, safe=":@")


def entry_links(names: Sequence[str]) -> list[str]:
    """Each entry's page URL, built once for all (`url_for` per row was a fifth of the
    entries page's time)."""
    marker = "_"
    base = url_for("ui.entry", name=marker)[: -len(marker)]
    return [base + name_in_url(name) for name in names]


class HistoryRow(NamedTuple):
    """One record of an entry's history: a run, or a range of missed slots."""

    kind: str  # "run" or "missed"
    slot: str  # the run's slot, or the range's first slot (and last, when more)
    outcome: str  # the run's status, or "missed (REASON)"
    kind_detail: str  # scheduled, manual, backfill, caught_up; the missed slot count
    duration: str
    delay: str
    attempts: int
    error: str  # the last attempt's error, if any
    failed: bool


FAILED_STATUSES = frozenset({"failed", "dead_lettered", "expired", "crashed", "lost", "overdue"})


def history_rows(records: Sequence[Mapping[str, Any]]) -> list[HistoryRow]:
    """The records of `GET /v1/history` (newest first) as table rows."""
    rows = []
    for record in records:
        if record["type"] == "run":
            attempts = record.get("attempts") or []
            last = attempts[-1] if attempts else {}
            error = " ".join(filter(None, [last.get("error_type"), last.get("error")]))
            rows.append(
                HistoryRow(
                    "run",
                    record["slot"],
                    record["status"],
                    record["kind"],
                    seconds_text(record.get("duration_seconds")),
                    seconds_text(record.get("delay_seconds")),
                    len(attempts),
                    error or (last.get("reason") or ""),
                    record["status"] in FAILED_STATUSES,
                )
            )
        else:
            many = record["slots"] > 1
            slot = (
                f"{record['first_slot']} … {record['last_slot']}" if many else record["first_slot"]
            )
            plural = "s" if many else ""
            pause = record.get("pause") or {}
            why = f"missed ({record['reason']})"
            rows.append(
                HistoryRow(
                    "missed", slot, why, f"{record['slots']} slot{plural}", "-", "-", 0,
                    f"paused by {pause['by']}: {pause['reason']}" if pause else "", True,
                )
            )  # fmt: skip
    return rows


def chart_runs(records: Sequence[Mapping[str, Any]]) -> list[ChartRun]:
    """The runs among `GET /v1/history`'s records (newest first), oldest first for the chart."""
    runs = [
        ChartRun(
            str(record["slot"]),
            str(record["status"]),
            record.get("duration_seconds"),
            record.get("delay_seconds"),
        )
        for record in records
        if record["type"] == "run"
    ]
    runs.reverse()
    return runs


class NextRun(NamedTuple):
    slot: str
    relative: str
    dst_rule: str | None
    dst_note: str | None


def next_run_rows(slots: Sequence[Any], now: datetime) -> list[NextRun]:
    """`GET /v1/next-runs`' slots: plain stamps, or {"slot", "dst"} objects with DST marks."""
    rows = []
    for slot in slots:
        text, dst = (slot, None) if isinstance(slot, str) else (slot["slot"], slot.get("dst"))
        rows.append(
            NextRun(
                text,
                relative_text(text, now),
                dst["rule"] if dst else None,
                dst["note"] if dst else None,
            )
        )
    return rows


class PauseNote(NamedTuple):
    reason: str
    by: str
    at: str
    until: str | None  # None: till resumed


def pause_note(audit: Sequence[Mapping[str, Any]], now: datetime) -> PauseNote | None:
    """The pause in force, from the entry's audit log (newest first): the newest record that
    changed its pause (a pause, `pause_after_failures`, a resume); a pause whose end has passed
    is over."""
    for record in audit:
        after = record.get("after") or {}
        if "pause" not in after:
            continue  # a trigger, a backfill, an edit: no change to the pause
        pause = after["pause"]
        if not isinstance(pause, Mapping):
            return None
        until = parse_stamp(pause.get("until"))
        if until is not None and until <= now:
            return None
        return PauseNote(
            str(pause.get("reason", "")),
            str(pause.get("by") or record["by"]),
            utc_text(pause.get("at") or record["at"]) or "",
            utc_text(pause.get("until")),
        )
    return None


class Page(NamedTuple):
    """Where a page of a list sits: offsets of the first, previous, next and last pages
    (None where there is none), and the rows shown, counted from 1."""

    first: int | None
    previous: int | None
    next: int | None
    last: int | None
    shown_from: int
    shown_to: int
    total: int


def paging(total: int, offset: int, limit: int) -> Page:
    """A page past the end shows no rows (0-0) and leads back to the first and last pages."""
    last = max(0, (total - 1) // limit * limit)
    past_end = offset >= total
    return Page(
        0 if offset > 0 else None,
        min(max(0, offset - limit), last) if offset > 0 else None,
        offset + limit if offset + limit < total else None,
        last if offset != last and (offset < last or past_end) else None,
        0 if past_end else offset + 1,
        0 if past_end else min(offset + limit, total),
        total,
    )


def errors_by_field(errors: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The API's errors grouped by field ("" for those about no one field), in order."""
    grouped: dict[str, list[str]] = {}
    for error in errors:
        grouped.setdefault(error.get("field") or "", []).append(str(error["message"]))
    return grouped
