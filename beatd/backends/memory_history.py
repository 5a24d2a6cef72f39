"""The in-memory backend's run history (`RunHistory` in beatd.backends.base): the records held
in the process's store beside its queues, and written under the same lock as the queue step
they go with, so a record never disagrees with the queue.

`History` is the records and the rules that change them (plain data, no lock, no clock: the
caller passes `at`); `MemoryHistory` is the `RunHistory` role over a store's `History`, mixed
into `MemoryBackend`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from beatd.backends.base import Lease, Outgoing, StateWrite, is_celery_run
from beatd.history import (
    FAILED_FINALLY,
    FINAL,
    LOST,
    Attempt,
    Ending,
    EntrySummary,
    HistoryQuery,
    MissedRecord,
    MissedSlots,
    Retention,
    RunKind,
    RunRecord,
)
from beatd.outcomes import Outcome

MissedKey = tuple[str, str, datetime]  # (entry, reason, first)


def _newest_first(record: RunRecord) -> tuple[datetime, str]:
    return record.published_at, record.id


def _missed_key(record: MissedRecord) -> MissedKey:
    return record.slots.entry, record.slots.reason, record.slots.first


def _missed_order(record: MissedRecord) -> tuple[datetime, str, str, datetime]:
    return (record.recorded_at, *_missed_key(record))


def summarize(previous: EntrySummary | None, entry: str, attempt: Attempt) -> EntrySummary:
    """The entry's summary once `attempt`, which ended its run, is counted."""
    assert attempt.ended_at is not None and attempt.outcome is not None
    at, outcome = attempt.ended_at, attempt.outcome
    success = outcome == Outcome.SUCCEEDED
    failed = outcome in FAILED_FINALLY
    before = previous.consecutive_failures if previous is not None else 0
    return EntrySummary(
        entry,
        outcome,
        at,
        attempt.duration,
        at if success else (previous.last_success_at if previous else None),
        at if failed else (previous.last_failure_at if previous else None),
        0 if success else before + int(failed),
    )


