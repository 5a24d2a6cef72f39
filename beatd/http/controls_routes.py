"""Operator controls over HTTP (docs/api.md): trigger now, pause and resume, backfill with a
dry run — `beatd trigger`, `pause`, `resume` and `backfill` in the same words, each recorded in
the audit log under the token's name."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from beatd.config import Config, Entry
from beatd.http.app import token_of
from beatd.http.context import ApiContext
from beatd.http.queries import body_object
from beatd.http.routes import JSON, ApiError, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations.backfill import (
    DEFAULT_MAX,
    BackfillRefused,
    backfill_range,
    parse_rate,
    plan_backfill,
    send,
)
from beatd.operations.controls import (
    IDEMPOTENCY_KEY,
    LATER_NOT_PAUSED,
    BadRequest,
    TriggerAsk,
    UnknownName,
    backend_now,
    find_entry,
    parse_until,
    pause,
    pause_object,
    paused_now,
    resume,
    select_entries,
    trigger,
    trigger_words,
)

ERRORS: JSON = {"$ref": "#/components/schemas/Errors"}
NAME = Param("name", "path", "The entry's name.", {"type": "string", "minLength": 1}, slashes=True)
LONGEST_PACED_BACKFILL = timedelta(seconds=60)  # longer holds a server thread: use the CLI
KEY_PATTERN = "^" + IDEMPOTENCY_KEY.pattern.removesuffix("\\Z") + "$"  # as ECMA-262 reads it
STRINGS: JSON = {"type": "array", "items": {"type": "string", "minLength": 1}}
PAUSE_OBJECT: JSON = {
    "type": ["object", "null"],
    "properties": {
        "at": {"type": "string"},
        "until": {"type": ["string", "null"]},
        "reason": {"type": "string"},
        "by": {"type": "string"},
    },
}
TRIGGER_BODY: JSON = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "args": {"type": "array"},
        "kwargs": {"type": "object"},
        "idempotency_key": {"type": "string", "pattern": KEY_PATTERN},
        "force": {"type": "boolean"},
    },
}
TRIGGERED: JSON = {
    "type": "object",
    "required": ["run_id", "status", "message"],
    "properties": {
        "run_id": {"type": "string"},
        "status": {"enum": ["published", "held", "duplicate"]},
        "message": {"type": ["string", "null"]},
    },
}
SELECTION: JSON = {
    "entries": {**STRINGS, "minItems": 1},
    "all": {"type": "boolean", "const": True},
    "match": {"type": "string", "minLength": 1},
}
ONE_OF_SELECTION: JSON = {"oneOf": [{"required": [name]} for name in SELECTION]}
PAUSE_MEMBERS: JSON = {
    "reason": {"type": "string", "minLength": 1},
    "until": {"type": "string", "minLength": 1},
}
PAUSE_ONE_BODY: JSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reason"],
    "properties": PAUSE_MEMBERS,
}
PAUSE_BODY: JSON = {
    **PAUSE_ONE_BODY,
    "properties": {**SELECTION, **PAUSE_MEMBERS},
    **ONE_OF_SELECTION,
}
RESUME_ONE_BODY: JSON = {"type": "object", "additionalProperties": False, "properties": {}}
RESUME_BODY: JSON = {**RESUME_ONE_BODY, "properties": SELECTION, **ONE_OF_SELECTION}
PAUSED: JSON = {
    "type": "object",
    "required": ["paused", "note"],
    "properties": {
        "paused": {"type": "object", "additionalProperties": PAUSE_OBJECT},
        "note": {"type": ["string", "null"]},
    },
}
RESUMED: JSON = {
    "type": "object",
    "required": ["said"],
    "properties": {"said": {"type": "array", "items": {"type": "string"}}},
}
BACKFILL_BODY: JSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["from", "to"],
    "properties": {
        "from": {"type": "string", "minLength": 1},
        "to": {"type": "string", "minLength": 1},
        "dry_run": {"type": "boolean"},
        "rate": {"type": "string", "minLength": 1},
        "max": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "force": {"type": "boolean"},
    },
}
BACKFILLED: JSON = {
    "type": "object",
    "required": ["runs", "published", "already_there", "dry_run"],
    "properties": {
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "published"],
                "properties": {
                    "id": {"type": "string"},
                    "published": {"type": ["boolean", "null"]},
                },
            },
        },
        "published": {"type": ["integer", "null"]},
        "already_there": {"type": ["integer", "null"]},
        "dry_run": {"type": "boolean"},
    },
}


def bad(exc: BadRequest) -> ApiError:
    status = 404 if isinstance(exc, UnknownName) else 422
    return ApiError(status, exc.message, field=exc.field, pointer=f"/{exc.field}")


class ControlRoutes:
    """The handlers, over one context and the daemon's history retention (backfill's bound)."""

    def __init__(self, context: ApiContext, history_max_age: timedelta) -> None:
        self.context = context
        self.history_max_age = history_max_age

    def config(self) -> Config:
        config = self.context.config()
        if config is None:
            raise ApiError(503, "this node has no configuration loaded")
        return config

    def entry(self, req: Any) -> Entry:
        """The entry the path names: the configuration's, else a runtime entry."""
        name = req.view_args["name"]
        try:
            return find_entry(self.config(), name)
        except UnknownName as exc:
            stored = self.context.backend().get_entry(name)
            if stored is None:
                raise ApiError(404, exc.message, field="name") from None
            return stored.entry()

    def known(self, req: Any) -> list[str]:
        """The names a pause may choose among: the configuration's, and the runtime entry the
        path names (all runtime entries are not read for a glob or `all`)."""
        names = sorted(self.config().entries)
        name = req.view_args.get("name") if req.view_args else None
        if name is not None and name not in names and self.context.backend().get_entry(name):
            names.append(name)
        return names

    def trigger(self, req: Any) -> Reply:
        entry = self.entry(req)
        body = body_object(req, TRIGGER_BODY)
        ask = TriggerAsk(
            body.get("args"),
            body.get("kwargs"),
            body.get("idempotency_key"),
            body.get("force", False),
        )
        store = self.context.backend()
        try:
            done = trigger(store, backend_now(store), entry, ask, token_of(req).name)
        except BadRequest as exc:
            raise bad(exc) from None
        words = trigger_words(done, entry.name)
        if words.refused:
            raise ApiError(409, words.note or "refused", entry=entry.name)
        status = 201 if done.result.status == "published" else 200
        return Reply(
            status,
            {"run_id": words.run_id, "status": str(done.result.status), "message": words.note},
        )

    def chosen(self, req: Any, body: dict[str, Any], known: list[str]) -> list[str]:
        name = req.view_args.get("name") if req.view_args else None
        names = [name] if name is not None else body.get("entries", [])
        if name is not None and (body.get("entries") or body.get("all") or body.get("match")):
            raise ApiError(
                422, "the path names the entry: give no entries, all or match", pointer=""
            )
        try:
            return select_entries(names, bool(body.get("all")), body.get("match"), known)
        except BadRequest as exc:
            raise bad(exc) from None

    def pause(self, req: Any) -> Reply:
        one = bool(req.view_args and "name" in req.view_args)
        body = body_object(req, PAUSE_ONE_BODY if one else PAUSE_BODY)
        chosen = self.chosen(req, body, self.known(req))
        store = self.context.backend()
        try:
            until = parse_until(body["until"], backend_now(store)) if "until" in body else None
            pauses = pause(store, chosen, body["reason"], until, token_of(req).name)
        except BadRequest as exc:
            raise bad(exc) from None
        note = LATER_NOT_PAUSED if body.get("all") or body.get("match") else None
        return Reply(200, {"paused": {n: pause_object(p) for n, p in pauses.items()}, "note": note})

    def resume(self, req: Any) -> Reply:
        one = bool(req.view_args and "name" in req.view_args)
        body = body_object(req, RESUME_ONE_BODY if one else RESUME_BODY)
        store = self.context.backend()
        name = req.view_args.get("name") if req.view_args else None
        if name is not None:
            self.entry(req)
            chosen = [name]
        else:
            chosen = self.chosen(req, body, sorted(paused_now(store)))
        return Reply(200, {"said": resume(store, backend_now(store), chosen, token_of(req).name)})

    def backfill(self, req: Any) -> Reply:
        entry = self.entry(req)
        body = body_object(req, BACKFILL_BODY)
        store = self.context.backend()
        try:
            span = backfill_range(entry, body["from"], body["to"], body.get("max", DEFAULT_MAX))
            rate = parse_rate(body.get("rate"))
            runs = plan_backfill(store, entry, span, self.history_max_age, body.get("force", False))
        except BadRequest as exc:
            raise bad(exc) from None
        except BackfillRefused as exc:
            raise ApiError(409, str(exc), entry=entry.name) from None
        if rate is not None and timedelta(seconds=len(runs) / rate) > LONGEST_PACED_BACKFILL:
            raise ApiError(
                422,
                f"{len(runs)} runs at {rate:g}/s take longer than "
                f"{LONGEST_PACED_BACKFILL.seconds} s: raise the rate, or use `beatd backfill`",
                field="rate",
                pointer="/rate",
            )
        if body.get("dry_run"):
            listed: list[JSON] = [{"id": run.id, "published": None} for run in runs]
            return Reply(
                200, {"runs": listed, "published": None, "already_there": None, "dry_run": True}
            )
        try:
            published = send(store, entry, runs, rate, token_of(req).name, span)
        except BadRequest as exc:
            raise bad(exc) from None
        listed = [{"id": run.id, "published": run.id in published} for run in runs]
        return Reply(
            200,
            {"runs": listed, "published": len(published),
             "already_there": len(runs) - len(published), "dry_run": False},
        )  # fmt: skip


