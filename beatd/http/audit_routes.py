"""GET /v1/audit: who paused, resumed, triggered, backfilled or requeued what, newest first, as
`beatd audit --json` prints it."""

from __future__ import annotations

from typing import Any

from beatd.http.context import ApiContext
from beatd.http.history_routes import SINCE
from beatd.http.queries import query_int, query_since, query_text
from beatd.http.routes import JSON, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.audit import audit_object
from beatd.operations.controls import MAX_RECORDS

MAX_LIMIT = MAX_RECORDS
OBJECT_OR_NULL: JSON = {"type": ["object", "null"]}
RECORD: JSON = {
    "type": "object",
    "required": ["id", "at", "action", "entry", "by", "detail", "before", "after"],
    "properties": {
        "id": {"type": "string"},
        "at": {"type": "string"},
        "action": {"type": "string"},
        "entry": {"type": ["string", "null"]},
        "by": {"type": "string"},
        "detail": {"type": "object"},
        "before": OBJECT_OR_NULL,
        "after": OBJECT_OR_NULL,
    },
}
AUDIT: JSON = {
    "type": "object",
    "required": ["records"],
    "properties": {"records": {"type": "array", "items": RECORD}},
}
PARAMS = (
    Param("entry", "query", "Only this entry's actions.", {"type": "string", "minLength": 1}),
    Param("since", "query", "Only actions since then: 2d, or an ISO 8601 time.", SINCE),
    Param(
        "limit",
        "query",
        "At most this many actions, newest first.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
    ),
)


def audit_routes(context: ApiContext) -> list[Route]:
    def audit(req: Any) -> Reply:
        entry = query_text(req, "entry")
        limit = query_int(req, "limit", 50, 1, MAX_LIMIT)
        since = query_since(req, context.now())
        records = context.backend().audit(entry, since, limit)
        return Reply(200, {"records": [audit_object(record) for record in records]})

    return [
        Route(
            "GET",
            "/v1/audit",
            "audit",
            "The audit log, newest first: every operator action with who, when, and the state "
            "before and after.",
            Scope.READ,
            audit,
            PARAMS,
            replies={200: ("The actions.", AUDIT)},
        )
    ]
