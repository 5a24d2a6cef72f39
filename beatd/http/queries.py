"""Reading a request's query parameters: each problem is a 422 naming the parameter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from beatd.http.routes import ApiError
from beatd.operations.controls import number_words
from beatd.operations.history import parse_since


def query_int(req: Any, name: str, default: int, low: int, high: int) -> int:
    text = req.args.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(422, number_words(name, low, high, text), field=name)
    return int(text)


def query_text(req: Any, name: str) -> str | None:
    text: str | None = req.args.get(name)
    if text == "":  # given empty; any other text is a name to look for, found or not
        raise ApiError(422, f"{name} is empty: leave it out, or give a value", field=name)
    return text


def query_since(req: Any, now: datetime) -> datetime | None:
    """`since`: a duration back from `now`, or an ISO 8601 time."""
    text = query_text(req, "since")
    if text is None:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise ApiError(422, str(exc), field="since") from None


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}
JSON_NAMES = {
    "string": "a string",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "array": "an array",
    "object": "an object",
}


def body_object(req: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON body, checked against the route's own schema (an object of typed members):
    422 naming the first member that is unknown, missing or of another type."""
    body = req.environ["beatd.body"]
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", pointer="")
    members: dict[str, Any] = schema.get("properties", {})
    for name in body:
        if name not in members:
            known = ", ".join(sorted(members))
            message = f"unknown member {name!r}: use {known}"
            raise ApiError(422, message, field=name, pointer=f"/{name}")
    for name in schema.get("required", ()):
        if name not in body:
            raise ApiError(422, f"{name} is required", field=name, pointer=f"/{name}")
    for name, value in body.items():
        check_member(name, value, members[name])
    return body


def check_member(name: str, value: Any, schema: dict[str, Any]) -> None:
    kind = schema.get("type")
    if kind is None:
        return
    fits = isinstance(value, JSON_TYPES[kind]) and (kind == "boolean") == isinstance(value, bool)
    if not fits:
        raise ApiError(422, f"{name} must be {JSON_NAMES[kind]}", field=name, pointer=f"/{name}")
    if kind == "string" and len(value) < schema.get("minLength", 0):
        raise ApiError(422, f"{name} is empty", field=name, pointer=f"/{name}")
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get(
        "maximum", value
    ):
        low, high = schema.get("minimum"), schema.get("maximum")
        message = f"{name} must be from {low} to {high}, got {value}"
        raise ApiError(422, message, field=name, pointer=f"/{name}")
    if kind == "array" and "items" in schema:
        for item in value:
            check_member(name, item, schema["items"])
