"""The status report both ways in show (`beatd status --json`, `GET /v1/status`): the
leader, the nodes (their records, beatd.nodes), each entry's persisted position and next due
time, how its last run ended, its pause, busy mark and held run, and the queues. Everything
comes from the backend (runtime entries included, `source` api) and the schedule files, so it
is the same whichever node asks; the run counts (due, published, late, missed) are each
scheduler's own and are added by whoever knows them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from beatd.backends import Backend, LeaderInfo
from beatd.config import Config, ConfigError
from beatd.config.convert import suggest
from beatd.config.model import Entry
from beatd.controls import EntryControl, Overlap
from beatd.core import COUNT_FIELDS, RunCounts
from beatd.errors import BeatdError
from beatd.history import EntrySummary, HistoryQuery, RunKind
from beatd.nodes import NodeRole
from beatd.runtime_entries import RuntimeEntry
from beatd.state import EntryState
from beatd.timetext import seconds, stamp

_PAGE = 1000  # runtime entries read at a time
SCHEDULED_KINDS = frozenset({RunKind.SCHEDULED, RunKind.CAUGHT_UP})  # not manual, not backfill
HELD_READ_LIMIT = 20  # a buffer_one entry's newest runs read for its last published slot


@dataclass
class RunTotals:
    """Counts of one entry, summed over the schedulers whose counts were read."""

    due: int = 0
    published: int = 0
    late: int = 0
    missed: Counter[str] = field(default_factory=Counter)


def totals_of(counts: RunCounts) -> dict[str, RunTotals]:
    """One scheduler's own counts, as RunTotals per entry."""
    totals = {}
    for entry, values in list(counts.items()):
        named = dict(zip(COUNT_FIELDS, values, strict=True))
        missed = Counter(
            {
                f.removeprefix("missed_"): n
                for f, n in named.items()
                if f.startswith("missed_") and n
            }
        )
        totals[entry] = RunTotals(named["due"], named["published"], named["late"], missed)
    return totals


class UnknownEntry(ValueError):
    """An entry asked for by name that neither the schedule files nor the backend know."""


@dataclass
class StatusReport:
    """The report as JSON, and what could not be read (the rest still could)."""

    report: dict[str, Any]
    warnings: list[str]


def status_report(
    store: Backend,
    config: Config | None,
    asked: Sequence[str],
    limit: int | None,
    counts: dict[str, RunTotals] | None,
    now: datetime,
) -> StatusReport:
    """Read everything the report shows from `store` and build it (BeatdError when the
    backend cannot be read, UnknownEntry for a name in `asked` nobody knows)."""
    info = store.leader()
    warnings: list[str] = []
    known_total: int | None = None  # how many entries, when `entries` holds the shown ones only
    if asked:
        files = config.entries if config is not None else {}
        runtime, stored = read_asked_runtime(store, [n for n in asked if n not in files], warnings)
        entries = known_entries(config, runtime, any_runtime=stored)
    elif limit is not None:
        listed = read_runtime_stored(store, warnings)
        entries, known_total = first_entries(config, listed, limit, warnings)
    else:
        entries = known_entries(config, read_runtime(store, warnings))
    if entries is None:  # the names are the persisted states': every one is read
        states = store.load_states()
        names, total = entry_names(entries, states, asked, limit)
    else:  # known without the backend: only the states of those shown are read
        names, total = entry_names(entries, {}, asked, limit)
        total = total if known_total is None else known_total
        states = store.states_of(names)
    summaries = read_summaries(store, names, warnings)
    held_published = read_held_published(store, entries, states, names)
    controls = store.load_controls(names) if names else {}
    queues = queue_rows(store)
    nodes = node_rows(store, info, warnings)
    rows = entry_rows(entries, states, names, counts, now, controls)
    add_held_published(rows, held_published)
    add_summaries(rows, summaries)
    add_controls(rows, controls, now)
    report = {
        "backend": store.url,
        "now": _time(now),
        "config": config.fingerprint if config is not None else None,
        "leader": leader_row(info, config),
        "nodes": nodes,
        "entries": rows,
        "entries_total": total,
        "queues": queues,
    }
    return StatusReport(report, warnings)