@dataclass
class History:
    """One store's run records, missed-slot records and entry summaries."""

    runs: dict[str, RunRecord] = field(default_factory=dict)
    missed: dict[MissedKey, MissedRecord] = field(default_factory=dict)
    summaries: dict[str, EntrySummary] = field(default_factory=dict)
    trimmed: dict[str, datetime] = field(default_factory=dict)  # `RunHistory.trimmed_up_to`

    # --- what commit writes ------------------------------------------------------------------

    def published(self, message: Outgoing, lease: Lease | None, at: datetime) -> None:
        """Record a published run; without a lease (a manual, backfilled or held run published
        by an operator's or a worker's step) with no node and epoch 0."""
        if message.slot is None or message.id in self.runs:
            return
        due = message.due if message.due is not None else message.slot
        celery = is_celery_run(message.destination)
        node, epoch = (lease.node, lease.epoch) if lease is not None else ("", 0)
        self.runs[message.id] = RunRecord(
            message.id, message.entry, message.slot, due, at, node, epoch,
            message.kind, celery, audit=message.audit,
        )  # fmt: skip

    def missed_by(self, write: StateWrite, lease: Lease, at: datetime) -> None:
        for slots in write.missed:
            self.missed_one(slots, lease, at)

    def missed_one(self, slots: MissedSlots, lease: Lease | None, at: datetime) -> None:
        key = (slots.entry, slots.reason, slots.first)
        if key not in self.missed:
            node, epoch = (lease.node, lease.epoch) if lease is not None else ("", 0)
            self.missed[key] = MissedRecord(slots, at, node, epoch)

    # --- attempts ----------------------------------------------------------------------------

    def start(self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime) -> bool:
        """Append an attempt, ending an open one `lost` first; False for an unknown run or a
        repeat of the open attempt's start."""
        held = self.runs.get(run_id)
        if held is None:
            return False
        attempts = list(held.attempts)
        if attempts and attempts[-1].outcome is None:
            if (attempts[-1].consumer, attempts[-1].started_at) == (consumer, at):
                return False
            attempts[-1] = replace(attempts[-1], ended_at=at, outcome=LOST)
        attempts.append(Attempt(len(attempts) + 1, consumer, host, pid, at))
        self.runs[run_id] = replace(held, attempts=tuple(attempts))
        return True

    def end(self, run_id: str, ending: Ending, at: datetime) -> bool:
        """End the open attempt as `ending` says, counting a final one in the summary; False
        when the run is unknown or has no open attempt."""
        held = self.runs.get(run_id)
        if held is None or not held.attempts or held.attempts[-1].outcome is not None:
            return False
        last = replace(
            held.attempts[-1],
            ended_at=at,
            outcome=ending.outcome.value,
            reason=ending.reason,
            error_type=ending.error_type,
            error=ending.error,
        )
        self.runs[run_id] = replace(held, attempts=(*held.attempts[:-1], last))
        if ending.outcome in FINAL:
            self.summaries[held.entry] = summarize(self.summaries.get(held.entry), held.entry, last)
        return True

    def event_end(self, run_id: str, ending: Ending, at: datetime) -> bool:
        """`end` for a task event: an attempt is started at `at` when none is open."""
        held = self.runs.get(run_id)
        if held is None:
            return False
        last = held.attempts[-1] if held.attempts else None
        if last is not None and (last.ended_at, last.outcome) == (at, ending.outcome.value):
            return False  # the same event again
        if last is None or last.outcome is not None:
            self.start(run_id, "", "", None, at)
        return self.end(run_id, ending, at)

    # --- marks ---------------------------------------------------------------------------------

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        held = self.runs.get(run_id)
        if held is None or held.overdue_at is not None:
            return False
        if held.finished_at is not None and held.finished_at <= at:
            return False  # finished by its deadline
        self.runs[run_id] = replace(held, overdue_at=at)
        return True

    def mark_missed_overdue(self, key: MissedKey, at: datetime) -> bool:
        held = self.missed.get(key)
        if held is None or held.overdue_at is not None:
            return False
        self.missed[key] = replace(held, overdue_at=at)
        return True

    def received(self, run_id: str, at: datetime) -> bool:
        held = self.runs.get(run_id)
        if held is None or held.received_at is not None:
            return False
        self.runs[run_id] = replace(held, received_at=at)
        return True

    # --- reads ---------------------------------------------------------------------------------

    def select(self, query: HistoryQuery) -> list[RunRecord]:
        chosen = [
            r
            for r in self.runs.values()
            if query.entry in (None, r.entry)
            and (query.since is None or r.published_at >= query.since)
            and not (query.unfinished and (r.finished or r.overdue_at is not None))
        ]
        return sorted(chosen, key=_newest_first, reverse=True)[: max(query.limit, 0)]

    def select_missed(
        self, entry: str | None, since: datetime | None, limit: int
    ) -> list[MissedRecord]:
        chosen = [
            m
            for m in self.missed.values()
            if entry in (None, m.slots.entry) and (since is None or m.recorded_at >= since)
        ]
        return sorted(chosen, key=_missed_order, reverse=True)[: max(limit, 0)]

    # --- retention and copies ------------------------------------------------------------------

    def trim(self, retention: Retention, now: datetime, limit: int) -> int:
        """Delete at most `limit` records beyond `retention`, the oldest first; an unfinished
        run only by its age."""
        cutoff = now - retention.max_age
        runs = sorted(self.runs.values(), key=_newest_first, reverse=True)
        seen: dict[str, int] = {}
        kept: list[RunRecord] = []
        doomed: list[RunRecord] = []
        for r in runs:
            seen[r.entry] = seen.get(r.entry, 0) + 1
            too_many = seen[r.entry] > retention.per_entry and r.finished
            (doomed if too_many or r.published_at < cutoff else kept).append(r)
        doomed += [r for r in kept[retention.max_records :] if r.finished]
        missed = sorted(self.missed.values(), key=_missed_order, reverse=True)
        young = [m for m in missed if m.recorded_at >= cutoff]
        gone = [m for m in missed if m.recorded_at < cutoff] + young[retention.max_records :]
        oldest_first = sorted(doomed, key=_newest_first)
        missed_first = sorted(gone, key=_missed_order)
        count = 0
        for r in oldest_first[:limit]:
            del self.runs[r.id]
            count += 1
            if r.kind != RunKind.MANUAL:  # backfill vouches only for slots after it
                self.trimmed[r.entry] = max(r.slot, self.trimmed.get(r.entry, r.slot))
        for m in missed_first[: limit - count]:
            del self.missed[_missed_key(m)]
            count += 1
        return count

    def add(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord],
        summaries: Sequence[EntrySummary],
    ) -> int:
        added = 0
        for r in runs:
            if r.id not in self.runs:
                self.runs[r.id] = r
                added += 1
        for m in missed:
            if _missed_key(m) not in self.missed:
                self.missed[_missed_key(m)] = m
                added += 1
        for s in summaries:
            held = self.summaries.get(s.entry)
            if held is None or s.last_finished_at >= held.last_finished_at:
                self.summaries[s.entry] = s
        return added


