"""The entry index (beatd.entry_index) on a real SQLite file and a real redis-server, on a fake
clock: built from the files and the runtime entries, fed by the change feed, refreshed in bulk."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from beatd.backends import Backend, open_backend
from beatd.backends.base import BeatdQueue, Outgoing, StateWrite
from beatd.clock import FakeClock
from beatd.config import Config, load_config
from beatd.entry_feed import Taken
from beatd.entry_index import REFRESH_PIECE, EntryIndex, IndexNotReady, IndexQuery, Ordered
from beatd.history import EntrySummary
from beatd.http.context import ApiContext
from beatd.runtime_entries import resolve_entry
from beatd.scheduler import Scheduler, SchedulerSettings
from beatd.state import EntryState
from beatd.turns import LoopTurns
from tests.entries_backends import broker, redis_server
from tests.test_history_cli import SCHEDULES, nightly_dead

__all__ = ["broker", "redis_server"]  # fixtures

T0 = datetime(2026, 12, 6, 1, 0, 5, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    return load_config([str(folder)])


@pytest.fixture
def store(broker: str) -> Iterator[Backend]:
    opened = open_backend(broker)
    yield opened
    opened.close()


def add(store: Backend, name: str, **fields: str) -> None:
    raw = {"task": "t.report", "every": "1h", **fields}
    store.put_entry(resolve_entry(name, raw, now=T0), "test")


def names(index: EntryIndex, **asked: object) -> list[str]:
    return [row.name for row in index.page(IndexQuery(**asked)).rows]  # type: ignore[arg-type]


def built(broker: str, config: Config, clock: FakeClock) -> EntryIndex:
    index = EntryIndex(lambda: open_backend(broker), lambda: config, clock)
    index.build()
    return index


def test_a_page_before_the_index_is_built_is_refused_with_why(broker: str, config: Config) -> None:
    index = EntryIndex(lambda: open_backend(broker), lambda: config, FakeClock(T0))
    with pytest.raises(IndexNotReady) as refused:
        index.page(IndexQuery())
    assert str(refused.value) == (
        "this node's entry index is still being built (it reads every entry once at start); "
        "try again in a few seconds"
    )


def test_files_and_runtime_entries_each_a_row_with_its_schedule_in_words(
    broker: str, store: Backend, config: Config
) -> None:
    add(store, "report-acme", queue="reports")
    index = built(broker, config, FakeClock(T0))
    try:
        page = index.page(IndexQuery())
        assert page.total == 3
        assert [row.as_json() for row in page.rows] == [
            {
                "name": "nightly",
                "source": "file",
                "task": "t.nightly",
                "queue": "default",
                "schedule": load_schedule(config, "nightly"),
                "timezone": "Europe/Berlin",
                "next_due": "2026-12-06T01:30:00Z",
                "last_status": None,
                "last_duration_s": None,
                "paused": False,
                "version": None,
            },
            {
                "name": "report-acme",
                "source": "api",
                "task": "t.report",
                "queue": "reports",
                "schedule": "every 1h",
                "timezone": "UTC",
                "next_due": page.rows[1].as_json()["next_due"],
                "last_status": None,
                "last_duration_s": None,
                "paused": False,
                "version": page.rows[1].version,
            },
            {
                "name": "tick",
                "source": "file",
                "task": "t.tick",
                "queue": "default",
                "schedule": "every 10s",
                "timezone": "UTC",
                "next_due": "2026-12-06T01:00:10Z",
                "last_status": None,
                "last_duration_s": None,
                "paused": False,
                "version": None,
            },
        ]
        assert page.rows[1].version is not None and page.rows[1].version > 0
    finally:
        index.close()


def load_schedule(config: Config, name: str) -> str:
    return config.entries[name].schedule.describe()


def test_filters_sorts_and_pages(broker: str, store: Backend, config: Config) -> None:
    for n in range(12):
        add(store, f"report-{n:02}", queue="reports" if n % 2 else "default")
    index = built(broker, config, FakeClock(T0))
    try:
        assert index.page(IndexQuery(name="report-1")).total == 2
        assert names(index, name="report", queue="reports", offset=2, limit=2) == [
            "report-05",
            "report-07",
        ]
        assert index.page(IndexQuery(name="report", queue="reports", limit=2)).total == 6
        assert names(index, source="file") == ["nightly", "tick"]
        assert names(index, task="t.tick") == ["tick"]
        assert names(index, sort="next_due", limit=2) == ["tick", "nightly"]
        assert index.page(IndexQuery(paused=True)).total == 0
        assert index.page(IndexQuery(offset=100))[:2] == (14, [])
    finally:
        index.close()


def test_an_exact_name_is_one_look_up_among_names_containing_it(
    broker: str, store: Backend, config: Config
) -> None:
    for n in range(3):
        add(store, f"a-report-0{n}")
    add(store, "report-0")
    index = built(broker, config, FakeClock(T0))
    try:
        assert names(index, exact="report-0") == ["report-0"]
        assert names(index, exact="report") == []
        assert names(index, exact="report-0", queue="elsewhere") == []
        assert names(index, exact="tick", source="file") == ["tick"]
    finally:
        index.close()


def test_a_name_part_few_names_hold_is_found_in_order_once_per_name(
    broker: str, store: Backend, config: Config
) -> None:
    for n in range(30):
        add(store, f"r{n:02}-r{n:02}")
    index = built(broker, config, FakeClock(T0))
    try:
        assert names(index, name="r07") == ["r07-r07"]  # twice in the name, listed once
        assert names(index, name="7-r") == ["r07-r07", "r17-r17", "r27-r27"]
        assert names(index, name="k") == ["tick"]  # the last name
        assert names(index, name="nig") == ["nightly"]
        assert names(index, name="r1", sort="next_due", limit=3) == [
            "r10-r10",
            "r11-r11",
            "r12-r12",
        ]
        assert index.page(IndexQuery(name="-")).total == 30  # most names: row by row
        assert index.page(IndexQuery(name="\n")).total == 0
    finally:
        index.close()


def test_the_change_feed_adds_replaces_and_removes_rows_before_a_refresh(
    broker: str, store: Backend, config: Config
) -> None:
    add(store, "report-a")
    index = built(broker, config, FakeClock(T0))
    try:
        add(store, "report-b", every="5s")
        add(store, "report-a", every="2h", queue="slow")
        index.follow()
        assert names(index) == ["nightly", "report-a", "report-b", "tick"]
        assert names(index, queue="slow") == ["report-a"]
        assert names(index, sort="next_due", limit=2) == ["report-b", "tick"]  # merged in
        store.remove_entry("report-b", "test")
        index.follow()
        assert names(index, sort="next_due") == ["tick", "nightly", "report-a"]
        index.refresh()
        assert names(index, sort="next_due") == ["tick", "nightly", "report-a"]
    finally:
        index.close()


def test_a_refresh_takes_horizons_summaries_and_pauses(
    broker: str, store: Backend, config: Config
) -> None:
    index = built(broker, config, FakeClock(T0))
    try:
        horizon = datetime(2026, 12, 6, 1, 30, tzinfo=UTC)
        commit_horizon(store, config, "nightly", horizon)
        run = nightly_dead()
        ended = run.attempts[-1].ended_at
        assert ended is not None
        summary = EntrySummary(
            "nightly", "dead_lettered", ended, timedelta(seconds=60), None, ended, 1
        )
        store.import_history([run], summaries=[summary])
        store.pause(["tick"], "maintenance", None, "ops")
        index.refresh()
        (nightly,) = index.page(IndexQuery(status="dead_lettered")).rows
        assert nightly.as_json()["next_due"] == "2026-12-07T01:30:00Z"  # after the horizon
        assert (nightly.last_status, nightly.last_duration_s) == ("dead_lettered", 60.0)
        assert nightly.failing
        assert names(index, paused=True) == ["tick"]
        assert names(index, sort="last_status") == ["nightly", "tick"]
    finally:
        index.close()


def test_the_tag_moves_with_every_change_a_page_shows_and_only_then(
    broker: str, store: Backend, config: Config
) -> None:
    """A cached answer is kept while the tag stays: a last duration that moved alone (same
    status, same next due) must move it too, and two indexes never share a tag."""
    index, other = built(broker, config, FakeClock(T0)), built(broker, config, FakeClock(T0))
    try:
        first = index.tag()
        index.refresh()
        assert index.tag() == first  # nothing changed
        run = nightly_dead()
        ended = run.attempts[-1].ended_at
        assert ended is not None
        took = [timedelta(seconds=60), timedelta(seconds=61)]
        tags = []
        for duration in took:
            summary = EntrySummary("nightly", "dead_lettered", ended, duration, None, ended, 1)
            store.import_history([run], summaries=[summary])
            index.refresh()
            tags.append(index.tag())
            assert index.page(IndexQuery(exact="nightly")).tag == tags[-1]
        assert len({first, *tags}) == 3
        (nightly,) = index.page(IndexQuery(exact="nightly")).rows
        assert nightly.last_duration_s == 61.0
        add(store, "report-acme")
        index.follow()
        assert index.tag() != tags[-1]
        assert other.tag() != index.tag()
    finally:
        index.close()
        other.close()


def test_an_entry_past_its_grace_is_overdue_unless_paused(
    broker: str, store: Backend, config: Config
) -> None:
    clock = FakeClock(T0)
    index = built(broker, config, clock)
    try:
        horizon = datetime(2026, 12, 6, 0, 0, tzinfo=UTC)
        commit_horizon(store, config, "tick", horizon)
        index.refresh()
        (nightly, tick) = index.rows()
        assert (nightly.overdue(clock.now()), tick.overdue(clock.now())) == (False, True)
        store.pause(["tick"], "maintenance", None, "ops")
        index.refresh()
        assert not index.rows()[1].overdue(clock.now())
    finally:
        index.close()


def test_without_a_horizon_the_next_due_follows_now_as_a_leader_would_start_it(
    broker: str, config: Config
) -> None:
    clock = FakeClock(T0)
    index = built(broker, config, clock)
    try:
        clock.advance(3600)
        index.refresh()
        (nightly, tick) = index.rows()
        assert (nightly.overdue(clock.now()), tick.overdue(clock.now())) == (False, False)
        assert tick.as_json()["next_due"] == "2026-12-06T02:00:10Z"
    finally:
        index.close()


def test_a_replaced_configuration_replaces_the_file_rows(broker: str, tmp_path: Path) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    configs = [load_config([str(folder)])]
    index = EntryIndex(lambda: open_backend(broker), lambda: configs[-1], FakeClock(T0))
    index.build()
    try:
        (folder / "s.yaml").write_text("entries:\n  hourly:\n    task: t.h\n    every: 1h\n")
        configs.append(load_config([str(folder)]))
        index.follow()
        assert names(index) == ["hourly"]
    finally:
        index.close()


def commit_horizon(store: Backend, config: Config, name: str, horizon: datetime) -> None:
    entry = config.entries[name]
    lease = store.acquire_lease("node-a", 30)
    assert lease is not None
    state = EntryState(name, horizon, horizon, entry.identity)
    run = Outgoing(
        name, f"{name}@{horizon:%Y-%m-%dT%H:%M:%SZ}", BeatdQueue("default"),
        json.dumps({"task": entry.task}), horizon, horizon,
    )  # fmt: skip
    assert store.commit(lease, [StateWrite(state, None)], [run]) == set()
    store.release_lease(lease)


@pytest.mark.parametrize(("failures", "failing"), [(1, False), (2, True)], ids=["one", "two"])
def test_an_entry_is_failing_after_its_alert_after_failures(
    broker: str, store: Backend, config: Config, failures: int, failing: bool
) -> None:
    store.put_entry(
        resolve_entry("sync", {"task": "t.s", "every": "1h", "alert_after_failures": 2}, now=T0),
        "test",
    )
    ended = T0 - timedelta(minutes=1)
    summary = EntrySummary("sync", "failed", ended, None, None, ended, failures)
    store.import_history([], summaries=[summary])
    index = built(broker, config, FakeClock(T0))
    try:
        assert [row.name for row in index.failing()] == (["sync"] if failing else [])
    finally:
        index.close()


def test_an_api_contexts_own_index_reads_the_contexts_clock(
    broker: str, store: Backend, config: Config
) -> None:
    later = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    store.put_entry(resolve_entry("daily", {"task": "t.d", "cron": "0 4 * * *"}, now=T0), "test")
    context = ApiContext(lambda: open_backend(broker), lambda: config, lambda: later)
    try:
        (row,) = context.index().page(IndexQuery(exact="daily")).rows
        assert row.as_json()["next_due"] == "2030-01-02T04:00:00Z"
    finally:
        context.close()


class Reads:
    """A backend that records which of its methods were called."""

    def __init__(self, store: Backend) -> None:
        self.store = store
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.called.add(name)
        return getattr(self.store, name)


ENTRY_READS = {"list_entries", "get_entry", "get_entries", "entry_changes"}


def test_beside_a_scheduler_the_index_takes_its_runtime_entries_and_reads_none(
    broker: str, store: Backend, config: Config
) -> None:
    add(store, "report-a")
    clock = FakeClock(T0)
    settings = SchedulerSettings(node="a", lease_ttl=10, max_clock_skew=3600)
    beat = Scheduler(open_backend(broker), lambda: config, clock, settings)
    reads: list[Reads] = []

    def opened() -> Backend:
        reads.append(Reads(open_backend(broker)))
        return cast(Backend, reads[-1])

    index = EntryIndex(opened, lambda: config, clock, view=beat.runtime)
    try:
        index.build()  # the scheduler has not read the runtime entries yet: not ready
        assert not index.ready.is_set()
        beat.step()
        index.build()
        assert names(index) == ["nightly", "report-a", "tick"]
        row = index.page(IndexQuery(exact="report-a")).rows[0]
        assert row.entry is beat.runtime.entries["report-a"]
        assert row.version == 1
        add(store, "report-b", every="5s")
        add(store, "report-a", every="2h", queue="slow")
        index.follow()  # the scheduler has not read the feed since: nothing new
        assert names(index) == ["nightly", "report-a", "tick"]
        clock.advance(1)
        beat.step()
        index.follow()
        assert names(index) == ["nightly", "report-a", "report-b", "tick"]
        assert names(index, queue="slow") == ["report-a"]
        assert index.page(IndexQuery(exact="report-a")).rows[0].version == 2
        store.remove_entry("report-b", "test")
        clock.advance(1)
        beat.step()
        index.follow()
        assert names(index) == ["nightly", "report-a", "tick"]
        assert all(not (r.called & ENTRY_READS) for r in reads)
    finally:
        index.close()
        beat.shutdown()
        beat.backend.close()


def test_rows_sharing_a_schedule_and_a_horizon_share_their_next_due(
    broker: str, store: Backend
) -> None:
    for i in range(20):
        add(store, f"hourly-{i:02d}")
    index = built(broker, Config({}), FakeClock(T0))
    try:
        rows = index.rows()
        assert {row.as_json()["next_due"] for row in rows} == {"2026-12-06T02:00:00Z"}
        assert len({id(row.next_due) for row in rows}) == 1  # one computation, one object
        assert len({id(row.schedule) for row in rows}) == 1  # one text in words
    finally:
        index.close()


class CountedRows(dict[str, Any]):
    """The index's rows, counting the look-ups a page makes (one per row: a pass over them)."""

    looked_up = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up += 1
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.looked_up += 1
        return super().__getitem__(key)


