"""Dead letters: list them, requeue or delete one, some or all (each recorded in the audit log
under the token's name), as `beatd dead list`, `beatd dead retry` and `beatd dead rm` do."""

from __future__ import annotations

from typing import Any

from beatd.http.app import body_of, token_of
from beatd.http.context import ApiContext
from beatd.http.queries import query_int
from beatd.http.routes import JSON, ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.dead_letters import dead_letter_object, delete_dead, requeue_dead

DEAD_LETTER: JSON = {
    "type": "object",
    "required": ["id", "task", "queue", "failed_at", "deliveries", "reason", "message"],
    "properties": {
        "id": {"type": "string"},
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "failed_at": {"type": "string"},
        "deliveries": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {},
    },
}
LIST: JSON = {
    "type": "object",
    "required": ["dead_letters", "total"],
    "properties": {
        "dead_letters": {"type": "array", "items": DEAD_LETTER},
        "total": {"type": "integer", "minimum": 0},
    },
}
MAX_LIMIT = 1000
MAX_OFFSET = 10_000_000
PAGE_PARAMS = (
    Param(
        "offset",
        "query",
        "Skip this many dead letters (oldest first).",
        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
    ),
    Param(
        "limit",
        "query",
        "At most this many dead letters (every one without it).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
)
REQUEUED: JSON = {
    "type": "object",
    "required": ["requeued"],
    "properties": {"requeued": {"type": "integer", "minimum": 0}},
}
DELETED: JSON = {
    "type": "object",
    "required": ["deleted"],
    "properties": {"deleted": {"type": "array", "items": {"type": "string"}}},
}
DELETE_BODY: JSON = {
    "description": 'Either {"all": true} or {"ids": [...]} (1 to 1000 run ids).',
    "oneOf": [
        {
            "type": "object",
            "required": ["all"],
            "properties": {"all": {"const": True}},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["ids"],
            "properties": {
                "ids": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": 1000,
                }
            },
            "additionalProperties": False,
        },
    ],
}
RUN_ID = Param("id", "path", "The run id of a dead letter.", {"type": "string", "minLength": 1})
NOT_FOUND: JSON = {"$ref": "#/components/schemas/Errors"}


def dead_letter_routes(context: ApiContext) -> list[Route]:
    def list_letters(req: Any) -> Reply:
        offset = query_int(req, "offset", 0, 0, MAX_OFFSET)
        limit = query_int(req, "limit", MAX_LIMIT, 1, MAX_LIMIT) if "limit" in req.args else None
        store = context.backend()
        if limit is None:  # every one: read them all once
            letters = store.dead_letters()
            shown, total = letters[offset:], len(letters)
        else:  # a page: only its letters read, the rest counted
            shown, total = store.dead_letter_page(offset, limit), store.count_dead_letters()
        objects = [dead_letter_object(d) for d in shown]
        return Reply(200, {"dead_letters": objects, "total": total})

    def retry_one(req: Any) -> Reply:
        run_id = req.view_args["id"]
        moved = requeue_dead(context.backend(), run_id, token_of(req).name)
        if moved == 0:
            raise ApiError(404, f"no dead letter with id {run_id!r}", field="id")
        return Reply(200, {"requeued": moved})

    def retry_all(req: Any) -> Reply:
        return Reply(200, {"requeued": requeue_dead(context.backend(), None, token_of(req).name)})

    return [
        Route(
            "GET",
            "/v1/dead-letters",
            "list_dead_letters",
            "The dead letters, oldest first, each with why it failed.",
            Scope.READ,
            list_letters,
            PAGE_PARAMS,
            replies={200: ("The dead letters and how many there are.", LIST)},
        ),
        Route(
            "POST",
            "/v1/dead-letters/{id}/retry",
            "retry_dead_letter",
            "Put one dead letter back on its queue (recorded in the audit log).",
            Scope.WRITE,
            retry_one,
            (RUN_ID,),
            replies={
                200: ("Requeued.", REQUEUED),
                404: ("No dead letter has that id.", NOT_FOUND),
            },
        ),
        Route(
            "POST",
            "/v1/dead-letters/retry",
            "retry_all_dead_letters",
            "Put every dead letter back on its queue (recorded in the audit log).",
            Scope.WRITE,
            retry_all,
            replies={200: ("Requeued.", REQUEUED)},
        ),
        *deletion_routes(context),
    ]


def deletion_routes(context: ApiContext) -> list[Route]:
    """Deleting dead letters for good (issue 18), one or some or all."""

    def delete_single(req: Any) -> Reply:
        run_id = req.view_args["id"]
        if not delete_dead(context.backend(), [run_id], token_of(req).name):
            raise ApiError(404, f"no dead letter with id {run_id!r}", field="id")
        return Reply(200, {"deleted": [run_id]})

    def delete_many(req: Any) -> Reply:
        ids = delete_request(body_of(req))
        gone = delete_dead(context.backend(), ids, token_of(req).name)
        unknown = [i for i in dict.fromkeys(ids or ()) if i not in gone]
        if unknown:
            listed = ", ".join(repr(i) for i in unknown)
            raise ApiError(
                404,
                f"no dead letter with id {listed}; the others asked for were deleted",
                field="ids",
                pointer="/ids",
            )
        return Reply(200, {"deleted": gone})

    return [
        Route(
            "DELETE",
            "/v1/dead-letters/{id}",
            "delete_dead_letter",
            "Delete one dead letter for good (recorded in the audit log).",
            Scope.WRITE,
            delete_single,
            (RUN_ID,),
            replies={
                200: ("Deleted.", DELETED),
                404: ("No dead letter has that id.", NOT_FOUND),
            },
        ),
        Route(
            "POST",
            "/v1/dead-letters/delete",
            "delete_dead_letters",
            'Delete the dead letters listed ({"ids": [...]}) or all of them ({"all": true}) '
            "for good, one by one, each recorded in the audit log.",
            Scope.WRITE,
            delete_many,
            body=DELETE_BODY,
            replies={
                200: ("The run ids deleted.", DELETED),
                404: ("Some ids are no dead letter's (the others were deleted).", NOT_FOUND),
                422: ("The body is not one of the two forms.", NOT_FOUND),
            },
        ),
    ]


def delete_request(body: Any) -> list[str] | None:
    """The ids a delete body lists, or None for {"all": true}; 422 for anything else."""
    if not isinstance(body, dict) or set(body) - {"all", "ids"}:
        raise ApiError(422, 'the body must be {"all": true} or {"ids": [RUN_ID, ...]}', pointer="")
    if ("all" in body) == ("ids" in body):
        raise ApiError(
            422, 'give either "all": true or "ids", not both and not neither', pointer=""
        )
    if "all" in body:
        if body["all"] is not True:
            raise ApiError(422, '"all" must be true', field="all", pointer="/all")
        return None
    ids = body["ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= 1000:
        raise ApiError(
            422, '"ids" must be a list of 1 to 1000 run ids', field="ids", pointer="/ids"
        )
    for n, run_id in enumerate(ids):
        if not isinstance(run_id, str) or not run_id:
            raise ApiError(
                422,
                f"ids[{n}] must be a run id (a non-empty string)",
                field="ids",
                pointer=f"/ids/{n}",
            )
    return ids
