"""The API routes the console's pages call exist (by operationId in the OpenAPI document), and
with --api-public-read the pages show to anyone while their actions still need a session."""

from __future__ import annotations

from beatd.console import actions, dead, entries, entry, entry_form, overview
from tests.console.conftest import READER, Console
from tests.console.test_pages import visible

USED = {
    overview.OVERVIEW,
    entries.ENTRY_INDEX,
    entry.GET_ENTRY,
    entry.NEXT_RUNS,
    entry.HISTORY,
    entry.AUDIT,
    entry.ENTRY_INDEX,
    entry_form.ADD,
    entry_form.REPLACE,
    entry_form.REMOVE,
    actions.TRIGGER,
    actions.PAUSE,
    actions.RESUME,
    actions.BACKFILL,
    dead.LIST,
    dead.RETRY,
    dead.RETRY_ALL,
    dead.DELETE,
    dead.DELETE_MANY,
}


def test_every_route_the_pages_call_is_in_the_openapi_document(console: Console) -> None:
    answer = console.client.get(
        "/v1/openapi.json",
        base_url="http://127.0.0.1:9479",
        headers={"Authorization": f"Bearer {READER.token}"},
    )
    operations = {
        operation["operationId"]
        for path in answer.json["paths"].values()
        for operation in path.values()
    }
    assert USED - operations == set()


def test_public_read_shows_pages_but_actions_need_a_session(public_console: Console) -> None:
    page = public_console.get("/ui/entries/nightly")
    assert page.status_code == 200
    assert "Entry nightly" in visible(page.text)
    refused = public_console.post("/ui/trigger/nightly", {"csrf": ""})
    assert refused.status_code == 403
    assert "actions need you signed in with a write token: sign in first" in visible(refused.text)
    assert public_console.context.backend().audit() == []
