"""Runtime entries (issue 18): list, read, create, replace and remove them, and create many at
once, with `beatd entries`' behaviour and words (both stand on beatd.operations.entries).

An entry's ETag is its version; PUT and DELETE take an optional `If-Match` and answer 412 when
it is not the entry's version, so two operators do not overwrite each other. The audit log
records each write under the token's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from beatd.config.convert import ENTRY_NAME, ENTRY_NAME_RULE
from beatd.config.fields import FIELDS, SCHEDULE_FIELDS
from beatd.errors import BeatdError
from beatd.http.app import body_of, token_of
from beatd.http.context import ApiContext
from beatd.http.queries import query_int, query_text
from beatd.http.routes import JSON, ApiError, Encoded, Param, Reply, Route
from beatd.http.tokens import Scope
from beatd.operations import entries as ops
from beatd.operations import entry_objects as shown
from beatd.runtime_entries import RuntimeEntry

T = TypeVar("T")
ERRORS: JSON = {"$ref": "#/components/schemas/Errors"}
NAME_SCHEMA: JSON = {
    "type": "string",
    "pattern": "^" + ENTRY_NAME.pattern.removesuffix(r"\Z") + "$",
}
DEFINITION: JSON = {
    "type": "object",
    "description": "An entry's fields, as in a schedule file (docs/configuration.md).",
    "properties": {f.name: {**f.schema, "description": f.doc} for f in FIELDS},
    "required": ["task"],
    "additionalProperties": False,
    # exactly one schedule field (the rest of what `beatd check` checks, such as a cron
    # expression's grammar or a jitter shorter than the period, is answered with 422)
    "oneOf": [{"required": [field]} for field in SCHEDULE_FIELDS],
}
NEW_ENTRY: JSON = {
    **DEFINITION,
    "properties": {"name": NAME_SCHEMA, **DEFINITION["properties"]},
    "required": ["name", "task"],
}
OPTIONAL_TEXT: JSON = {"type": ["string", "null"]}
ENTRY: JSON = {
    "type": "object",
    "required": ["name", "source", "version", "definition"],
    "properties": {
        "name": {"type": "string"},
        "source": {"type": "string"},
        "version": {"type": ["integer", "null"], "minimum": 1},
        "definition": {"type": "object"},
        "created_at": OPTIONAL_TEXT,
        "created_by": OPTIONAL_TEXT,
        "updated_at": OPTIONAL_TEXT,
        "updated_by": OPTIONAL_TEXT,
    },
}
ENTRIES: JSON = {
    "type": "object",
    "required": ["entries"],
    "properties": {"entries": {"type": "array", "items": ENTRY}},
}
PAGE: JSON = {
    "type": "object",
    "required": ["entries", "next_after"],
    "properties": {"entries": ENTRIES["properties"]["entries"], "next_after": OPTIONAL_TEXT},
}
BATCH: JSON = {
    "type": "object",
    "required": ["entries"],
    "properties": {"entries": {"type": "array", "items": NEW_ENTRY, "maxItems": ops.MAX_BATCH}},
}
# a stored name may predate the rule against empty, "." and ".." parts: it stays reachable
# (with its slashes sent as %2F, which clients do not merge or resolve)
STORED_NAME: JSON = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$"}
NAME = Param(
    "name",
    "path",
    "The entry's name (send '/' as %2F to keep a client from resolving '..').",
    STORED_NAME,
    slashes=True,
)
IF_MATCH = Param(
    "If-Match",
    "header",
    'The version the write expects (the ETag of a GET, such as "3"); 412 otherwise.',
    {"type": "string", "pattern": '^"[0-9]{1,9}"$'},
)
DST: JSON = {
    "type": ["object", "null"],
    "required": ["rule", "note"],
    "properties": {"rule": {"type": "string"}, "note": {"type": "string"}},
}
NEXT_RUNS: JSON = {
    "type": "object",
    "required": ["entry", "slots", "runs"],
    "properties": {
        "entry": {"type": "string"},
        "slots": {"type": "array", "items": {"type": "string"}},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["slot", "dst"],
                "properties": {"slot": {"type": "string"}, "dst": DST},
            },
        },
    },
}
COUNT = Param(
    "count",
    "query",
    "How many slots.",
    {"type": "integer", "minimum": 1, "maximum": shown.MAX_NEXT_RUNS, "default": 5},
)
LIST_PARAMS = (
    Param("after", "query", "Only entries whose names sort after this one.", {"type": "string"}),
    Param(
        "limit",
        "query",
        "At most this many entries, by name.",
        {"type": "integer", "minimum": 1, "maximum": shown.MAX_PAGE, "default": 100},
    ),
    Param("source", "query", "Only runtime (api) or file entries.", {"enum": list(shown.SOURCES)}),
)


def entry_routes(context: ApiContext) -> list[Route]:
    handlers = _Handlers(context)
    return [
        Route(
            "GET", "/v1/entries", "list_entries",
            "Runtime entries and the running configuration's file entries, by name, a page at "
            "a time: pass `next_after` as `after` for the next.",
            Scope.READ, handlers.list, LIST_PARAMS,
            replies={200: ("A page of entries.", PAGE)},
        ),
        Route(
            "GET", "/v1/entries/{name}", "get_entry",
            "One entry: every field, its source, its version (also its ETag).",
            Scope.READ, handlers.get, (NAME,),
            replies={200: ("The entry.", ENTRY), 404: ("No such entry.", ERRORS)},
        ),
        Route(
            "GET", "/v1/next-runs/{name}", "next_runs",
            "An entry's next slots from now, in UTC (fewer when its schedule ends), and the "
            "same as runs, each with its DST mark as `beatd next --json` shows it.",
            Scope.READ, handlers.next_runs, (NAME, COUNT),
            replies={200: ("The slots.", NEXT_RUNS), 404: ("No such entry.", ERRORS)},
        ),
        Route(
            "POST", "/v1/entries", "add_entry",
            "Create a runtime entry (201, its Location and ETag); 409 when the name is taken.",
            Scope.WRITE, handlers.add, body=NEW_ENTRY,
            replies={201: ("Created.", ENTRY), 409: ("The name is taken.", ERRORS)},
        ),
        Route(
            "POST", "/v1/entries/batch", "add_entries",
            "Create many runtime entries, all or none.",
            Scope.WRITE, handlers.add_many, body=BATCH,
            replies={201: ("Created.", ENTRIES), 409: ("A name is taken.", ERRORS)},
        ),
        Route(
            "PUT", "/v1/entries/{name}", "replace_entry",
            "Replace a runtime entry's whole definition, or create it (201). A file entry's "
            "cannot be changed (409, naming the file to edit).",
            Scope.WRITE, handlers.replace, (NAME, IF_MATCH), DEFINITION,
            replies={
                200: ("Replaced.", ENTRY), 201: ("Created.", ENTRY),
                409: ("A file entry's name.", ERRORS),
                412: ("If-Match is not the entry's version.", ERRORS),
            },
        ),
        Route(
            "DELETE", "/v1/entries/{name}", "remove_entry",
            "Remove a runtime entry; the entry as it was.",
            Scope.WRITE, handlers.remove, (NAME, IF_MATCH),
            replies={
                200: ("Removed.", ENTRY), 404: ("No such runtime entry.", ERRORS),
                409: ("A file entry's name.", ERRORS),
                412: ("If-Match is not the entry's version.", ERRORS),
            },
        ),
    ]  # fmt: skip


class _Handlers:
    def __init__(self, context: ApiContext) -> None:
        self.context = context

    def writing(self, req: Any) -> ops.Writing:
        return ops.Writing.of(token_of(req).name, self.context.config())

    def list(self, req: Any) -> Reply:
        after = req.args.get("after", "")
        limit = query_int(req, "limit", 100, 1, shown.MAX_PAGE)
        source = query_text(req, "source")
        if source is not None and source not in shown.SOURCES:
            raise ApiError(422, f"source must be one of {', '.join(shown.SOURCES)}", field="source")
        page = shown.list_entries(
            self.context.backend(), self.context.config(), after=after, limit=limit, source=source
        )
        return Reply(200, {"entries": page.entries, "next_after": page.next_after})

    def get(self, req: Any) -> Reply:
        name = req.view_args["name"]
        found = _answer(
            lambda: shown.get_entry(self.context.backend(), self.context.config(), name)
        )
        headers = {} if found["version"] is None else {"ETag": _etag(found["version"])}
        return Reply(200, found, headers)

    def next_runs(self, req: Any) -> Reply:
        name = req.view_args["name"]
        count = query_int(req, "count", 5, 1, shown.MAX_NEXT_RUNS)
        context = self.context
        runs = _answer(
            lambda: shown.next_runs(context.backend(), context.config(), name, count, context.now())
        )
        return Reply(200, {"entry": name, "slots": [r["slot"] for r in runs], "runs": runs})

    def add(self, req: Any) -> Reply:
        body = _object(body_of(req), "")
        name = _name(body.get("name"), "/name")
        raw = {k: v for k, v in body.items() if k != "name"}
        stored = _answer(lambda: ops.add(self.context.backend(), name, raw, self.writing(req)))
        return _written(stored, 201)

    def add_many(self, req: Any) -> Reply:
        """The batch's entries written and answered with the cyclic collector paused (as
        ops.add_many pauses it) until the handler's values are freed: resumed inside the write,
        it walked the batch's entries still held for the answer, about 5 % of a request."""
        with ops.collector_paused():
            return self._add_many(req)

    def _add_many(self, req: Any) -> Reply:
        body = _object(body_of(req), "")
        items = body.get("entries")
        if not isinstance(items, list):
            raise ApiError(422, "entries must be a list of entries", field="entries", pointer="")
        if len(items) > ops.MAX_BATCH:
            message = (
                f"a batch holds at most {ops.MAX_BATCH} entries, this one {len(items)}; nothing "
                "was written: send it as several batches (Client.add_many does)"
            )
            raise ApiError(413, message, field="entries", pointer="/entries")
        definitions = []
        for index, item in enumerate(items):
            item = _object(item, f"/entries/{index}")
            name = _name(item.get("name"), f"/entries/{index}/name")
            definitions.append((name, {k: v for k, v in item.items() if k != "name"}))
        stored = _answer(
            lambda: ops.add_many(self.context.backend(), definitions, self.writing(req)),
            lambda: {name: f"/entries/{i}" for i, (name, _) in enumerate(definitions)},
        )
        return Reply(201, Encoded(shown.entries_text(stored)))

    def replace(self, req: Any) -> Reply:
        name = req.view_args["name"]
        raw = _object(body_of(req), "")
        expected = _if_match(req)
        store = self.context.backend()
        existed = store.get_entry(name) is not None
        stored = _answer(
            lambda: ops.replace(store, name, raw, self.writing(req), expected),
            conditional=expected is not None,
        )
        # created or replaced, by whether it was there: a new entry's version is its change
        # record's seq, more than 1 once the feed holds any record
        return _written(stored, 200 if existed else 201)

    def remove(self, req: Any) -> Reply:
        name = req.view_args["name"]
        expected = _if_match(req)
        by = token_of(req).name
        removed = _answer(
            lambda: ops.remove(self.context.backend(), name, by, expected),
            conditional=expected is not None,
        )
        return Reply(200, shown.entry_object(removed))


