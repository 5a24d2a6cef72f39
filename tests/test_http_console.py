"""The API routes the console needs (issue 19) and the dead-letter deletion (issue 18): a real
waitress server in front of a real SQLite file and a real redis-server, as in
tests/test_http_entries.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from beatd.backends import open_backend
from beatd.backends.base import BeatdQueue, Outgoing, StateWrite
from beatd.cli import main
from beatd.cli.api import allowed_hosts
from beatd.clock import FakeClock
from beatd.config import Entry, load_config
from beatd.entry_index import EntryIndex
from beatd.history import (
    Attempt,
    EntrySummary,
    MissedRecord,
    MissedSlots,
    RunKind,
    RunRecord,
)
from beatd.http import all_routes
from beatd.http.app import Access, create_app
from beatd.http.context import ApiContext
from beatd.http.server import ApiServer, ServerSettings
from beatd.state import EntryState
from tests.entries_backends import broker, redis_server
from tests.test_history_cli import SCHEDULES
from tests.test_http import (
    ANY_HEADERS,
    ECHO,
    READER,
    WRITER,
    Api,
    letters,
    only_error,
    start,
    tokens,
)

__all__ = ["broker", "redis_server"]  # fixtures

TICK = "tick@2026-12-05T03:00:00Z"


@pytest.fixture
def api(tmp_path: Path, broker: str) -> Iterator[Api]:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    served = start(tmp_path, broker, folder)
    yield served
    served.server.stop()


def serve(tmp_path: Path, broker: str, now: datetime, index: EntryIndex | None = None) -> Api:
    """The API on a SQLite or Redis backend whose handlers see the time `now`."""
    folder = tmp_path / "schedules"
    folder.mkdir(exist_ok=True)
    (folder / "s.yaml").write_text(SCHEDULES)
    config = load_config([str(folder)])
    opened = lambda: open_backend(broker)  # noqa: E731
    context = ApiContext(opened, lambda: config, lambda: now, entry_index=index)
    table = tokens(tmp_path)
    access = Access(lambda: table, allowed_hosts("127.0.0.1", 0, ()))
    app = create_app([*all_routes(context), ECHO], access)
    server = ApiServer(app, ServerSettings("127.0.0.1", 0, threads=2)).start()
    return Api(f"http://127.0.0.1:{server.port}", server, broker, folder)


def audit_of(broker: str) -> list[tuple[str, str | None, str, object]]:
    backend = open_backend(broker)
    try:
        return sorted((r.action, r.entry, r.by, r.detail) for r in backend.audit())
    finally:
        backend.close()


def remaining(broker: str) -> list[str]:
    backend = open_backend(broker)
    try:
        return [d.id for d in backend.dead_letters()]
    finally:
        backend.close()


# --- deleting dead letters ----------------------------------------------------------------------


def test_a_delete_removes_one_letter_and_the_audit_log_names_the_token(api: Api) -> None:
    letters(api.broker)
    path = f"/v1/dead-letters/{TICK}"
    assert api.ask(path, method="DELETE")[0] == 403
    assert api.ask(path, WRITER.token, "DELETE") == (200, ANY_HEADERS, {"deleted": [TICK]})
    assert remaining(api.broker) == ["gone@x"]
    assert audit_of(api.broker) == [("delete_dead", "tick", "ops", {"run_id": TICK, "deleted": 1})]
    status, _, body = api.ask(path, WRITER.token, "DELETE")
    assert status == 404
    assert only_error(body) == {
        "entry": None,
        "field": "id",
        "message": f"no dead letter with id {TICK!r}",
        "pointer": None,
    }


def test_delete_all_removes_every_letter_one_audit_record_each(api: Api) -> None:
    letters(api.broker)
    body = json.dumps({"all": True}).encode()
    status, _, answer = api.ask("/v1/dead-letters/delete", WRITER.token, "POST", body)
    assert (status, answer) == (200, {"deleted": [TICK, "gone@x"]})
    assert remaining(api.broker) == []
    assert [(a, e) for a, e, _, _ in audit_of(api.broker)] == [
        ("delete_dead", "gone"),
        ("delete_dead", "tick"),
    ]
    assert api.ask("/v1/dead-letters")[2] == {"dead_letters": [], "total": 0}


def test_dead_letters_come_a_page_at_a_time_with_their_total(api: Api) -> None:
    letters(api.broker)
    status, _, first = api.ask("/v1/dead-letters?limit=1")
    assert (status, [d["id"] for d in first["dead_letters"]], first["total"]) == (200, [TICK], 2)
    _, _, second = api.ask("/v1/dead-letters?offset=1&limit=1")
    assert ([d["id"] for d in second["dead_letters"]], second["total"]) == (["gone@x"], 2)
    assert api.ask("/v1/dead-letters?offset=5")[2] == {"dead_letters": [], "total": 2}
    status, _, refused = api.ask("/v1/dead-letters?limit=0")
    assert (status, only_error(refused)["message"]) == (
        422,
        "limit must be a whole number from 1 to 1000, got '0'",
    )


def test_delete_by_ids_deletes_the_known_and_names_the_unknown(api: Api) -> None:
    letters(api.broker)
    body = json.dumps({"ids": ["nope@1", TICK]}).encode()
    status, _, answer = api.ask("/v1/dead-letters/delete", WRITER.token, "POST", body)
    assert status == 404
    assert only_error(answer) == {
        "entry": None,
        "field": "ids",
        "message": "no dead letter with id 'nope@1'; the others asked for were deleted",
        "pointer": "/ids",
    }
    assert remaining(api.broker) == ["gone@x"]


@pytest.mark.parametrize(
    ("body", "message", "pointer"),
    [
        ({}, 'give either "all": true or "ids", not both and not neither', ""),
        (
            {"all": True, "ids": ["a"]},
            'give either "all": true or "ids", not both and not neither',
            "",
        ),
        ({"all": False}, '"all" must be true', "/all"),
        ({"ids": []}, '"ids" must be a list of 1 to 1000 run ids', "/ids"),
        ({"ids": ["a", ""]}, "ids[1] must be a run id (a non-empty string)", "/ids/1"),
        ({"id": "a"}, 'the body must be {"all": true} or {"ids": [RUN_ID, ...]}', ""),
    ],
    ids=["neither", "both", "all_false", "no_ids", "empty_id", "unknown_field"],
)
def test_a_delete_body_of_neither_form_is_refused_with_nothing_deleted(
    api: Api, body: object, message: str, pointer: str
) -> None:
    letters(api.broker)
    status, _, answer = api.ask(
        "/v1/dead-letters/delete", WRITER.token, "POST", json.dumps(body).encode()
    )
    assert status == 422
    assert only_error(answer)["message"] == message
    assert only_error(answer)["pointer"] == pointer
    assert remaining(api.broker) == [TICK, "gone@x"]


def test_dead_rm_deletes_by_id_and_all_and_refuses_an_unknown_id(broker: str) -> None:
    letters(broker)
    runner = CliRunner()
    done = runner.invoke(main, ["dead", "rm", TICK, "--by", "me", "--broker", broker])
    assert (done.exit_code, done.stdout) == (0, "deleted 1 dead letter(s)\n")
    assert audit_of(broker) == [("delete_dead", "tick", "me", {"run_id": TICK, "deleted": 1})]
    again = runner.invoke(main, ["dead", "rm", TICK, "gone@x", "--broker", broker])
    assert (again.exit_code, again.stdout) == (2, "deleted 1 dead letter(s)\n")
    assert again.stderr == f"beatd: ID: no dead letter with id {TICK!r} (see beatd dead list)\n"
    letters(broker)
    everything = runner.invoke(main, ["dead", "rm", "--all", "--broker", broker])
    assert (everything.exit_code, everything.stdout) == (0, "deleted 2 dead letter(s)\n")
    assert remaining(broker) == []


@pytest.mark.parametrize("args", [[], ["x@1", "--all"]], ids=["neither", "both"])
def test_dead_rm_needs_ids_or_all(broker: str, args: list[str]) -> None:
    letters(broker)
    done = CliRunner().invoke(main, ["dead", "rm", *args, "--broker", broker])
    assert done.exit_code == 2
    assert done.stderr == "beatd: ID/--all: give run IDs or --all, not both and not neither\n"
    assert remaining(broker) == [TICK, "gone@x"]


# --- next runs with DST marks -------------------------------------------------------------------


def test_next_runs_mark_what_a_dst_rule_moved_as_beatd_next_json_does(
    tmp_path: Path, broker: str
) -> None:
    api = serve(tmp_path, broker, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    try:
        entry = {"name": "berlin", "task": "t", "cron": "30 2 * * *", "timezone": "Europe/Berlin"}
        headers = {"Content-Type": "application/json"}
        body = json.dumps(entry).encode()
        assert api.ask("/v1/entries", WRITER.token, "POST", body, headers)[0] == 201
        status, _, answer = api.ask("/v1/next-runs/berlin?count=3")
    finally:
        api.server.stop()
    asked = ["--cron", "30 2 * * *", "--timezone", "Europe/Berlin", "--after", "2026-03-28T12:00"]
    printed = CliRunner().invoke(main, ["next", *asked, "-n", "3", "--json"])
    moved = {
        "rule": "spring_gap_fixed_time",
        "note": "for 02:30:00, which does not exist (clocks go forward, 02:00-03:00): a "
        "fixed-time job runs at the jump",
    }
    assert status == 200
    assert answer == {
        "entry": "berlin",
        "slots": ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"],
        "runs": [
            {"slot": "2026-03-29T01:00:00Z", "dst": moved},
            {"slot": "2026-03-30T00:30:00Z", "dst": None},
            {"slot": "2026-03-31T00:30:00Z", "dst": None},
        ],
    }
    assert answer["runs"] == json.loads(printed.stdout)


# --- the entry index ----------------------------------------------------------------------------


def add_entries(api: Api, *entries: dict[str, object]) -> None:
    body = json.dumps({"entries": list(entries)}).encode()
    headers = {"Content-Type": "application/json"}
    assert api.ask("/v1/entries/batch", WRITER.token, "POST", body, headers)[0] == 201


def test_the_entry_index_filters_sorts_and_pages_files_and_runtime_entries(api: Api) -> None:
    add_entries(
        api,
        # each period a multiple of the one before: their next slots come in name order
        *(
            {"name": f"report-{n}", "task": "t.report", "every": every}
            for n, every in enumerate(["28d", "7d", "1d", "1h", "1m"][::-1])
        ),
        {"name": "sync", "task": "t.sync", "cron": "0 * * * *", "queue": "io"},
    )
    status, _, page = api.ask("/v1/entry-index?name=report&sort=next_due&offset=1&limit=2")
    assert status == 200
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 2)
    assert [e["name"] for e in page["entries"]] == ["report-1", "report-2"]
    assert page["entries"][0]["schedule"] == "every 1h"
    assert page["entries"][0]["source"] == "api"
    _, _, files = api.ask("/v1/entry-index?source=file")
    assert [(e["name"], e["source"], e["version"]) for e in files["entries"]] == [
        ("nightly", "file", None),
        ("tick", "file", None),
    ]
    _, _, io = api.ask("/v1/entry-index?queue=io&task=t.sync&paused=false")
    assert [e["name"] for e in io["entries"]] == ["sync"]
    assert api.ask("/v1/entry-index?paused=true")[2]["total"] == 0
    assert api.ask("/v1/entry-index")[2]["total"] == 8
    _, _, exact = api.ask("/v1/entry-index?exact=report-1")
    assert [e["name"] for e in exact["entries"]] == ["report-1"]
    assert api.ask("/v1/entry-index?exact=report")[2]["total"] == 0


def conditional(api: Api, path: str, tag: str) -> tuple[int, str | None, bytes]:
    """GET `path` with If-None-Match `tag`: the status, the ETag and the raw body."""
    request = urllib.request.Request(api.base + path, headers={"If-None-Match": tag})
    request.add_header("Authorization", f"Bearer {READER.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["ETag"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["ETag"], error.read()


def test_the_entry_index_answers_304_to_its_etag_until_the_index_changes(api: Api) -> None:
    status, headers, first = api.ask("/v1/entry-index?sort=name")
    tag = headers["ETag"]
    assert status == 200
    assert conditional(api, "/v1/entry-index?sort=name", tag) == (304, tag, b"")
    assert conditional(api, "/v1/entry-index?sort=name", '"another"')[0] == 200
    add_entries(api, {"name": "sync", "task": "t.sync", "cron": "0 * * * *"})
    status, fresh, body = conditional(api, "/v1/entry-index?sort=name", tag)
    assert (status, fresh != tag) == (200, True)
    page = json.loads(body)
    assert page["total"] == first["total"] + 1
    assert "sync" in [e["name"] for e in page["entries"]]


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("sort=due", "sort", "sort must be name, next_due, last_status, got 'due'"),
        ("source=yaml", "source", "source must be api or file, got 'yaml'"),
        ("paused=yes", "paused", "paused must be true or false, got 'yes'"),
        ("limit=501", "limit", "limit must be a whole number from 1 to 500, got '501'"),
        ("name=", "name", "name is empty: leave it out, or give a value"),
    ],
    ids=["sort", "source", "paused", "limit", "empty_name"],
)
def test_a_wrong_entry_index_query_names_its_parameter(
    api: Api, query: str, field: str, message: str
) -> None:
    status, _, body = api.ask(f"/v1/entry-index?{query}")
    assert status == 422
    assert only_error(body) == {"entry": None, "field": field, "message": message, "pointer": None}


def test_the_entry_index_answers_503_until_it_is_built(tmp_path: Path, broker: str) -> None:
    index = EntryIndex(lambda: open_backend(broker), lambda: None, FakeClock(NOW))
    api = serve(tmp_path, broker, NOW, index)
    try:
        status, headers, body = api.ask("/v1/entry-index")
        index.build()
        after = api.ask("/v1/entry-index")[0]
    finally:
        api.server.stop()
        index.close()
    assert (status, headers["Retry-After"], after) == (503, "5", 200)
    assert only_error(body)["message"] == (
        "this node's entry index is still being built (it reads every entry once at start); "
        "try again in a few seconds"
    )


# --- the overview -------------------------------------------------------------------------------

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


def seed_overview(broker: str, config_entry: Entry) -> int:
    """A leader, a waiting run, two dead letters, and an hour of history: one run late, one
    failed, one failed two hours ago, three slots missed; `tick` overdue, `nightly` failing.
    The leader's epoch."""
    letters(broker)
    store = open_backend(broker)
    try:
        now = datetime.fromtimestamp(store.server_time(), UTC)
        lease = store.acquire_lease("node-a", 600)
        assert lease is not None
        horizon = (now - timedelta(hours=1)).replace(microsecond=0)
        state = EntryState("tick", horizon, horizon, config_entry.identity)
        run = Outgoing("tick", f"tick@{horizon:%Y-%m-%dT%H:%M:%SZ}", BeatdQueue("reports"), "{}")
        assert store.commit(lease, [StateWrite(state, None)], [run]) == set()
        ended = now - timedelta(minutes=5)
        failed = Attempt(1, "w", "h", 1, ended - timedelta(seconds=2), ended, "failed")
        runs = [
            RunRecord("nightly@1", "nightly", ended, ended, ended, "a", 1, RunKind.CAUGHT_UP),
            RunRecord("nightly@2", "nightly", ended, ended, ended, "a", 1, RunKind.SCHEDULED,
                      attempts=(failed,)),
            RunRecord("nightly@0", "nightly", ended, ended, now - timedelta(hours=2), "a", 1,
                      RunKind.SCHEDULED, attempts=(failed,)),
        ]  # fmt: skip
        missed = MissedRecord(MissedSlots("nightly", "skipped", ended, ended, 3), now, "a", 1)
        summary = EntrySummary("nightly", "failed", ended, timedelta(seconds=2), None, ended, 1)
        store.import_history(runs, [missed], [summary])
        return lease.epoch
    finally:
        store.close()