def read_runtime_stored(store: Backend, warnings: list[str]) -> dict[str, RuntimeEntry]:
    """Every runtime entry as stored, not built; none, with a warning, when they cannot be
    read."""
    stored: dict[str, RuntimeEntry] = {}
    after = ""
    try:
        while page := store.list_entries(after, _PAGE):
            stored.update((s.name, s) for s in page)
            after = page[-1].name
    except BeatdError as exc:
        warnings.append(f"cannot read the runtime entries: {exc}")
        return {}
    return stored


def read_runtime(store: Backend, warnings: list[str]) -> dict[str, Entry]:
    """Every runtime entry, built; none, with a warning, when they cannot be read."""
    runtime: dict[str, Entry] = {}
    for name, stored in read_runtime_stored(store, warnings).items():
        if (entry := built(stored, warnings)) is not None:
            runtime[name] = entry
    return runtime


def built(stored: RuntimeEntry, warnings: list[str]) -> Entry | None:
    """The entry a runtime entry schedules; None, with a warning, when it cannot be built."""
    try:
        return stored.entry()
    except ConfigError as exc:
        warnings.append(f"runtime entry {stored.name} cannot be shown: {exc}")
        return None


def first_entries(
    config: Config | None, listed: Mapping[str, RuntimeEntry], limit: int, warnings: list[str]
) -> tuple[dict[str, Entry] | None, int]:
    """The first `limit` entries by name of the schedule files and the runtime entries of other
    names, building those runtime entries only (building is the costly part of reading one),
    and how many entries there are: a runtime entry that cannot be built is left out, with a
    warning, when it comes within the first `limit`, and counted otherwise. None when neither
    is known (as known_entries)."""
    if config is None and not listed:
        return None, 0
    files = config.entries if config is not None else {}
    names = sorted({*files, *listed})
    shown: dict[str, Entry] = {}
    left_out = 0
    for name in names:
        if len(shown) >= limit:
            break
        entry = files[name] if name in files else built(listed[name], warnings)
        if entry is None:
            left_out += 1
        else:
            shown[name] = entry
    return shown, len(names) - left_out


def read_asked_runtime(
    store: Backend, asked: Sequence[str], warnings: list[str]
) -> tuple[dict[str, Entry], bool]:
    """The runtime entries of the names `asked` only, built (not every one: 100,000 took a
    minute), and whether the backend holds any runtime entry at all."""
    runtime: dict[str, Entry] = {}
    try:
        found = store.get_entries(asked)  # one read, whatever the number asked
        for name in dict.fromkeys(asked):
            if (stored := found.get(name)) is None:
                continue
            try:
                runtime[name] = stored.entry()
            except ConfigError as exc:
                warnings.append(f"runtime entry {name} cannot be shown: {exc}")
        return runtime, bool(runtime) or bool(store.list_entries("", 1))
    except BeatdError as exc:
        warnings.append(f"cannot read the runtime entries: {exc}")
        return runtime, bool(runtime)


def known_entries(
    config: Config | None, runtime: Mapping[str, Entry], *, any_runtime: bool = False
) -> Mapping[str, Entry] | None:
    """The schedule files' entries and the runtime entries of other names; None when neither
    is known (no files given, no runtime entry)."""
    if config is None and not runtime and not any_runtime:
        return None
    files = config.entries if config is not None else {}
    return {**runtime, **files}


