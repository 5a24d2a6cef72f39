"""`beatd.Client`: one scenario through both ways, a backend URL (SQLite, a real redis-server)
and the HTTP API (a real waitress server in front of the same backends): the same entries,
the same exceptions, the same messages."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import beatd
from beatd.client import Client, Conflict, InvalidRequest, NotFound, TooLarge, VersionConflict
from tests.entries_backends import broker, redis_server
from tests.test_http import WRITER, start

__all__ = ["broker", "redis_server"]  # fixtures
NIGHTLY = {"task": "reports.nightly", "cron": "30 2 * * *", "kwargs": {"tenant": "acme"}}


@pytest.fixture(params=["backend", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(transport: str, broker: str, tmp_path: Path) -> Iterator[Client]:
    if transport == "backend":
        with Client(broker, by="ops@host") as direct:
            yield direct
        return
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text("entries: {}\n")
    api = start(tmp_path, broker, folder)
    try:
        with Client(api.base, token=WRITER.token) as remote:
            yield remote
    finally:
        api.server.stop()


def test_the_package_exports_the_client_lazily() -> None:
    assert beatd.Client is Client


def test_add_update_get_list_remove(client: Client, transport: str) -> None:
    added = client.add("report-acme", **NIGHTLY)
    assert (added["version"], added["source"], added["definition"]["kwargs"]) == (
        1,
        "api",
        {"tenant": "acme"},
    )
    assert client.get("report-acme") == added
    changed = client.update("report-acme", cron="0 9 * * *", timezone="Europe/Paris")
    assert (changed["version"], changed["definition"]["cron"]) == (2, "0 9 * * *")
    assert changed["definition"]["kwargs"] == {"tenant": "acme"}
    many = client.add_many({f"t{i}": {"task": "x.y", "every": "1h"} for i in range(3)})
    assert [e["name"] for e in many] == ["t0", "t1", "t2"]
    listed = client.list(page_size=2)
    assert [e["name"] for e in listed] == ["report-acme", "t0", "t1", "t2"]
    assert client.remove("t1", if_version=many[1]["version"])["name"] == "t1"
    assert [e["name"] for e in client.list(source="api")] == ["report-acme", "t0", "t2"]
    by = "ops" if transport == "http" else "ops@host"  # the token's name over HTTP
    assert (added["created_by"], changed["updated_by"]) == (by, by)
    actions = [(r["action"], r["by"]) for r in client.audit("report-acme")]
    assert actions == [("entry.set", by), ("entry.add", by)]


def test_next_runs_are_aware_utc(client: Client) -> None:
    client.add("report-acme", **NIGHTLY)
    runs = client.next_runs("report-acme", 3)
    assert len(runs) == 3 and all(r.tzinfo == UTC and (r.hour, r.minute) == (2, 30) for r in runs)
    assert runs[0] > datetime.now(UTC)


def test_counts_out_of_range_are_refused_in_the_apis_words_every_way(client: Client) -> None:
    client.add("report-acme", **NIGHTLY)
    calls = [
        (lambda: client.history(entry="report-acme", limit=10_001), "limit", 10_000, 10_001),
        (lambda: client.audit(limit=0), "limit", 10_000, 0),
        (lambda: client.next_runs("report-acme", 1001), "count", 1000, 1001),
    ]
    for call, word, most, given in calls:
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert str(caught.value) == f"{word} must be a whole number from 1 to {most}, got '{given}'"


def test_refusals_are_the_same_exceptions_and_messages(client: Client) -> None:
    client.add("report-acme", **NIGHTLY)
    with pytest.raises(Conflict) as exists:
        client.add("report-acme", **NIGHTLY)
    assert str(exists.value) == "entry report-acme exists already (version 1); nothing was written"
    with pytest.raises(InvalidRequest) as invalid:
        client.add("bad", task="x.y", every="1h", jitter="2h")
    assert str(invalid.value) == (
        "entry bad: field jitter: jitter 2h must be shorter than the schedule's period 1h"
    )
    assert invalid.value.errors[0]["pointer"] == "/jitter"
    with pytest.raises(TooLarge) as large:
        client.add("big", task="x.y", every="1h", args=["x" * 70_000])
    assert str(large.value) == (
        "entry big: field args: args and kwargs take 70004 bytes as JSON, more than 64 KiB: "
        "pass a reference (an id, a key, a path) and let the task load the data"
    )
    with pytest.raises(VersionConflict) as stale:
        client.update("report-acme", if_version=7, queue="q")
    assert str(stale.value) == (
        "entry report-acme is at version 1, not the expected 7: it changed since it was read; "
        "nothing was written: read it again and retry"
    )
    with pytest.raises(NotFound) as missing:
        client.remove("nope")
    assert str(missing.value) == "no runtime entry nope"
    with pytest.raises(InvalidRequest):
        client.add_many({"a": {"task": "x.y", "every": "1h"}, "b": {"task": "x.y"}})
    assert [e["name"] for e in client.list(source="api")] == ["report-acme"]


def test_controls_work_on_a_runtime_entry(client: Client, transport: str) -> None:
    client.add("report-acme", **NIGHTLY)
    done = client.trigger("report-acme", idempotency_key="incident-4711")
    assert done == {
        "run_id": "report-acme@manual-incident-4711",
        "status": "published",
        "message": None,
    }
    by = "ops" if transport == "http" else "ops@host"
    paused = client.pause("report-acme", "tenant on hold", until="8h")
    assert paused is not None
    assert (paused["reason"], paused["by"]) == ("tenant on hold", by)
    with pytest.raises(Conflict) as refused:
        client.trigger("report-acme")
    assert str(refused.value).startswith("report-acme is paused")
    assert client.resume("report-acme") == "resumed report-acme"
    assert client.resume("report-acme") == "report-acme was not paused"
    with pytest.raises(NotFound) as missing:
        client.pause("nope", "why")
    assert str(missing.value) == "no entry 'nope'"


def test_a_backfill_before_any_horizon_is_refused_alike(client: Client) -> None:
    client.add("hourly", task="x.y", every="1h")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    start, end = (hour - timedelta(hours=3)).isoformat(), (hour - timedelta(hours=1)).isoformat()
    with pytest.raises(InvalidRequest) as refused:
        client.backfill("hourly", start, end, dry_run=True)
    assert str(refused.value) == (
        "hourly has no persisted horizon yet (no scheduler has accounted for any of its slots): "
        "every slot is still the scheduler's"
    )
    assert refused.value.errors[0]["field"] == "to"


def test_a_name_with_a_slash_works_every_way(client: Client) -> None:
    client.add("tenants/acme", **NIGHTLY)
    assert client.get("tenants/acme")["name"] == "tenants/acme"
    assert client.trigger("tenants/acme")["status"] == "published"
    assert client.resume("tenants/acme") == "tenants/acme was not paused"
    assert len(client.next_runs("tenants/acme", 1)) == 1
    assert client.remove("tenants/acme")["name"] == "tenants/acme"


def test_a_batch_over_http_goes_in_requests_each_all_or_none_and_a_refusal_says_what_was_kept(
    broker: str, tmp_path: Path
) -> None:
    """Over HTTP a batch bigger than one request (the API's 1 MiB) is sent in several, some at
    once; the refusal of one points into the whole batch and says what the others wrote."""
    from beatd.client.remote import RemoteTransport

    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "s.yaml").write_text("entries: {}\n")
    api = start(tmp_path, broker, folder)
    try:
        with Client(api.base, token=WRITER.token) as remote:
            transport = remote._transport
            assert isinstance(transport, RemoteTransport)
            transport.request_entries = 3
            many = remote.add_many({f"t{i}": {"task": "x.y", "every": "1h"} for i in range(7)})
            assert [e["name"] for e in many] == [f"t{i}" for i in range(7)]
            assert many[6]["definition"]["every"] == "1h"
            batch = {f"u{i}": {"task": "x.y", "every": "1h"} for i in range(7)}
            batch["u4"] = {"task": "x.y"}  # the second request's
            with pytest.raises(InvalidRequest) as refused:
                remote.add_many(batch)
            names = [e["name"] for e in remote.list(source="api")]
    finally:
        api.server.stop()
    assert names == [*(f"t{i}" for i in range(7)), "u0", "u1", "u2", "u6"]
    first, kept = refused.value.errors
    assert (first["entry"], first["pointer"]) == ("u4", "/entries/4")
    assert kept == {
        "entry": None,
        "field": None,
        "pointer": None,
        "message": "4 of the batch's 7 entries were written by its other requests (first u0, "
        "last u6), the other 3 were not: add those again",
    }