def test_the_overview_shows_leader_queues_dead_letters_the_last_hour_and_trouble(
    api: Api,
) -> None:
    config = load_config([str(api.schedules)])
    epoch = seed_overview(api.broker, config.entries["tick"])
    status, _, body = api.ask("/v1/overview")
    assert status == 200
    (queue,) = body.pop("queues")
    assert (queue["name"], queue["depth"]) == ("reports", 1)
    assert 0 <= queue["oldest_waiting_s"] < 60
    assert [n["node"] for n in body.pop("nodes")] == []
    assert body.pop("now").endswith("Z")
    assert body == {
        "leader": {"node": "node-a", "epoch": epoch},
        "dead_letters": 2,
        "last_hour": {"late": 1, "missed": 3, "failed": 1, "complete": True},
        "index_ready": True,
        "overdue": ["tick"],
        "overdue_total": 1,
        "failing": ["nightly"],
        "failing_total": 1,
        "warnings": [],
    }


def test_the_overview_lists_no_entries_while_the_index_is_built(
    tmp_path: Path, broker: str
) -> None:
    index = EntryIndex(lambda: open_backend(broker), lambda: None, FakeClock(NOW))
    api = serve(tmp_path, broker, NOW, index)
    try:
        status, _, body = api.ask("/v1/overview")
    finally:
        api.server.stop()
        index.close()
    assert status == 200
    assert (body["index_ready"], body["overdue"], body["failing"]) == (False, [], [])
    assert (body["leader"], body["queues"], body["dead_letters"]) == (None, [], 0)
