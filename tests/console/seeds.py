"""Data the page tests put in the backend the way the daemon would: runs in the history, dead
letters, runtime entries through the public API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from beatd.backends import DeadLetter
from beatd.history import Attempt, RunKind, RunRecord
from tests.console.conftest import T0, WRITER, Console

DAY = timedelta(days=1)
SLOT = datetime(2026, 12, 5, 3, 0, tzinfo=T0.tzinfo)  # nightly's last slot before T0


def attempt(number: int, start: datetime, seconds: float, outcome: str, **kw: Any) -> Attempt:
    end = start + timedelta(seconds=seconds)
    return Attempt(number, f"w{number}", "host1", 100 + number, start, end, outcome, **kw)


def nightly_runs() -> list[RunRecord]:
    """Two nights of `nightly`: one failed after a retry, then one that succeeded."""
    failed_slot, ok_slot = SLOT - DAY, SLOT
    failed = RunRecord(
        f"nightly@{failed_slot:%Y-%m-%dT%H:%M:%SZ}", "nightly", failed_slot, failed_slot,
        failed_slot, "node-a", 3, RunKind.SCHEDULED,
        attempts=(
            attempt(1, failed_slot + timedelta(seconds=1), 2, "retried"),
            attempt(2, failed_slot + timedelta(seconds=12), 4.25, "failed",
                    error_type="ValueError", error="bad row 7"),
        ),
    )  # fmt: skip
    ok = RunRecord(
        f"nightly@{ok_slot:%Y-%m-%dT%H:%M:%SZ}", "nightly", ok_slot, ok_slot, ok_slot,
        "node-a", 3, RunKind.SCHEDULED,
        attempts=(attempt(1, ok_slot + timedelta(seconds=0.412), 3.2, "succeeded"),),
    )  # fmt: skip
    return [failed, ok]


def seed_runs(console: Console) -> None:
    console.context.backend().import_history(nightly_runs(), [])


def seed_dead_letters(console: Console) -> list[DeadLetter]:
    failed = T0 - timedelta(minutes=30)
    body = json.dumps({"v": 1, "id": "nightly@2026-12-05T03:00:00Z", "task": "reports.nightly"})
    made = [
        DeadLetter("nightly@2026-12-05T03:00:00Z", "default", body, "ValueError: bad", failed, 3),
        DeadLetter("gone@x", "reports", "not json", "unknown task", failed, 1),
    ]
    console.context.backend().add_dead_letters(made)
    return made


def add_entries(console: Console, *entries: dict[str, Any]) -> None:
    """Runtime entries, created through the API as a tool would."""
    answer = console.client.post(
        "/v1/entries/batch",
        base_url="http://127.0.0.1:9479",
        json={"entries": list(entries)},
        headers={"Authorization": f"Bearer {WRITER.token}"},
    )
    assert answer.status_code == 201, answer.json
