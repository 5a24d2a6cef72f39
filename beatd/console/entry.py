"""GET /ui/entries/<name>: one entry: its definition, its next 10 runs with their DST marks,
its history (outcomes, durations, delays) and a chart of it, its pause and its audit log, and
the controls: trigger, pause, resume, backfill; edit and delete for a runtime entry."""

from __future__ import annotations

from typing import Any

import yaml
from flask import Blueprint

from beatd.console.api_caller import ApiFailure, api
from beatd.console.chart import run_chart
from beatd.console.pages import render
from beatd.console.replies import now, shows_refusals
from beatd.console.views import (
    Moment,
    chart_runs,
    history_rows,
    next_run_rows,
    pause_note,
    seconds_text,
)

GET_ENTRY, NEXT_RUNS, HISTORY, AUDIT = "get_entry", "next_runs", "history", "audit"
ENTRY_INDEX = "entry_index"
NEXT_COUNT = 10
HISTORY_LIMIT = 50
AUDIT_LIMIT = 50


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/entries/<entry:name>", "entry", shows_refusals(entry_page), methods=["GET"])


def entry_page(name: str) -> Any:
    caller = api()
    entry = caller.get(GET_ENTRY, path={"name": name})  # 404: the API's words (shows_refusals)
    moment = now()
    try:
        coming = caller.get(NEXT_RUNS, path={"name": name}, query={"count": NEXT_COUNT})
        slots = coming["runs"]  # each slot with its DST mark (`slots`: the bare times)
        next_errors: list[dict[str, Any]] = []
    except ApiFailure as failure:  # a schedule this node cannot compute, say
        slots, next_errors = [], failure.errors
    history = caller.get(HISTORY, query={"entry": name, "limit": HISTORY_LIMIT})["records"]
    audit = caller.get(AUDIT, query={"entry": name, "limit": AUDIT_LIMIT})["records"]
    row = index_row(name)
    return render(
        "entry.html",
        entry=entry,
        name=name,
        runtime=entry["version"] is not None,
        definition=definition_text(entry["definition"]),
        row=row,
        next_due=Moment.of(row["next_due"], moment) if row else None,
        last_duration=seconds_text(row.get("last_duration_s")) if row else "-",
        next_runs=next_run_rows(slots, moment),
        next_errors=next_errors,
        history=history_rows(history),
        chart=run_chart(chart_runs(history)),
        pause=pause_note(audit, moment),
        older_pause=older_pause(audit, row),
        audit=[{**record, "when": Moment.of(record["at"], moment)} for record in audit],
    )


def index_row(name: str) -> dict[str, Any] | None:
    """The entry's row in the entry index (its schedule in words, next due, last status): one
    look-up by its exact name."""
    try:
        found = api().get(ENTRY_INDEX, query={"exact": name, "limit": 1})
    except ApiFailure:
        return None  # the page shows the rest: the index may still be being built (503)
    return next(iter(found["entries"]), None)


def older_pause(audit: list[dict[str, Any]], row: dict[str, Any] | None) -> bool:
    """Whether the entry is paused by a pause older than the audit records shown: the index
    says paused and none of them changed the pause (the index lags a fresh pause or resume by
    a few seconds; the audit log does not)."""
    changed = any("pause" in (record.get("after") or {}) for record in audit)
    return bool(row and row["paused"] and not changed)


def definition_text(definition: dict[str, Any]) -> str:
    """An entry's fields as YAML, in the order they were given (the edit form's text)."""
    return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, default_flow_style=False)
