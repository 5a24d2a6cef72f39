"""The console's pages under Flask's test client on a real SQLite file: what each page shows,
in beatd's own words, from the public API."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beatd.backends import DeadLetter
from beatd.console import entry
from beatd.controls import AuditRecord, new_audit_id
from beatd.history import RunKind, RunRecord
from tests.console.conftest import WRITER, Console
from tests.console.seeds import add_entries, attempt, seed_dead_letters, seed_runs
from tests.test_controls_cli import arrange_horizon


def visible(page: str) -> str:
    """A page's text as a reader sees it: no tags, whitespace collapsed."""
    body = page.split("<body", 1)[-1]
    text = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", body, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def signed_in(console: Console) -> Console:
    assert console.sign_in(WRITER).status_code == 303
    return console


def test_the_overview_shows_the_leader_the_last_hour_and_the_dead_letters(
    console: Console,
) -> None:
    signed_in(console)
    seed_dead_letters(console)
    page = console.get("/ui/")
    assert page.status_code == 200
    text = visible(page.text)
    assert "No node holds the lease: nothing is being published." in text
    assert "Late runs 0 Missed slots 0 Failed runs 0 Dead letters 2" in text
    assert "Overdue (0) None. Failing (0) None. Paused (0) None." in text
    assert "No node has reported." in text


def test_the_entries_page_filters_sorts_and_pages(console: Console) -> None:
    signed_in(console)
    add_entries(
        console,
        *({"name": f"job-{i:03}", "task": "app.job", "every": "10m"} for i in range(120)),
        {"name": "other", "task": "app.other", "cron": "0 3 * * *", "queue": "reports"},
    )
    page = console.get("/ui/entries?sort=name&limit=50")
    text = visible(page.text)
    assert "Entries 1–50 of 122." in text
    # the next due time: the index's own clock (the system's), the relative: the console's
    assert re.search(
        r"job-000 API app\.job default every 10m UTC \d{4}-\d\d-\d\dT\d\d:\d0:00Z \([^)]+\) "
        r"never run - no",
        text,
    ), text
    last = re.search(r'<a href="([^"]+)" rel="last">Last page</a>', page.text)
    assert last is not None
    assert html.unescape(last.group(1)) == "/ui/entries?sort=name&limit=50&offset=100"
    text = visible(console.get(html.unescape(last.group(1))).text)
    assert "Entries 101–122 of 122." in text
    assert "nightly file reports.nightly" in text
    assert "other API app.other reports" in text
    filtered = console.get("/ui/entries?name=other&queue=reports&sort=next_due&limit=20").text
    one = visible(filtered)
    assert "Entries 1–1 of 1." in one
    assert "job-000" not in one
    # the form shows the view it asked for
    assert 'name="name" type="search" value="other"' in filtered
    assert 'name="queue" type="text" value="reports"' in filtered
    assert '<option value="next_due" selected>next due</option>' in filtered
    assert '<option value="20" selected>20</option>' in filtered


def test_the_entries_page_follows_every_change_of_the_index_and_of_the_clock(
    console: Console,
) -> None:
    """The page keeps what it rendered while the index and the second stay (issue 19: a
    console fetched 10 times a second must not slow the scheduler), and no longer."""
    signed_in(console)
    nightly = re.compile(
        r"nightly file reports\.nightly default at 03:00, every day UTC (.*?) nightly"
    )

    def row() -> str:
        text = visible(console.get("/ui/entries?sort=name").text) + " nightly"
        found = nightly.search(text)
        assert found is not None, text
        return found.group(1)

    first = row()
    assert first == "2026-12-06T03:00:00Z (in 2 h) never run - no"
    assert row() == first
    add_entries(console, {"name": "job-b", "task": "app.job", "cron": "0 3 * * *"})
    assert "job-b API app.job" in visible(console.get("/ui/entries?sort=name").text)
    console.context.backend().pause(["nightly"], "maintenance", None, "ops")
    console.context.index().refresh()
    assert row() == "2026-12-06T03:00:00Z (in 2 h) never run - paused"
    console.move(3600)
    assert row() == "2026-12-06T03:00:00Z (in 1 h) never run - paused"
    console.move(0.5)
    assert row() == "2026-12-06T03:00:00Z (in 59 min) never run - paused"


def test_a_refused_filter_shows_the_api_words(console: Console) -> None:
    signed_in(console)
    page = console.get("/ui/entries?limit=9999")
    assert page.status_code == 422
    assert "This view of the entries cannot be shown: limit:" in visible(page.text)


def test_a_file_entry_page_shows_its_definition_next_runs_history_chart_and_audit(
    console: Console,
) -> None:
    signed_in(console)
    seed_runs(console)
    page = console.get("/ui/entries/nightly")
    assert page.status_code == 200
    text = visible(page.text)
    assert "Defined in the schedule file" in text
    assert "read-only here; edit the file and reload." in text
    assert "task: reports.nightly cron: 0 3 * * *" in text
    assert "Next 10 runs" in text
    assert "2026-12-06T03:00:00Z in 2 h" in text
    assert "2026-12-15T03:00:00Z in 9 d" in text
    # newest first: outcome, kind, duration, delay, attempts, the last attempt's error
    assert "2026-12-05T03:00:00Z succeeded scheduled 3.2 s 412 ms 1" in text
    assert "2026-12-04T03:00:00Z failed scheduled 4.2 s 1.0 s 2 ValueError bad row 7" in text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="run-chart" role="img"' in page.text
    assert "2 runs, from 2026-12-04T03:00:00Z to 2026-12-05T03:00:00Z" in page.text
    assert "No operator action yet." in text
    assert "Edit this entry" not in text