def control_routes(context: ApiContext, history_max_age: timedelta) -> list[Route]:
    handlers = ControlRoutes(context, history_max_age)
    conflict = ("Refused: the entry is paused, busy, or holds a manual run already.", ERRORS)
    unknown = ("No entry has that name.", ERRORS)
    return [
        Route("POST", "/v1/entries/{name}/trigger", "trigger",
              "Publish one run of the entry now, marked manual (beatd trigger).", Scope.WRITE,
              handlers.trigger, (NAME,), TRIGGER_BODY,
              {201: ("Published.", TRIGGERED), 200: ("Held or a duplicate.", TRIGGERED),
               404: unknown, 409: conflict}),
        Route("POST", "/v1/entries/{name}/pause", "pause_entry",
              "Pause the entry: its slots due until `until` (or a resume) end missed (paused).",
              Scope.WRITE, handlers.pause, (NAME,), PAUSE_ONE_BODY,
              {200: ("Paused.", PAUSED), 404: unknown}),
        Route("POST", "/v1/entries/{name}/resume", "resume_entry",
              "Lift the entry's pause; the slots due while paused stay missed.", Scope.WRITE,
              handlers.resume, (NAME,), RESUME_ONE_BODY, {200: ("Done.", RESUMED), 404: unknown}),
        Route("POST", "/v1/pause", "pause",
              "Pause the entries named, all, or those matching a glob, now.", Scope.WRITE,
              handlers.pause, (), PAUSE_BODY, {200: ("Paused.", PAUSED), 404: unknown}),
        Route("POST", "/v1/resume", "resume",
              "Lift the pauses of the entries named, all, or those matching a glob.",
              Scope.WRITE, handlers.resume, (), RESUME_BODY,
              {200: ("Done.", RESUMED), 404: unknown}),
        Route("POST", "/v1/entries/{name}/backfill", "backfill",
              "Publish the entry's slots in [from, to) not published yet (beatd backfill); "
              "`dry_run` lists them.", Scope.WRITE, handlers.backfill, (NAME,), BACKFILL_BODY,
              {200: ("The runs, and which were published.", BACKFILLED), 404: unknown,
               409: ("Refused: the entry is busy under skip or buffer_one.", ERRORS)}),
    ]  # fmt: skip