def entry_names(
    entries: Mapping[str, Entry] | None,
    states: dict[str, EntryState],
    asked: Sequence[str],
    limit: int | None,
) -> tuple[list[str], int]:
    """The entries to show: those `asked` (all when none), known ones (or persisted ones when no
    entry is known), in name order, at most `limit`; and how many there were."""
    known = sorted(entries) if entries is not None else sorted(states)
    for name in asked:
        if name not in known:
            where = "the schedule files" if entries is not None else "the backend's entry states"
            raise UnknownEntry(f"no entry {name!r} in {where}{suggest(name, known)}")
    names = [name for name in known if name in set(asked)] if asked else known
    return names[:limit], len(names)


def read_held_published(
    store: Backend,
    entries: Mapping[str, Entry] | None,
    states: dict[str, EntryState],
    names: Sequence[str],
) -> dict[str, datetime]:
    """The newest scheduled slot the history holds published for each `buffer_one` entry (of
    `names`, when their entries are known): a run's final outcome publishes a held slot
    behind the leader's back, and the persisted state learns of it at the leader's next write
    of the entry only. Empty when the history cannot be read (read_summaries says so)."""
    if entries is None:
        return {}
    newest: dict[str, datetime] = {}
    try:
        for name in names:
            if entries[name].overlap is not Overlap.BUFFER_ONE:
                continue
            state = states.get(name)
            since = state.last_published if state is not None else None
            query = HistoryQuery(entry=name, since=since, limit=HELD_READ_LIMIT)
            slots = [r.slot for r in store.runs(query) if r.kind in SCHEDULED_KINDS]
            if slots:
                newest[name] = max(slots)
    except BeatdError:
        return {}
    return newest


def add_held_published(rows: list[dict[str, Any]], newest: dict[str, datetime]) -> None:
    for row in rows:
        slot = newest.get(row["entry"])
        shown = _time(slot)
        if shown is not None and (row["last_published"] or "") < shown:
            row["last_published"] = shown


def read_summaries(
    store: Backend, names: Sequence[str], warnings: list[str]
) -> dict[str, EntrySummary] | None:
    """The entries' summaries; None, with a warning, when the history cannot be read."""
    if not names:
        return {}
    try:
        return store.summaries(names)
    except BeatdError as exc:
        warnings.append(f"cannot read the run history: {exc}")
        return None


def entry_rows(
    entries: Mapping[str, Entry] | None,
    states: dict[str, EntryState],
    names: Sequence[str],
    counts: dict[str, RunTotals] | None,
    now: datetime,
    controls: Mapping[str, EntryControl] | None = None,
) -> list[dict[str, Any]]:
    """One row per entry of `names`: its persisted state and next due time, the first slot no
    pause covers (a covered slot ends missed, never published; None while paused till
    resumed)."""
    rows = []
    for name in names:
        state = states.get(name)
        row: dict[str, Any] = {
            "entry": name,
            "last_published": _time(state.last_published if state else None),
            "horizon": _time(state.last_slot if state else None),
            "next_due": None,
            "overdue_seconds": None,
            "adopted": state is not None,
            "source": None,
        }
        if entries is not None:
            entry = entries[name]
            row["source"] = entry.source
            row["adopted"] = state is not None and state.identity == entry.identity
            # A leader starts an entry new to it (or with a changed schedule) from now.
            after = state.last_slot if state is not None and row["adopted"] else now
            control = controls.get(name) if controls is not None else None
            slot = next_unpaused(entry, entry.schedule.next_after(after), control)
            if slot is not None:
                due = entry.due_for(slot)
                row["next_due"] = _time(due)
                if now - due > entry.misfire_grace:
                    row["overdue_seconds"] = round((now - due).total_seconds(), 3)
        total = counts.get(name, RunTotals()) if counts is not None else None
        row["due"] = total.due if total else None
        row["published"] = total.published if total else None
        row["late"] = total.late if total else None
        row["missed"] = dict(sorted(total.missed.items())) if total else None
        rows.append(row)
    return rows


NEXT_DUE_WALK = 1000  # slots walked past pauses to find the next due, at most


