"""The entries page's kept rows (beatd.console.entry_rows): what a kept answer shows at a later
moment is what a fresh rendering shows then, and only answers with an ETag are kept, a few."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from beatd.console.entry_rows import HOLE, KeptRows, Rendered, _rendered_at
from tests.console.conftest import ORIGIN, Console

T0 = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


def answer(*tasks: str) -> dict[str, Any]:
    """An entry-index answer: one entry per task, the first never due, the others due hourly."""
    entries = [
        {
            **{"name": f"job-{i}", "source": "api", "task": task, "queue": "default"},
            **{"schedule": "every 1h", "timezone": "UTC", "version": i, "paused": i == 2},
            "next_due": None if i == 0 else f"2026-12-06T0{i + 1}:00:00Z",
            "last_status": "succeeded" if i else None,
            "last_duration_s": 1.5 * i,
        }
        for i, task in enumerate(tasks)
    ]
    return {"total": len(entries), "offset": 0, "limit": 50, "entries": entries}


def test_kept_rows_read_at_each_moment_as_a_fresh_rendering_does(console: Console) -> None:
    data = answer("a", "b <b>", "c")
    with console.app.test_request_context("/ui/entries", base_url=ORIGIN):
        kept = Rendered.of(data, '"tag-1"')
        moments = [T0, T0 + timedelta(seconds=0.5), T0 + timedelta(minutes=59, seconds=58.5)]
        for moment in moments:
            assert str(kept.at(moment)) == _rendered_at(data, moment)
        assert kept.tag == '"tag-1"'
        assert "(in 1 h)" in kept.at(T0) and "(in 1 s)" in kept.at(moments[2])
        assert "b &lt;b&gt;" in kept.at(T0)


def test_an_answer_holding_the_holes_mark_is_rendered_fresh_and_not_kept(
    console: Console,
) -> None:
    data = answer("a", f"b{HOLE}", "c")
    rows = KeptRows()
    with console.app.test_request_context("/ui/entries", base_url=ORIGIN):
        rendered = Rendered.of(data, '"tag-1"')
        assert rendered.tag is None
        assert str(rendered.at(T0)) == _rendered_at(data, T0)
    rows.put((("sort", "name"),), rendered)
    assert len(rows) == 0


def test_at_most_size_views_are_kept_the_least_recently_asked_dropped(
    console: Console,
) -> None:
    rows = KeptRows(size=2)
    with console.app.test_request_context("/ui/entries", base_url=ORIGIN):
        made = {view: Rendered.of(answer("a"), f'"{view}"') for view in "abc"}
    rows.put((("v", "a"),), made["a"])
    rows.put((("v", "b"),), made["b"])
    assert rows.get((("v", "a"),)) is made["a"]  # asked: b is now the least recent
    rows.put((("v", "c"),), made["c"])
    assert [rows.get((("v", v),)) for v in "abc"] == [made["a"], None, made["c"]]
