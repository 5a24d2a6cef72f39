"""Dead letters: list them, and requeue one or all (recorded in the audit log under the
token's name), as `beatd dead list` and `beatd dead retry` do."""

from __future__ import annotations

from typing import Any

from beatd.http.app import token_of
from beatd.http.context import ApiContext
from beatd.http.routes import JSON, ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.dead_letters import dead_letter_object, requeue_dead

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
    "required": ["dead_letters"],
    "properties": {"dead_letters": {"type": "array", "items": DEAD_LETTER}},
}
REQUEUED: JSON = {
    "type": "object",
    "required": ["requeued"],
    "properties": {"requeued": {"type": "integer", "minimum": 0}},
}
RUN_ID = Param("id", "path", "The run id of a dead letter.", {"type": "string", "minLength": 1})
NOT_FOUND: JSON = {"$ref": "#/components/schemas/Errors"}


def dead_letter_routes(context: ApiContext) -> list[Route]:
    def list_letters(_req: Any) -> Reply:
        letters = context.backend().dead_letters()
        return Reply(200, {"dead_letters": [dead_letter_object(d) for d in letters]})

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
            replies={200: ("The dead letters.", LIST)},
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
    ]