class MemoryHistory:
    """The `RunHistory` role over `_history` under `_lock`; the writes do nothing with
    `_writes_history` False. Times not given come from `_now` (Unix seconds)."""

    _lock: threading.Lock
    _history: History
    _writes_history: bool
    _now: Callable[[], float]

    def _at(self) -> datetime:
        return datetime.fromtimestamp(self._now(), UTC)

    def runs(self, query: HistoryQuery) -> list[RunRecord]:
        with self._lock:
            return self._history.select(query)

    def run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._history.runs.get(run_id)

    def missed(
        self, entry: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[MissedRecord]:
        with self._lock:
            return self._history.select_missed(entry, since, limit)

    def summaries(self, entries: Sequence[str] | None = None) -> dict[str, EntrySummary]:
        with self._lock:
            held = self._history.summaries
            wanted = held if entries is None else [e for e in entries if e in held]
            return {e: held[e] for e in wanted}

    def history_size(self) -> tuple[int, int]:
        with self._lock:
            return len(self._history.runs), len(self._history.missed)

    def trimmed_up_to(self, entry: str) -> datetime | None:
        with self._lock:
            return self._history.trimmed.get(entry)

    def mark_overdue(self, run_id: str, at: datetime) -> bool:
        with self._lock:
            return self._writes_history and self._history.mark_overdue(run_id, at)

    def mark_missed_overdue(self, entry: str, reason: str, first: datetime, at: datetime) -> bool:
        with self._lock:
            key = (entry, reason, first)
            return self._writes_history and self._history.mark_missed_overdue(key, at)

    def run_received(self, run_id: str, consumer: str, at: datetime) -> bool:
        with self._lock:
            return self._writes_history and self._history.received(run_id, at)

    def attempt_started(
        self, run_id: str, consumer: str, host: str, pid: int | None, at: datetime
    ) -> bool:
        with self._lock:
            return self._writes_history and self._history.start(run_id, consumer, host, pid, at)

    def attempt_ended(self, run_id: str, ending: Ending, at: datetime) -> bool:
        with self._lock:
            wrote = self._writes_history and self._history.event_end(run_id, ending, at)
            if ending.outcome in FINAL:
                self._run_ended(run_id)  # with the history off too
            return wrote

    def _run_ended(self, run_id: str) -> None:
        """Run `run_id` reached a final outcome (under the lock): the controls' hook."""

    def trim(self, retention: Retention, limit: int = 10_000) -> int:
        with self._lock:
            return self._history.trim(retention, self._at(), limit)

    def export_runs(self, batch: int = 1000) -> Iterator[list[RunRecord]]:
        with self._lock:
            every = sorted(self._history.runs.values(), key=_newest_first)
        for start in range(0, len(every), batch):
            yield every[start : start + batch]

    def export_missed(self) -> list[MissedRecord]:
        with self._lock:
            return sorted(self._history.missed.values(), key=_missed_order)

    def import_history(
        self,
        runs: Sequence[RunRecord],
        missed: Sequence[MissedRecord] = (),
        summaries: Sequence[EntrySummary] = (),
    ) -> int:
        with self._lock:
            return self._history.add(runs, missed, summaries)