def _written(entry: RuntimeEntry, status: int) -> Reply:
    headers = {"ETag": _etag(entry.version), "Location": f"/v1/entries/{quote(entry.name)}"}
    return Reply(status, shown.entry_object(entry), headers)


def _etag(version: int) -> str:
    return f'"{version}"'


def _if_match(req: Any) -> int | None:
    text = req.headers.get("If-Match")
    if text is None:
        return None
    digits = text.strip().removeprefix("W/").strip('"')
    if not digits.isdigit() or len(digits) > 9:
        raise ApiError(
            422,
            f'If-Match must be an entry\'s version in quotes, such as "3", got {text!r}',
            field="If-Match",
        )
    return int(digits)


def _object(value: Any, pointer: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(422, "expected an object of entry fields", pointer=pointer)
    return value


def _name(value: Any, pointer: str) -> str:
    """The entry's name: "required" only when missing (or not text); a malformed one refused
    in `beatd check`'s words, as every way in refuses it (its entry the name, no field)."""
    if not isinstance(value, str) or not value:
        raise ApiError(422, f"name is required: {ENTRY_NAME_RULE}", field="name", pointer=pointer)
    if not ENTRY_NAME.match(value):
        raise ApiError(422, ENTRY_NAME_RULE, entry=value, pointer=pointer)
    return value


def _answer(
    write: Callable[[], T],
    positions: Callable[[], dict[str, str]] | None = None,
    *,
    conditional: bool = False,
) -> T:
    """`write()`, its refusals answered as every way in words them (ops.refusal); `positions`
    makes where each entry is in the body (a batch's), only for a refusal."""
    try:
        return write()
    except BeatdError as exc:
        where = None if positions is None else positions()
        refused = ops.refusal(exc, conditional=conditional, positions=where)
        if refused is None:
            raise
        raise ApiError.many(refused.status, refused.errors) from None
