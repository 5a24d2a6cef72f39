"""GET /v1/status: what `beatd status --json` prints, with the run counts of the node that
answers (each scheduler counts only what it decided since it started)."""

from __future__ import annotations

from typing import Any

from beatd.http.context import ApiContext
from beatd.http.queries import query_int
from beatd.http.routes import JSON, ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.status import UnknownEntry, status_report

STATUS: JSON = {
    "type": "object",
    "required": [
        "backend",
        "now",
        "config",
        "leader",
        "nodes",
        "entries",
        "entries_total",
        "queues",
    ],
    "properties": {
        "backend": {"type": "string"},
        "now": {"type": "string"},
        "config": {"type": ["string", "null"]},
        "leader": {"type": ["object", "null"]},
        "nodes": {"type": ["array", "null"], "items": {"type": "object"}},
        "entries": {"type": "array", "items": {"type": "object", "required": ["entry"]}},
        "entries_total": {"type": "integer"},
        "queues": {"type": "array", "items": {"type": "object"}},
        "counts_from": {"type": "array", "items": {"type": "string"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}
PARAMS = (
    Param(
        "entry",
        "query",
        "Only these entries (repeatable); all when none.",
        {"type": "string", "minLength": 1},
        repeated=True,
    ),
    Param(
        "limit",
        "query",
        "At most this many entries, by name.",
        {"type": "integer", "minimum": 1, "maximum": 1_000_000},
    ),
)


def status_routes(context: ApiContext) -> list[Route]:
    def status(req: Any) -> Reply:
        asked = req.args.getlist("entry")
        limit = query_int(req, "limit", 0, 1, 1_000_000) if "limit" in req.args else None
        counts = context.counts()
        try:
            built = status_report(
                context.backend(), context.config(), asked, limit, counts, context.now()
            )
        except UnknownEntry as exc:
            raise ApiError(404, str(exc), field="entry") from None
        counts_from = [f"node:{context.node}"] if counts is not None else []
        body = {**built.report, "counts_from": counts_from, "warnings": built.warnings}
        return Reply(200, body)

    return [
        Route(
            "GET",
            "/v1/status",
            "status",
            "The leader, the nodes, each entry's last and next run and how its last run ended, "
            "its pause, busy mark and held run, and the queues (docs/api.md).",
            Scope.READ,
            status,
            PARAMS,
            replies={
                200: ("The status.", STATUS),
                404: ("An entry asked for is not known.", {"$ref": "#/components/schemas/Errors"}),
            },
        )
    ]
