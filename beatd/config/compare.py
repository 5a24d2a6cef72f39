"""Two schedule sets compared: entries added, removed and changed field by field, and the runs
that appear or disappear in a window. Pure: `beatd diff` renders it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from beatd.config.model import Config, Entry

RUN_LIMIT = 10_000  # slots listed per entry and window; more are counted, not listed
_NOT_COMPARED = ("name", "source", "schedule")


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class RunChanges:
    entry: str
    appear: tuple[datetime, ...]
    disappear: tuple[datetime, ...]
    # With more than RUN_LIMIT slots in the window on either side, both sides are compared only
    # up to the earlier side's last listed slot (a later slot on one side is not a difference).
    cut: datetime | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: dict[str, tuple[FieldChange, ...]] = field(default_factory=dict)
    runs: tuple[RunChanges, ...] = ()

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def compare(old: Config, new: Config, start: datetime, window: timedelta) -> Comparison:
    """`new` against `old`; runs are the slots in (start, start + window] of enabled entries."""
    added = tuple(sorted(set(new.entries) - set(old.entries)))
    removed = tuple(sorted(set(old.entries) - set(new.entries)))
    changed = {}
    for name in sorted(set(old.entries) & set(new.entries)):
        changes = field_changes(old.entries[name], new.entries[name])
        if changes:
            changed[name] = changes
    runs = []
    for name in sorted(set(old.entries) | set(new.entries)):
        change = run_changes(name, old.entries.get(name), new.entries.get(name), start, window)
        if change is not None:
            runs.append(change)
    return Comparison(added, removed, changed, tuple(runs))


def run_changes(
    name: str, old: Entry | None, new: Entry | None, start: datetime, window: timedelta
) -> RunChanges | None:
    """The runs of one entry that appear or disappear, compared up to the earlier cut."""
    before, cut_before = _slots(old, start, window)
    after, cut_after = _slots(new, start, window)
    if before == after:
        return None
    cuts = [cut for cut in (cut_before, cut_after) if cut is not None]
    cut = min(cuts) if cuts else None
    if cut is not None:
        before = {t for t in before if t <= cut}
        after = {t for t in after if t <= cut}
    appear, disappear = tuple(sorted(after - before)), tuple(sorted(before - after))
    return RunChanges(name, appear, disappear, cut)


def field_changes(old: Entry, new: Entry) -> tuple[FieldChange, ...]:
    """The fields whose values differ, the schedule first (as its canonical spec)."""
    changes = []
    if old.schedule.spec != new.schedule.spec:
        changes.append(FieldChange("schedule", old.schedule.spec, new.schedule.spec))
    for attribute in fields(Entry):
        name = attribute.name
        if name in _NOT_COMPARED:
            continue
        before, after = _shown(getattr(old, name)), _shown(getattr(new, name))
        if before != after:
            changes.append(FieldChange(name, before, after))
    return tuple(changes)


def _shown(value: Any) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if hasattr(value, "items"):
        return repr(dict(value))
    return repr(value) if not isinstance(value, str) else value


def _slots(
    entry: Entry | None, start: datetime, window: timedelta
) -> tuple[set[datetime], datetime | None]:
    """The entry's slots in the window, and the last one listed if more were left out."""
    if entry is None or not entry.enabled:
        return set(), None
    end = start + window
    slots: set[datetime] = set()
    last = None
    t = entry.schedule.next_after(start)
    while t is not None and t <= end:
        if len(slots) == RUN_LIMIT:
            return slots, last
        slots.add(t)
        last, t = t, entry.schedule.next_after(t)
    return slots, None
