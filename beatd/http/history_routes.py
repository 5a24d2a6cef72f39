"""GET /v1/history: runs and missed slots, as `beatd history --json` prints them."""

from __future__ import annotations

from typing import Any

from beatd.history import HistoryQuery
from beatd.http.context import ApiContext
from beatd.http.queries import query_int, query_since, query_text
from beatd.http.routes import ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.controls import MAX_RECORDS
from beatd.operations.history import (
    OUTCOMES,
    SCAN_LIMIT,
    read_history,
    record_object,
    unknown_outcome,
)

MAX_LIMIT = MAX_RECORDS
RECORD = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"enum": ["run", "missed"]}},
}
HISTORY = {
    "type": "object",
    "required": ["records", "cut_short"],
    "properties": {
        "records": {"type": "array", "items": RECORD},
        "cut_short": {"type": "boolean"},
    },
}
SINCE = {
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,4}(s|m|h|d)$"},
        {"type": "string", "format": "date-time"},
    ]
}
PARAMS = (
    Param("entry", "query", "Only this entry's records.", {"type": "string", "minLength": 1}),
    Param(
        "since",
        "query",
        "Only records written since then: a duration back from now (30m, 2d) or an ISO 8601 time.",
        SINCE,
    ),
    Param(
        "outcome",
        "query",
        "Only runs with this status; `missed` for the missed-slot records.",
        {"enum": list(OUTCOMES)},
        repeated=True,
    ),
    Param(
        "limit",
        "query",
        "At most this many records, newest first.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 20},
    ),
)


def history_routes(context: ApiContext) -> list[Route]:
    def history(req: Any) -> Reply:
        entry = query_text(req, "entry")
        limit = query_int(req, "limit", 20, 1, MAX_LIMIT)
        outcomes = req.args.getlist("outcome")
        for value in outcomes:
            problem = unknown_outcome(value)
            if problem is not None:
                raise ApiError(422, problem, field="outcome")
        since = query_since(req, context.now())
        page = read_history(
            context.backend(), HistoryQuery(entry, since, limit), frozenset(outcomes)
        )
        zones = context.zones()
        records = [record_object(record, zones, page.pauses) for record in page.records]
        return Reply(200, {"records": records, "cut_short": page.cut_short})

    return [
        Route(
            "GET",
            "/v1/history",
            "history",
            "The newest runs and missed-slot ranges, newest first (docs/history.md: each field). "
            f"Filtered by outcome, the newest {SCAN_LIMIT} runs are searched.",
            Scope.READ,
            history,
            PARAMS,
            replies={200: ("Runs and missed ranges.", HISTORY)},
        )
    ]
