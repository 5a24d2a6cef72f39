"""The runtime entries' view (beatd.entry_feed.RuntimeView) as another thread follows it: a
`ViewReader` takes every entry held, then the changes since, sharing the built entries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from beatd.backends.base import RuntimeEntries
from beatd.backends.memory import MemoryBackend
from beatd.clock import FakeClock
from beatd.config.model import Entry
from beatd.entry_feed import PlannedEntries, RuntimeView
from beatd.runtime_entries import resolve_entry
from beatd.schedules import IntervalSchedule
from tests.in_process import memory_backend

T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[MemoryBackend]:
    yield from memory_backend("entry-feed", clock)


def put(backend: MemoryBackend, name: str, every: str = "1m") -> None:
    backend.put_entry(resolve_entry(name, {"task": "t.x", "every": every}, now=T0), "test")


def test_a_reader_takes_every_entry_then_the_changes_the_view_applied(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    put(backend, "a")
    put(backend, "b")
    view = RuntimeView(backend, clock)
    reader = view.reader()
    assert reader.take() is None  # nothing read yet
    view.poll()
    first = reader.take()
    assert first is not None and first.reloaded
    assert first.entries == view.entries and first.entries is not view.entries
    assert all(first.entries[n] is view.entries[n] for n in ("a", "b"))  # shared, not built
    assert first.versions == {"a": view.version_of("a"), "b": view.version_of("b")}
    version_a = first.versions["a"]
    put(backend, "a", every="5m")
    backend.remove_entry("b", "test")
    put(backend, "c")
    untaken = reader.take()
    assert untaken is not None and (untaken.entries, untaken.gone) == ({}, ())
    view.poll()
    taken = reader.take()
    assert taken is not None and not taken.reloaded
    assert taken.entries == {"a": view.entries["a"], "c": view.entries["c"]}
    assert taken.versions == {"a": view.version_of("a"), "c": view.version_of("c")}
    assert taken.versions["a"] > version_a and taken.gone == ("b",)
    assert reader.get("a") == (view.entries["a"], taken.versions["a"])
    assert reader.get("b") is None


def test_after_the_view_reads_every_entry_again_a_reader_takes_them_all(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    put(backend, "a")
    view = RuntimeView(backend, clock)
    view.poll()
    reader = view.reader()
    assert reader.take() is not None
    put(backend, "b")
    view.cursor = None  # as after a feed's `reload`: every entry read again
    view.poll()
    again = reader.take()
    assert again is not None and again.reloaded
    assert sorted(again.entries) == ["a", "b"]


def test_the_planned_entries_read_the_view_through_and_a_files_name_stays_the_files(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    put(backend, "a")
    put(backend, "shadowed")
    view = RuntimeView(backend, clock)
    view.poll()
    file = Entry(name="shadowed", task="t.file", schedule=IntervalSchedule(timedelta(hours=1)))
    planned = PlannedEntries(view, {"shadowed": file})
    assert dict(planned.entries) == {"shadowed": file, "a": view.entries["a"]}
    put(backend, "b")
    backend.remove_entry("a", "test")
    view.poll()
    assert dict(planned.entries.items()) == {"shadowed": file, "b": view.entries["b"]}
    assert list(planned.entries.values()) == [file, view.entries["b"]]
    assert (len(planned.entries), "a" in planned.entries, planned.entries.get("a")) == (
        2,
        False,
        None,
    )


def test_a_reader_that_does_not_take_holds_a_bounded_set_then_takes_them_all(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    view = RuntimeView(backend, clock)
    view.poll()
    reader = view.reader()
    assert reader.take() is not None
    for i in range(1002):
        put(backend, f"e{i:04d}")
    while view.poll().more:
        pass
    assert len(view.entries) == 1002
    assert reader.reload and not reader.changed  # more than 1,000 and half the entries
    taken = reader.take()
    assert taken is not None and taken.reloaded and len(taken.entries) == 1002


class Calls:
    """A backend that records each call of the methods it is asked for, with its arguments."""

    def __init__(self, store: MemoryBackend) -> None:
        self.store = store
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def called(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return method(*args, **kwargs)

        return called


def test_a_page_of_changes_is_read_in_one_call_once_a_name_for_the_entries_it_may_change(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    """Issue 18: a bulk import's changes cost the leader one backend read per page of the feed,
    not one per entry; a name changed twice is read once, one added and removed before the view
    held it not at all."""
    put(backend, "held")
    calls = Calls(backend)
    view = RuntimeView(cast(RuntimeEntries, calls), clock, changes_page=5)
    view.poll()
    for name in ("a", "b", "a", "c"):
        put(backend, name)
    backend.remove_entry("b", "test")
    put(backend, "d")  # the sixth change: the next page's
    calls.calls.clear()
    first = view.poll()
    assert calls.calls == [("entry_changes", (1, 5)), ("get_entries", (["a", "c"],))]
    assert [(c.name, c.entry is not None) for c in first.changes] == [("a", True), ("c", True)]
    assert first.more and sorted(view.entries) == ["a", "c", "held"]
    calls.calls.clear()
    assert [c.name for c in view.poll().changes] == ["d"]
    assert [name for name, _ in calls.calls] == ["entry_changes", "get_entries"]
    calls.calls.clear()
    assert view.poll().changes == () and calls.calls == [("entry_changes", (7, 5))]


def test_the_first_read_goes_a_page_a_poll_with_the_feed_followed_beside_it(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    for i in range(30):
        put(backend, f"e{i:02}")
    view = RuntimeView(backend, clock, page=10)
    reader = view.reader()
    assert view.follow_reads() == []
    first = view.poll()
    assert first.reading and not first.reloaded and not view.loaded and view.reading
    assert sorted(view.entries) == [f"e{i:02}" for i in range(10)]
    assert view.next_at == clock.monotonic()  # the next page at once
    assert reader.take() is None  # a reader waits for every entry
    put(backend, "e05", every="5m")  # read already: the feed brings the change
    put(backend, "e25", every="5m")  # not read yet: the feed brings it first
    backend.remove_entry("e26", "test")  # not read yet: never held
    put(backend, "new")
    second = view.poll()
    assert sorted(a.name for a in second.changes) == ["e05", "e25", "new"]
    assert second.reading
    while (feed := view.poll()).reading:
        pass
    assert feed.reloaded and view.loaded and not view.reading
    expected = {f"e{i:02}" for i in range(30)} - {"e26"} | {"new"}
    assert set(view.entries) == expected
    assert (
        str(view.entries["e25"].schedule)
        == str(view.entries["e05"].schedule)
        != str(view.entries["e00"].schedule)
    )
    # every name the pages read, in their order ("new" sorts last: the last page read it too)
    assert view.take_reads() == sorted(expected)
    assert view.take_reads() == []
    taken = reader.take()
    assert taken is not None and taken.reloaded and set(taken.entries) == expected