def next_unpaused(
    entry: Entry, slot: datetime | None, control: EntryControl | None
) -> datetime | None:
    """The first slot from `slot` whose due time no pause of `control` (in force or lifted)
    covers; None when there is none, or a pause till resumed covers it."""
    pauses = [] if control is None else [*filter(None, [control.pause]), *control.lifted]
    jitter = entry.jitter or timedelta(0)
    for _ in range(NEXT_DUE_WALK):
        if slot is None:
            return None
        due = entry.due_for(slot)
        pause = next((p for p in pauses if p.covers(due)), None)
        if pause is None:
            return slot
        if pause.until is None:
            return None
        # the first slot whose due (the slot plus a jitter in [0, jitter)) may pass the pause
        slot = entry.schedule.next_after(max(slot, pause.until - jitter - _JUST_BEFORE))
    return slot


_JUST_BEFORE = timedelta(microseconds=1)


def add_summaries(rows: list[dict[str, Any]], summaries: dict[str, EntrySummary] | None) -> None:
    """Each row's last finished run from the history (None: unknown, the history unreadable)."""
    for row in rows:
        summary = summaries.get(row["entry"]) if summaries is not None else None
        row["last_status"] = summary.last_status if summary else None
        row["last_finished"] = _time(summary.last_finished_at if summary else None)
        row["last_success"] = _time(summary.last_success_at if summary else None)
        row["last_failure"] = _time(summary.last_failure_at if summary else None)
        duration = summary.last_duration if summary else None
        row["last_duration_seconds"] = seconds(duration)
        row["consecutive_failures"] = summary.consecutive_failures if summary else None


def add_controls(
    rows: list[dict[str, Any]], controls: dict[str, EntryControl] | None, now: datetime
) -> None:
    """Each row's pause (who, why, until), busy mark and held run (None: none, or unknown). A
    pause whose `until` has passed is over, though still stored; a paused entry is not overdue:
    its slots end missed (paused), not late."""
    for row in rows:
        control = controls.get(row["entry"]) if controls is not None else None
        pause = control.pause if control else None
        if pause is not None and pause.until is not None and pause.until <= now:
            pause = None
        if pause is not None:
            row["overdue_seconds"] = None
        busy = control.busy if control else None
        held = control.held if control else None
        row["paused"] = (
            None
            if pause is None
            else {
                "at": _time(pause.at),
                "until": _time(pause.until),
                "reason": pause.reason,
                "by": pause.by,
            }
        )
        row["busy"] = None if busy is None else {"run_id": busy.run_id, "since": _time(busy.since)}
        row["held"] = None if held is None else {"run_id": held.run_id, "slot": _time(held.slot)}


def queue_rows(backend: Backend) -> list[dict[str, Any]]:
    depths = backend.queue_depths()
    letters = backend.dead_letter_counts()  # counted, never read
    return [
        {"queue": q, "depth": depths.get(q, 0), "dead_letters": letters.get(q, 0)}
        for q in sorted({*depths, *letters})
    ]


def node_rows(
    store: Backend, info: LeaderInfo | None, warnings: list[str]
) -> list[dict[str, Any]] | None:
    """Every live node's record (beatd.nodes), by name, compared with the lease holder's (its
    configuration and timezone database); None, with a warning, when they cannot be read."""
    try:
        records = store.nodes()
    except BeatdError as exc:
        warnings.append(f"cannot read the node records: {exc}")
        return None
    holder = info.node if info is not None else None
    leader = next((r for r in records if r.node == holder and r.role is NodeRole.LEADER), None)
    rows = []
    for record in records:
        row = record.row(leader)
        row["last_seen"] = _time(record.last_seen)
        rows.append(row)
    return rows


def leader_row(info: LeaderInfo | None, config: Config | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "node": info.node,
        "epoch": info.epoch,
        "lease_left_seconds": round(info.expires_in, 3),
        "config": info.config_hash or None,
        "same_config": None if config is None else info.config_hash == config.fingerprint,
    }


def _time(moment: datetime | None) -> str | None:
    return stamp(moment.replace(microsecond=0)) if moment is not None else None