def test_after_a_refresh_that_replaced_no_row_a_page_reads_its_orders_without_a_pass(
    broker: str, store: Backend, config: Config
) -> None:
    """At 1,000,000 entries a pass over the rows took about a second in the first request
    after each refresh: a refresh that only moved next due times, statuses or pauses keeps the
    name order and hands its own orders on as they are; a row added since is merged in."""
    add(store, "report-a", every="2h")
    add(store, "report-b", every="3h")
    index = built(broker, config, FakeClock(T0))
    try:
        rows = CountedRows(index._rows)
        index._rows = rows
        commit_horizon(store, config, "nightly", datetime(2026, 12, 6, 1, 30, tzinfo=UTC))
        store.pause(["tick"], "maintenance", None, "ops")
        before = index.tag()
        index.refresh()
        assert index.tag() != before
        asked = {
            "name": ["nightly", "report-a", "report-b", "tick"],
            "next_due": ["tick", "report-a", "report-b", "nightly"],
            "last_status": ["nightly", "report-a", "report-b", "tick"],
        }
        assert {sort: names(index, sort=sort) for sort in asked} == asked
        assert names(index, paused=True) == ["tick"]
        assert index.failing() == []
        assert rows.looked_up == 0  # neither the refresh nor a page passed over the rows
        add(store, "report-c", every="1h")
        index.follow()
        assert names(index, sort="next_due") == ["tick", "report-a", "report-c", "report-b",
                                                 "nightly"]  # fmt: skip
    finally:
        index.close()


