"""/v1/entries (beatd.http.entries_routes) through a real waitress server in front of SQLite
and a real redis-server: statuses, ETag and If-Match, whole error bodies in `beatd check`'s
words, the batch all or nothing, and the audit log under the token's name."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beatd.backends import open_backend
from beatd.config.convert import ENTRY_NAME_RULE
from beatd.runtime_entries import ResolvedEntry
from tests.entries_backends import broker, redis_server, register_files
from tests.test_history_cli import SCHEDULES
from tests.test_http import ANY_HEADERS, READER, WRITER, Api, start

__all__ = ["broker", "redis_server"]  # fixtures
NIGHTLY = {"task": "reports.nightly", "cron": "30 2 * * *"}


@pytest.fixture
def api(tmp_path: Path, broker: str) -> Iterator[Api]:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text(SCHEDULES)
    served = start(tmp_path, broker, folder)
    yield served
    served.server.stop()


def send(api: Api, method: str, path: str, body: Any = None, **headers: str) -> Any:
    data = None if body is None else json.dumps(body).encode()
    sent = {
        "Content-Type": "application/json",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return api.ask(path, WRITER.token, method, data, sent)


def test_create_read_replace_and_remove(api: Api) -> None:
    status, headers, created = send(api, "POST", "/v1/entries", {"name": "a/b", **NIGHTLY})
    assert (status, headers["Location"], headers["ETag"]) == (201, "/v1/entries/a/b", '"1"')
    assert (created["name"], created["version"], created["created_by"]) == ("a/b", 1, "ops")
    status, headers, read = api.ask("/v1/entries/a/b", READER.token)
    assert (status, headers["ETag"], read) == (200, '"1"', created)
    status, _, replaced = send(
        api, "PUT", "/v1/entries/a/b", {"task": "x.y", "every": "1h"}, If_Match='"1"'
    )
    assert (status, replaced["version"], replaced["definition"]["every"]) == (200, 2, "1h")
    assert send(api, "PUT", "/v1/entries/a/b", {"task": "x.y", "every": "2h"}, If_Match='"1"') == (
        412,
        ANY_HEADERS,
        {
            "errors": [
                {
                    "entry": "a/b",
                    "field": "If-Match",
                    "message": "entry a/b is at version 2, not the expected 1: it changed since "
                    "it was read; nothing was written: read it again and retry",
                    "pointer": None,
                }
            ]
        },
    )
    assert send(api, "DELETE", "/v1/entries/a/b", If_Match='"1"')[0] == 412
    status, _, removed = send(api, "DELETE", "/v1/entries/a/b", If_Match='"2"')
    assert (status, removed["version"]) == (200, 2)
    assert send(api, "DELETE", "/v1/entries/a/b") == (
        404,
        ANY_HEADERS,
        {
            "errors": [
                {
                    "entry": "a/b",
                    "field": "name",
                    "message": "no runtime entry a/b",
                    "pointer": None,
                }
            ]
        },
    )
    backend = open_backend(api.broker)
    try:
        assert [(r.action, r.by) for r in backend.audit("a/b")] == [
            ("entry.remove", "ops"),
            ("entry.set", "ops"),
            ("entry.add", "ops"),
        ]
    finally:
        backend.close()


def test_put_creates_an_entry_not_there(api: Api) -> None:
    status, headers, created = send(api, "PUT", "/v1/entries/fresh", NIGHTLY)
    assert (status, headers["ETag"], created["version"]) == (201, '"1"', 1)


def test_put_creates_with_201_when_the_feed_holds_records_already(api: Api) -> None:
    assert send(api, "POST", "/v1/entries", {"name": "first", **NIGHTLY})[0] == 201
    status, _, created = send(api, "PUT", "/v1/entries/second", NIGHTLY)
    assert (status, created["name"], created["version"]) == (201, "second", 2)
    assert send(api, "PUT", "/v1/entries/second", NIGHTLY)[0] == 200


def test_invalid_fields_are_422_in_the_words_of_beatd_check(api: Api) -> None:
    body = {"name": "bad", "task": "x.y", "every": "1h", "kwargs": [1], "priority": 12}
    assert send(api, "POST", "/v1/entries", body) == (
        422,
        ANY_HEADERS,
        {
            "errors": [
                {
                    "entry": "bad",
                    "field": "priority",
                    "message": "expected a whole number 0-9 (9 highest), got number 12",
                    "pointer": "/priority",
                },
                {
                    "entry": "bad",
                    "field": "kwargs",
                    "message": "expected a mapping, got a list",
                    "pointer": "/kwargs",
                },
            ]
        },
    )


def test_args_over_64_kib_are_413_and_a_taken_name_409(api: Api) -> None:
    big = {"name": "big", **NIGHTLY, "args": ["x" * 70_000]}
    status, _, body = send(api, "POST", "/v1/entries", big)
    assert (status, body["errors"][0]["field"], body["errors"][0]["pointer"]) == (
        413,
        "args",
        "/args",
    )
    served_file = api.schedules / "s.yaml"  # a file entry of the daemon's, not registered yet
    assert send(api, "POST", "/v1/entries", {"name": "nightly", **NIGHTLY}) == (
        409,
        ANY_HEADERS,
        {
            "errors": [
                {
                    "entry": "nightly",
                    "field": None,
                    "message": "entry nightly: the name is taken by a file entry in "
                    f"{served_file}; names are unique across schedule files and runtime "
                    "entries: choose another name",
                    "pointer": None,
                }
            ]
        },
    )
    register_files_of(api, {"billing": "schedules/other.yaml"})  # by another node's leader
    status, _, body = send(api, "POST", "/v1/entries", {"name": "billing", **NIGHTLY})
    assert (status, body["errors"][0]["message"]) == (
        409,
        "entry billing: the name is taken by a file entry in schedules/other.yaml; names are "
        "unique across schedule files and runtime entries: choose another name",
    )
    status, _, body = send(api, "PUT", "/v1/entries/billing", NIGHTLY)
    assert (status, body["errors"][0]["message"]) == (
        409,
        "entry billing is defined in schedules/other.yaml and cannot be changed or removed at "
        "runtime: edit schedules/other.yaml and reload (pause, resume, trigger and backfill work "
        "on it)",
    )
    assert send(api, "POST", "/v1/entries", {"name": "x", **NIGHTLY})[0] == 201
    status, _, body = send(api, "POST", "/v1/entries", {"name": "x", **NIGHTLY})
    assert (status, body["errors"][0]["message"]) == (
        409,
        "entry x exists already (version 1); nothing was written",
    )


def register_files_of(api: Api, files: dict[str, str]) -> None:
    backend = open_backend(api.broker)
    try:
        register_files(backend, files)
    finally:
        backend.close()


def test_a_batch_is_all_or_nothing_with_pointers_into_it(api: Api) -> None:
    batch = {"entries": [{"name": "a", **NIGHTLY}, {"name": "b", "task": "x.y", "every": "0s"}]}
    status, _, body = send(api, "POST", "/v1/entries/batch", batch)
    assert status == 422
    assert [(e["entry"], e["pointer"]) for e in body["errors"]] == [("b", "/entries/1/every")]
    assert api.ask("/v1/entries?source=api")[2] == {"entries": [], "next_after": None}
    batch["entries"][1]["every"] = "5m"
    status, _, body = send(api, "POST", "/v1/entries/batch", batch)
    assert (status, [e["name"] for e in body["entries"]]) == (201, ["a", "b"])
    # the answer (each definition's text spliced in) is the entries as read back
    assert body["entries"] == [api.ask(f"/v1/entries/{n}", READER.token)[2] for n in "ab"]
    assert gc.isenabled()  # paused for each batch (written or refused), then on again


def test_a_batch_of_more_than_10000_entries_is_413_and_writes_nothing(api: Api) -> None:
    batch = {"entries": [{"name": f"m{i}", **NIGHTLY} for i in range(10_001)]}
    assert send(api, "POST", "/v1/entries/batch", batch) == (
        413,
        ANY_HEADERS,
        {
            "errors": [
                {
                    "entry": None,
                    "field": "entries",
                    "message": "a batch holds at most 10000 entries, this one 10001; nothing was "
                    "written: send it as several batches (Client.add_many does)",
                    "pointer": "/entries",
                }
            ]
        },
    )
    assert api.ask("/v1/entries?source=api")[2] == {"entries": [], "next_after": None}


def test_a_malformed_name_is_refused_in_beatd_checks_words_and_a_missing_one_required(
    api: Api,
) -> None:
    batch = {"entries": [{"name": "ok", **NIGHTLY}, {"name": "a b", **NIGHTLY}]}
    assert send(api, "POST", "/v1/entries/batch", batch)[2] == {
        "errors": [
            {
                "entry": "a b",
                "field": None,
                "message": ENTRY_NAME_RULE,
                "pointer": "/entries/1/name",
            }
        ]
    }
    status, _, body = send(api, "POST", "/v1/entries", NIGHTLY)
    assert (status, body["errors"]) == (
        422,
        [
            {
                "entry": None,
                "field": "name",
                "message": "name is required: entry names use letters, digits and _ . : / -, "
                "with no empty, '.' or '..' part between slashes (a run's id is NAME@SLOT)",
                "pointer": "/name",
            }
        ],
    )


def test_list_pages_with_the_file_entries_and_next_runs(api: Api) -> None:
    send(api, "POST", "/v1/entries/batch", {"entries": [{"name": "a", **NIGHTLY}]})
    status, _, page = api.ask("/v1/entries?limit=2")
    assert status == 200
    assert [(e["name"], e["source"].rsplit("/", 1)[-1]) for e in page["entries"]] == [
        ("a", "api"),
        ("nightly", "s.yaml"),
    ]
    assert page["next_after"] == "nightly"
    rest = api.ask("/v1/entries?limit=2&after=nightly")[2]
    assert ([e["name"] for e in rest["entries"]], rest["next_after"]) == (["tick"], None)
    assert api.ask("/v1/entries?source=nope")[0] == 422
    status, _, runs = api.ask("/v1/next-runs/a?count=2")
    assert (status, runs["entry"], len(runs["slots"])) == (200, "a", 2)
    assert all(slot.endswith("T02:30:00Z") for slot in runs["slots"])
    assert api.ask("/v1/next-runs/nope")[0] == 404


def test_writes_need_a_write_token(api: Api) -> None:
    body = json.dumps({"name": "a", **NIGHTLY}).encode()
    headers = {"Content-Type": "application/json"}
    assert api.ask("/v1/entries", READER.token, "POST", body, headers)[0] == 403


def test_a_name_with_a_dot_dot_part_is_refused_in_the_files_words(api: Api) -> None:
    status, _, body = send(api, "POST", "/v1/entries", {"name": "x/../dead", **NIGHTLY})
    assert (status, body) == (
        422,
        {
            "errors": [
                {
                    "entry": "x/../dead",
                    "field": None,
                    "message": "entry names use letters, digits and _ . : / -, with no empty, "
                    "'.' or '..' part between slashes (a run's id is NAME@SLOT)",
                    "pointer": "/name",
                }
            ]
        },
    )


def test_a_name_stored_before_the_dot_dot_rule_can_still_be_read_and_removed(api: Api) -> None:
    backend = open_backend(api.broker)
    try:
        old = ResolvedEntry("x/../../dead", {"task": "a.b", "every": "1h"})
        backend.put_entry(old, "ops")
    finally:
        backend.close()
    status, _, read = api.ask("/v1/entries/x%2F..%2F..%2Fdead", READER.token)
    assert (status, read["name"]) == (200, "x/../../dead")
    status, _, removed = send(api, "DELETE", "/v1/entries/x%2F..%2F..%2Fdead")
    assert (status, removed["name"]) == (200, "x/../../dead")
    assert api.ask("/v1/entries/x%2F..%2F..%2Fdead", READER.token)[0] == 404
