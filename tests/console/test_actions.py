"""The console's actions under Flask's test client on a real SQLite file: each POST carries
the page's CSRF token and the console's Origin, lands in the backend and in the audit log under
the signed-in token's name, and answers 303 back with what was done; refusals are the API's."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.console.conftest import READER, WRITER, Console
from tests.console.seeds import add_entries, seed_dead_letters
from tests.console.test_pages import visible
from tests.test_controls_cli import arrange_horizon


def act(console: Console, path: str, form: dict[str, str] | None = None, page: str = "/ui/") -> Any:
    return console.post(path, {"csrf": console.csrf(page), **(form or {})})


def audit(console: Console) -> list[tuple[str, str | None, str]]:
    return [(r.action, r.entry, r.by) for r in console.context.backend().audit()]


def test_trigger_publishes_a_run_and_says_so(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(console, "/ui/trigger/nightly", page="/ui/entries/nightly")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/entries/nightly")
    text = visible(console.get("/ui/entries/nightly").text)
    assert re.search(r"run nightly@manual-[0-9a-f]{32} published", text), text
    assert audit(console) == [("trigger", "nightly", "ops")]
    assert "trigger ops" in text  # the audit log on the entry's page


def test_pause_with_a_reason_and_an_end_then_resume(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(
        console, "/ui/pause/nightly", {"reason": "db migration", "until": "2030-01-01T00:00:00Z"},
        "/ui/entries/nightly",
    )  # fmt: skip
    assert answer.status_code == 303
    text = visible(console.get("/ui/entries/nightly").text)
    assert "paused nightly until 2030-01-01T00:00:00Z: db migration" in text
    # since: the backend's clock (real), not the console's (the test's)
    assert re.search(
        r"Paused by ops since 2026-\d\d-\d\dT\d\d:\d\d:\d\dZ, "
        "until 2030-01-01T00:00:00Z: db migration",
        text,
    ), text
    control = console.context.backend().load_controls(["nightly"])["nightly"]
    assert control.pause is not None and control.pause.reason == "db migration"
    assert act(console, "/ui/resume/nightly", page="/ui/entries/nightly").status_code == 303
    text = visible(console.get("/ui/entries/nightly").text)
    assert "Paused by" not in text
    assert [a for a, _, _ in audit(console)] == ["resume", "pause"]


def test_a_pause_without_a_reason_is_the_api_422(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(console, "/ui/pause/nightly", {"reason": ""}, "/ui/entries/nightly")
    assert answer.status_code == 422
    assert "reason:" in visible(answer.text)
    assert audit(console) == []


def test_backfill_previews_a_dry_run_then_publishes_when_confirmed(
    console: Console, tmp_path: Path
) -> None:
    console.sign_in(WRITER)
    horizon = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
    arrange_horizon(console.context.backend(), tmp_path / "schedules", horizon, "nightly")
    span = {"from": "2026-12-03T00:00:00Z", "to": "2026-12-05T00:00:00Z"}
    preview = act(console, "/ui/backfill/nightly", span, "/ui/entries/nightly")
    assert preview.status_code == 200
    text = visible(preview.text)
    assert "a dry run: nothing is published yet." in text
    assert "2 runs would be published if not already:" in text
    assert "nightly@2026-12-03T03:00:00Z nightly@2026-12-04T03:00:00Z" in text
    assert audit(console) == []
    csrf = re.search(r'name="csrf" value="([^"]*)"', preview.text)
    assert csrf is not None
    done = console.post("/ui/backfill-confirm/nightly", {"csrf": csrf.group(1), **span})
    assert done.status_code == 303
    text = visible(console.get(done.headers["Location"]).text)
    assert (
        "backfill of nightly from 2026-12-03T00:00:00Z to 2026-12-05T00:00:00Z: published 2, "
        "0 already there"
    ) in text
    assert audit(console) == [("backfill", "nightly", "ops")]


def test_dead_letters_retry_and_delete(console: Console) -> None:
    console.sign_in(WRITER)
    seed_dead_letters(console)
    answer = act(console, "/ui/dead/retry/nightly@2026-12-05T03:00:00Z", page="/ui/dead")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/dead")
    text = visible(console.get("/ui/dead").text)
    assert "requeued dead letter nightly@2026-12-05T03:00:00Z" in text
    assert act(console, "/ui/dead/delete/gone@x", page="/ui/dead").status_code == 303
    text = visible(console.get("/ui/dead").text)
    assert "deleted dead letter gone@x" in text
    assert "No dead letters." in text
    assert console.context.backend().dead_letters() == []
    assert sorted(a for a, _, _ in audit(console)) == ["delete_dead", "requeue_dead"]


def test_delete_all_dead_letters(console: Console) -> None:
    console.sign_in(WRITER)
    seed_dead_letters(console)
    answer = act(console, "/ui/dead/delete-all", page="/ui/dead")
    assert answer.status_code == 303
    assert "deleted 2 dead letters" in visible(console.get("/ui/dead").text)


def test_a_read_token_is_refused_in_the_api_words(console: Console) -> None:
    console.sign_in(READER)
    answer = act(console, "/ui/trigger/nightly", page="/ui/entries/nightly")
    assert answer.status_code == 403
    assert "token viewer may only read; this request needs a write token" in visible(answer.text)
    assert audit(console) == []


def test_an_action_without_csrf_or_from_another_origin_is_refused(console: Console) -> None:
    console.sign_in(WRITER)
    assert console.post("/ui/trigger/nightly", {}).status_code == 403
    csrf = console.csrf("/ui/entries/nightly")
    answer = console.post("/ui/trigger/nightly", {"csrf": csrf}, origin="http://evil.test")
    assert answer.status_code == 403
    assert audit(console) == []


def test_create_edit_and_delete_a_runtime_entry(console: Console) -> None:
    console.sign_in(WRITER)
    fields = "task: app.report\ncron: 30 4 * * *\ntimezone: Europe/Paris\n"
    answer = act(console, "/ui/new-entry", {"name": "report", "fields": fields}, "/ui/new-entry")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/ui/entries/report")
    page = console.get("/ui/entries/report").text
    assert "added report (version 1)" in visible(page)
    assert "A runtime entry, version 1" in visible(page)
    edit = console.get("/ui/edit/report").text
    assert "task: app.report\ncron: 30 4 * * *\ntimezone: Europe/Paris\n" in edit
    changed = "task: app.report\ncron: 45 4 * * *\n"
    answer = act(console, "/ui/edit/report", {"fields": changed, "version": "1"}, "/ui/edit/report")
    assert answer.status_code == 303
    assert "changed report (version 2)" in visible(console.get("/ui/entries/report").text)
    stored = console.context.backend().get_entry("report")
    assert stored is not None
    # a replace: the fields not given are their defaults again
    assert (stored.definition["cron"], stored.definition["timezone"]) == ("45 4 * * *", "UTC")
    stale = act(console, "/ui/edit/report", {"fields": fields, "version": "1"}, "/ui/edit/report")
    assert stale.status_code == 412
    assert "If-Match:" in visible(stale.text)
    gone = act(console, "/ui/delete/report", {"version": "2"}, "/ui/entries/report")
    assert (gone.status_code, gone.headers["Location"]) == (303, "/ui/entries")
    assert console.context.backend().get_entry("report") is None
    assert audit(console) == [
        ("entry.remove", "report", "ops"),
        ("entry.set", "report", "ops"),
        ("entry.add", "report", "ops"),
    ]


def test_bad_fields_show_the_api_422_by_field_in_the_cli_words(console: Console) -> None:
    console.sign_in(WRITER)
    fields = "task: app.report\ncron: 61 * * * *\n"
    answer = act(console, "/ui/new-entry", {"name": "report", "fields": fields}, "/ui/new-entry")
    assert answer.status_code == 422
    text = visible(answer.text)
    assert "The entry was not saved: cron:" in text
    assert "61" in text
    assert fields.rstrip() in answer.text  # the text is kept for the next try
    assert console.context.backend().get_entry("report") is None


def test_yaml_that_is_not_a_mapping_is_refused_with_its_place(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(console, "/ui/new-entry", {"name": "x", "fields": "- a\n"}, "/ui/new-entry")
    assert answer.status_code == 422
    assert "fields:1:1: expected a mapping of entry fields, such as task: and cron:" in visible(
        answer.text
    )
    answer = act(console, "/ui/new-entry", {"name": "x", "fields": "a: [\n"}, "/ui/new-entry")
    assert answer.status_code == 422
    assert "fields:2:1:" in visible(answer.text)


NO_VERSION = (
    "version: the form has no version of the entry (a whole number), so it could overwrite "
    "another change: open the entry's page again and retry"
)


def test_an_edit_or_delete_without_a_version_is_refused_and_says_why(console: Console) -> None:
    add_entries(console, {"name": "mine", "task": "a.b", "cron": "0 4 * * *"})
    console.sign_in(WRITER)
    fields = "task: a.c\ncron: 0 6 * * *\n"
    for path, form in (
        ("/ui/edit/mine", {"fields": fields, "version": "one"}),
        ("/ui/delete/mine", {}),
    ):
        answer = act(console, path, form)
        assert answer.status_code == 422, path
        assert NO_VERSION in html.unescape(visible(answer.text)), path
    stored = console.context.backend().get_entry("mine")
    assert stored is not None and stored.version == 1


def test_a_file_entry_cannot_be_edited_and_the_api_names_its_file(console: Console) -> None:
    console.sign_in(WRITER)
    answer = act(
        console, "/ui/edit/nightly", {"fields": "task: x\nevery: 10s\n", "version": "1"},
        "/ui/edit/nightly",
    )  # fmt: skip
    assert answer.status_code == 409
    assert "s.yaml" in visible(answer.text)


def test_runtime_entries_added_through_the_api_are_listed(console: Console) -> None:
    console.sign_in(WRITER)
    add_entries(console, {"name": "a", "task": "t.a", "every": "10s"})
    assert "a API t.a" in visible(console.get("/ui/entries?sort=name").text)


def test_the_edit_form_saves_its_own_text_unchanged(console: Console) -> None:
    console.sign_in(WRITER)
    add_entries(console, {"name": "r", "task": "t.r", "cron": "0 3 * * *", "queue": "reports"})
    page = console.get("/ui/edit/r").text
    found = re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S)
    assert found is not None
    text = html.unescape(found.group(1))
    assert text.startswith("cron: 0 3 * * *\nqueue: reports\ntask: t.r\n")
    saved = act(console, "/ui/edit/r", {"fields": text, "version": "1"}, "/ui/edit/r")
    assert (saved.status_code, saved.headers["Location"]) == (303, "/ui/entries/r")
    stored = console.context.backend().get_entry("r")
    assert stored is not None and stored.version == 2
    assert (stored.definition["cron"], stored.definition["queue"]) == ("0 3 * * *", "reports")


def test_a_paused_entry_is_listed_on_the_overview(console: Console) -> None:
    console.sign_in(WRITER)
    assert "Paused (0) None." in visible(console.get("/ui/").text)
    form = {"reason": "db migration"}
    assert act(console, "/ui/pause/nightly", form, "/ui/entries/nightly").status_code == 303
    console.context.index().refresh()  # the index reads pauses in bulk, every few seconds
    assert "Paused (1) nightly" in visible(console.get("/ui/").text)


def test_public_read_shows_pages_but_actions_need_a_session(public_console: Console) -> None:
    page = public_console.get("/ui/entries/nightly")
    assert page.status_code == 200
    assert "Entry nightly" in visible(page.text)
    refused = public_console.post("/ui/trigger/nightly", {"csrf": ""})
    assert refused.status_code == 403
    assert "actions need you signed in with a write token: sign in first" in visible(refused.text)
    assert audit(public_console) == []


def test_a_trigger_the_api_refuses_is_shown_in_the_api_words(console: Console) -> None:
    console.sign_in(WRITER)
    assert (
        act(console, "/ui/pause/nightly", {"reason": "quiet"}, "/ui/entries/nightly").status_code
        == 303
    )
    direct = console.client.post(
        "/v1/entries/nightly/trigger",
        base_url="http://127.0.0.1:9479",
        json={},
        headers={"Authorization": f"Bearer {WRITER.token}"},
    )
    assert direct.status_code == 409
    said = direct.json["errors"][0]["message"]
    answer = act(console, "/ui/trigger/nightly", page="/ui/entries/nightly")
    assert answer.status_code == 409
    assert f"Not done (409) {said} Back to the overview" in visible(answer.text)