def test_a_name_part_is_searched_in_the_names_text_made_once_whatever_the_order(
    broker: str, store: Backend, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names' text (1,000,000 names: 0.14 s to make) is made once per set of rows, not
    once per refresh and order: a search in the next due order finds its few rows in the name
    order's text and puts them in the next due order."""
    made: list[int] = []
    text = Ordered.text

    def counted(self: Ordered) -> tuple[str, list[int]]:
        if self._text is None:
            made.append(len(self.rows))
        return text(self)

    monkeypatch.setattr(Ordered, "text", counted)
    for name, every in (("report-a", "3h"), ("report-b", "2h"), ("other", "1h")):
        add(store, name, every=every)
    for n in range(20):
        add(store, f"filler-{n:02d}", every="4h")
    index = built(broker, config, FakeClock(T0))
    try:
        for turn, sort in enumerate(("next_due", "last_status", "name", "next_due")):
            expected = ["report-a", "report-b"] if sort != "next_due" else ["report-b", "report-a"]
            assert names(index, name="report", sort=sort) == expected
            tag = index.tag()
            if turn % 2:  # a pause moved: every order made again
                store.resume(["tick"], "ops")
            else:
                store.pause(["tick"], "maintenance", None, "ops")
            index.refresh()
            assert index.tag() != tag
        assert made == [25]
    finally:
        index.close()


def _pages_between_row_changes(index: EntryIndex) -> list[BaseException]:
    """Makes a request thread ask for a page between each two row changes of a reload, as the
    API's threads may at any moment; the errors they met."""
    errors: list[BaseException] = []
    replace = index._replace

    def page() -> None:
        try:
            index.page(IndexQuery())
            index.failing()
        except Exception as error:
            errors.append(error)

    def replaced(*args: Any, **kwargs: Any) -> bool:
        changed = replace(*args, **kwargs)
        asking = threading.Thread(target=page)
        asking.start()
        asking.join()
        return changed

    index._replace = replaced  # type: ignore[method-assign]
    return errors


def test_a_page_asked_while_a_feed_reload_drops_rows_answers(
    broker: str, store: Backend, config: Config
) -> None:
    add(store, "report-a", every="2h")
    add(store, "report-b", every="3h")
    index = built(broker, config, FakeClock(T0))
    a, b = index._rows["report-a"], index._rows["report-b"]
    errors = _pages_between_row_changes(index)
    index._rebuild(
        Taken(
            True, {"report-b": b.entry, "report-c": a.entry}, {"report-b": b.version, "report-c": 1}
        )
    )
    index.close()
    assert errors == []
    assert "report-a" not in names(index) and "report-c" in names(index)


def test_a_page_asked_while_a_reload_drops_a_file_entry_answers(
    broker: str, config: Config
) -> None:
    index = built(broker, config, FakeClock(T0))
    errors = _pages_between_row_changes(index)
    before = index._files
    index._files = {name: entry for name, entry in before.items() if name != "tick"}
    index._files_changed(before)
    index.close()
    assert errors == []
    assert "tick" in before and "tick" not in names(index)


def test_a_refresh_reads_every_piece_of_many_entries(
    broker: str, store: Backend, config: Config
) -> None:
    many = [f"r{n:04d}" for n in range(2 * REFRESH_PIECE + 100)]  # three pieces
    store.put_entries([resolve_entry(n, {"task": "t.r", "every": "1h"}, now=T0) for n in many], "t")
    store.pause([many[-1], many[REFRESH_PIECE]], "maintenance", None, "ops")  # third, second
    index = built(broker, config, FakeClock(T0))
    try:
        assert names(index, paused=True, limit=5) == [many[REFRESH_PIECE], many[-1]]
        assert index.page(IndexQuery(limit=1)).total == len(many) + len(config.entries)
    finally:
        index.close()


def test_a_refresh_waits_for_gaps_in_the_loops_rounds(
    broker: str, store: Backend, config: Config
) -> None:
    for n in range(REFRESH_PIECE + 10):
        add(store, f"r{n:04d}")
    turns = LoopTurns()
    index = EntryIndex(lambda: open_backend(broker), lambda: config, FakeClock(T0), turns=turns)
    try:
        turns.awake()  # a round that goes on: each piece waits up to its limit (1 s)
        refresh = threading.Thread(target=index.build)
        refresh.start()
        refresh.join(0.5)
        assert refresh.is_alive() and not index.ready.is_set()
        turns.sleeping(60.0)  # the loop sleeps with time to spare: the refresh goes on at once
        refresh.join(5)
        assert index.ready.is_set()
        assert index.page(IndexQuery(limit=1)).total == REFRESH_PIECE + 10 + len(config.entries)
    finally:
        index.close()
