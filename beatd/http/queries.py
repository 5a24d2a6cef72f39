"""Reading a request's query parameters: each problem is a 422 naming the parameter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from beatd.http.routes import ApiError
from beatd.operations.history import parse_since


def query_int(req: Any, name: str, default: int, low: int, high: int) -> int:
    text = req.args.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(
            422, f"{name} must be a whole number from {low} to {high}, got {text!r}", field=name
        )
    return int(text)


def query_text(req: Any, name: str) -> str | None:
    text: str | None = req.args.get(name)
    if text is not None and not text.strip():
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
