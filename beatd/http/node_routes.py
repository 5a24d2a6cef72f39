"""GET /v1/nodes: every node whose record is live, as `beatd status --json` lists them in
`nodes`, each compared with the leader's record."""

from __future__ import annotations

from typing import Any

from beatd.http.context import ApiContext
from beatd.http.routes import JSON, ApiError, Reply, Route
from beatd.http.tokens import Scope
from beatd.nodes import NODE_FIELDS
from beatd.operations.status import node_rows

NODE: JSON = {
    "type": "object",
    "required": list(NODE_FIELDS),
    "properties": {
        "node": {"type": "string"},
        "role": {"enum": ["leader", "standby"]},
        "version": {"type": "string"},
        "config": {"type": ["string", "null"]},
        "tz_version": {"type": "string"},
        "tz_source": {"enum": ["system", "tzdata"]},
        "api_addr": {"type": ["string", "null"]},
        "last_seen": {"type": "string"},
        "same_config": {"type": ["boolean", "null"]},
        "same_tz": {"type": ["boolean", "null"]},
    },
}
NODES: JSON = {
    "type": "object",
    "required": ["nodes"],
    "properties": {"nodes": {"type": "array", "items": NODE}},
}


def node_routes(context: ApiContext) -> list[Route]:
    def nodes(_req: Any) -> Reply:
        store = context.backend()
        warnings: list[str] = []
        rows = node_rows(store, store.leader(), warnings)
        if rows is None:
            raise ApiError(503, warnings[0])
        return Reply(200, {"nodes": rows})

    return [
        Route(
            "GET",
            "/v1/nodes",
            "nodes",
            "Every node whose record is live (written within 3 x its lease TTL): its role, "
            "beatd version, configuration, timezone database and API address, and whether they "
            "match the leader's (docs/api.md).",
            Scope.READ,
            nodes,
            (),
            replies={
                200: ("The nodes, by name.", NODES),
                503: ("The backend cannot be read.", {"$ref": "#/components/schemas/Errors"}),
            },
        )
    ]
