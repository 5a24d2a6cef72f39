"""What the console's pages read that the other routes do not give (issue 19):
`GET /v1/overview` (the first page) and `GET /v1/entry-index` (the entries page: every entry,
filtered, sorted and paged, from the node's entry index, beatd.entry_index)."""

from __future__ import annotations

from typing import Any

from beatd.entry_index import SORTS, IndexNotReady, IndexQuery
from beatd.errors import BeatdError
from beatd.http.context import ApiContext
from beatd.http.node_routes import NODE
from beatd.http.queries import query_int, query_text
from beatd.http.routes import JSON, ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.overview import Overviews, overview

MAX_LIMIT = 500
MAX_OFFSET = 10_000_000
ERRORS: JSON = {"$ref": "#/components/schemas/Errors"}
NAMES: JSON = {"type": "array", "items": {"type": "string"}, "maxItems": 100}
OVERVIEW: JSON = {
    "type": "object",
    "required": [
        "now", "leader", "nodes", "queues", "dead_letters", "last_hour", "index_ready",
        "overdue", "overdue_total", "failing", "failing_total", "warnings",
    ],
    "properties": {
        "now": {"type": "string"},
        "leader": {
            "type": ["object", "null"],
            "required": ["node", "epoch"],
            "properties": {"node": {"type": "string"}, "epoch": {"type": "integer"}},
        },
        "nodes": {"type": "array", "items": NODE},
        "queues": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "depth", "oldest_waiting_s"],
                "properties": {
                    "name": {"type": "string"},
                    "depth": {"type": "integer"},
                    "oldest_waiting_s": {"type": ["number", "null"]},
                },
            },
        },
        "dead_letters": {"type": "integer"},
        "last_hour": {
            "type": "object",
            "required": ["late", "missed", "failed", "complete"],
            "properties": {
                "late": {"type": "integer"},
                "missed": {"type": "integer"},
                "failed": {"type": "integer"},
                "complete": {"type": "boolean"},
            },
        },
        "index_ready": {"type": "boolean"},
        "overdue": NAMES,
        "overdue_total": {"type": "integer"},
        "failing": NAMES,
        "failing_total": {"type": "integer"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}  # fmt: skip
INDEX_ROW: JSON = {
    "type": "object",
    "required": [
        "name", "source", "task", "queue", "schedule", "timezone", "next_due", "last_status",
        "last_duration_s", "paused", "version",
    ],
    "properties": {
        "name": {"type": "string"},
        "source": {"enum": ["api", "file"]},
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "schedule": {"type": "string"},
        "timezone": {"type": "string"},
        "next_due": {"type": ["string", "null"]},
        "last_status": {"type": ["string", "null"]},
        "last_duration_s": {"type": ["number", "null"]},
        "paused": {"type": "boolean"},
        "version": {"type": ["integer", "null"]},
    },
}  # fmt: skip
INDEX_PAGE: JSON = {
    "type": "object",
    "required": ["total", "offset", "limit", "entries"],
    "properties": {
        "total": {"type": "integer"},
        "offset": {"type": "integer"},
        "limit": {"type": "integer"},
        "entries": {"type": "array", "items": INDEX_ROW},
    },
}
TEXT: JSON = {"type": "string", "minLength": 1}
INDEX_PARAMS = (
    Param("name", "query", "Only entries whose name contains this.", TEXT),
    Param("exact", "query", "Only the entry of exactly this name (one look-up).", TEXT),
    Param("task", "query", "Only entries of this task.", TEXT),
    Param("queue", "query", "Only entries publishing to this queue.", TEXT),
    Param("source", "query", "Only runtime (api) or file entries.", {"enum": ["api", "file"]}),
    Param("status", "query", "Only entries whose last finished run ended so.", TEXT),
    Param("paused", "query", "Only paused (true) or running (false) entries.", {"type": "boolean"}),
    Param("sort", "query", "The order.", {"enum": list(SORTS), "default": "name"}),
    Param(
        "offset",
        "query",
        "Skip this many matching entries.",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    ),
    Param(
        "limit",
        "query",
        "At most this many entries.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
    ),
)


def console_routes(context: ApiContext) -> list[Route]:
    kept = Overviews()  # the overview's slower reads, shared by this API's requests

    def show_overview(_req: Any) -> Reply:
        return Reply(200, overview(context.backend(), context.index(), context.now(), kept))

    def entry_index(req: Any) -> Reply:
        query = index_query(req)
        try:
            index = context.index()
            known = req.headers.get("If-None-Match")
            if known is not None and known == _etag(index.tag()):
                return Reply(304, None, {"ETag": known})  # no change since that answer
            page = index.page(query)
        except IndexNotReady as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None
        except BeatdError as exc:
            raise ApiError(503, f"the entry index cannot read the backend: {exc}") from None
        body = {
            "total": page.total,
            "offset": query.offset,
            "limit": query.limit,
            "entries": [row.as_json() for row in page.rows],
        }
        return Reply(200, body, {"ETag": _etag(page.tag)})

    return [
        Route(
            "GET",
            "/v1/overview",
            "overview",
            "The leader and its epoch, the nodes, the queues with their depth and oldest "
            "waiting run, the dead letters, the runs late, missed and failed in the last hour "
            "(from the history), and the entries overdue or failing (docs/api.md).",
            Scope.READ,
            show_overview,
            replies={200: ("The overview.", OVERVIEW)},
        ),
        Route(
            "GET",
            "/v1/entry-index",
            "entry_index",
            "Every entry (files and runtime) with its schedule in words, next due, last status "
            "and pause: filtered, sorted and paged from this node's entry index (docs/api.md).",
            Scope.READ,
            entry_index,
            INDEX_PARAMS,
            replies={
                200: ("A page of entries and how many match; its ETag.", INDEX_PAGE),
                304: ("Unchanged since the answer whose ETag If-None-Match gives.", None),
                503: ("The index is still being built.", ERRORS),
            },
        ),
    ]


def _etag(tag: str) -> str:
    """The index's tag as an entity tag: the same for every query while the index holds the
    same rows, so a page answered under it is still right while it is."""
    return f'"{tag}"'


def index_query(req: Any) -> IndexQuery:
    """The query's filters, order and page; 422 naming the parameter that is wrong."""
    source, sort = query_text(req, "source"), query_text(req, "sort") or "name"
    if source not in (None, "api", "file"):
        raise ApiError(422, f"source must be api or file, got {source!r}", field="source")
    if sort not in SORTS:
        raise ApiError(422, f"sort must be {', '.join(SORTS)}, got {sort!r}", field="sort")
    paused = query_text(req, "paused")
    if paused not in (None, "true", "false"):
        raise ApiError(422, f"paused must be true or false, got {paused!r}", field="paused")
    return IndexQuery(
        name=query_text(req, "name") or "",
        exact=query_text(req, "exact") or "",
        task=query_text(req, "task"),
        queue=query_text(req, "queue"),
        source=source,
        status=query_text(req, "status"),
        paused=None if paused is None else paused == "true",
        sort=sort,
        offset=query_int(req, "offset", 0, 0, MAX_OFFSET),
        limit=query_int(req, "limit", 50, 1, MAX_LIMIT),
    )