def test_an_unknown_entry_is_the_api_404(console: Console) -> None:
    signed_in(console)
    page = console.get("/ui/entries/nope")
    assert page.status_code == 404
    assert "Not found (404) name: no runtime entry nope" in visible(page.text)


def test_the_dead_letter_page_shows_message_reason_and_deliveries(console: Console) -> None:
    signed_in(console)
    seed_dead_letters(console)
    text = visible(console.get("/ui/dead").text)
    assert (
        "nightly@2026-12-05T03:00:00Z reports.nightly default 2026-12-06T00:30:00Z (30 min ago) "
        "3 ValueError: bad Message"
    ) in text
    assert '"task": "reports.nightly"' in text
    assert "gone@x ? reports 2026-12-06T00:30:00Z (30 min ago) 1 unknown task Message" in text


def test_the_dead_letter_page_shows_100_at_a_time_and_all_says_every_page(
    console: Console,
) -> None:
    signed_in(console)
    failed = datetime(2026, 12, 6, 0, 30, tzinfo=UTC)
    console.context.backend().add_dead_letters(
        [DeadLetter(f"e{i:03d}@x", "default", "not json", "bad", failed, 1) for i in range(150)]
    )
    first = console.get("/ui/dead").text
    assert first.count('<th scope="row">') == 100
    assert "Dead letters 1–100 of 150, oldest first." in first
    assert 'data-confirm="Delete all 150 dead letters (every page, not only the 100 shown)' in first
    assert '<a href="/ui/dead?offset=100" rel="next">Next page</a>' in first
    second = console.get("/ui/dead?offset=100").text
    assert second.count('<th scope="row">') == 50
    assert "Dead letters 101–150 of 150, oldest first." in second
    assert "<code>e149@x</code>" in second and "<code>e099@x</code>" not in second


def test_no_page_has_inline_script_or_style(console: Console) -> None:
    signed_in(console)
    seed_runs(console)
    seed_dead_letters(console)
    for path in ("/ui/", "/ui/entries", "/ui/entries/nightly", "/ui/dead", "/ui/new-entry"):
        page = console.get(path).text
        assert re.search(r"<script(?![^>]*\bsrc=)", page) is None, path
        assert "<style" not in page and "style=" not in page, path


def test_next_runs_carry_their_dst_marks(console: Console) -> None:
    signed_in(console)
    # 02:30 on 28 March 2027, Berlin: the wall time the clocks skip (02:00 -> 03:00)
    add_entries(
        console,
        {"name": "spring", "task": "t.s", "cron": "30 2 28 3 *", "timezone": "Europe/Berlin"},
    )
    text = visible(console.get("/ui/entries/spring").text)
    assert (
        "2027-03-28T01:00:00Z in 112 d spring_gap_fixed_time: for 02:30:00, which does not exist "
        "(clocks go forward, 02:00-03:00): a fixed-time job runs at the jump "
        "2028-03-28T00:30:00Z in 477 d -"
    ) in text


def test_the_overview_counts_the_hour_and_shows_leader_queues_and_overdue(
    console: Console, tmp_path: Path
) -> None:
    signed_in(console)
    store = console.context.backend()
    # nightly accounted up to 1 December: its next slots are long overdue
    arrange_horizon(store, tmp_path / "schedules", datetime(2026, 12, 1, 3, tzinfo=UTC), "nightly")
    lease = store.acquire_lease("node-a", 600)
    assert lease is not None
    # a run that failed a few minutes ago by the backend's clock (the hour is the backend's)
    slot = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    failed = RunRecord(
        f"nightly@{slot:%Y-%m-%dT%H:%M:%SZ}", "nightly", slot, slot, slot, "node-a", 1,
        RunKind.SCHEDULED, attempts=(attempt(1, slot, 1.0, "failed"),),
    )  # fmt: skip
    store.import_history([failed], [])
    assert act_trigger(console) == 303  # one run waiting on the default queue
    text = visible(console.get("/ui/").text)
    assert f"Node node-a leads, epoch {lease.epoch}." in text
    assert "Late runs 0 Missed slots 0 Failed runs 1 Dead letters 0" in text
    assert "Overdue (1) nightly Failing (0) None." in text
    assert re.search(r"Queues Queue Waiting runs Oldest waiting default 1 [\d.]+ m?s", text), text


def act_trigger(console: Console) -> int:
    csrf = console.csrf("/ui/entries/nightly")
    return console.post("/ui/trigger/nightly", {"csrf": csrf}).status_code


def test_a_pause_older_than_the_audit_shown_is_still_said(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed_in(console)
    monkeypatch.setattr(entry, "AUDIT_LIMIT", 2)
    store = console.context.backend()
    store.pause(["nightly"], "db migration", None, "ops")
    later = datetime.now(UTC) + timedelta(minutes=1)  # the pause is at the backend's (real) now
    for _ in range(2):  # newer actions push the pause out of the page's audit log
        store.record_audit(AuditRecord(new_audit_id(), later, "trigger", "nightly", "ops", {}))
    console.context.index().refresh()
    text = visible(console.get("/ui/entries/nightly").text)
    assert (
        "Paused (the pause is older than the 2 actions shown below: beatd audit nightly has it)."
    ) in text
    assert "Resume" in text


def test_the_entries_filters_lay_out_in_a_row_that_wraps(console: Console) -> None:
    signed_in(console)
    assert (
        '<form method="get" action="/ui/entries" class="filters"' in console.get("/ui/entries").text
    )
    css = (Path(entry.__file__).parent / "static" / "console.css").read_text()
    rule = re.search(r"form\.filters \{([^}]*)\}", css)
    assert rule is not None and "display: flex" in rule.group(1)
    assert "flex-wrap: wrap" in rule.group(1)
