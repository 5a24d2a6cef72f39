"""The HTTP API's operations, declared once: Flask serves them and the OpenAPI document
(`GET /v1/openapi.json`) is written from the same declarations, so neither can drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from beatd.http.tokens import Scope

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter; `schema` is its JSON schema."""

    name: str
    where: str  # "path" or "query"
    description: str
    schema: JSON
    required: bool = False
    repeated: bool = False  # a query parameter given several times (?outcome=a&outcome=b)
    slashes: bool = False  # a path parameter that may hold `/` (an entry's name)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A body encoded already, as `json_text` would have encoded it (answered as it is)."""

    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: JSON | Encoded | None  # None: no body (a 304)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: `handler(request)` returns a Reply or raises ApiError."""

    method: str
    path: str  # OpenAPI form: /v1/entries/{name}
    name: str  # the operationId, and the route's label in the metrics
    summary: str
    scope: Scope
    handler: Callable[[Any], Reply]
    params: tuple[Param, ...] = ()
    body: JSON | None = None  # the request body's JSON schema
    # status: (description, the body's JSON schema; None: no body, a 304)
    replies: Mapping[int, tuple[str, JSON | None]] = field(default_factory=dict)

    @property
    def flask_rule(self) -> str:
        rule = self.path
        for param in self.params:
            if param.where == "path" and param.slashes:
                rule = rule.replace("{" + param.name + "}", f"<path:{param.name}>")
        return rule.replace("{", "<").replace("}", ">")


class ApiError(Exception):
    """An answer other than success: the status and `{"errors": [...]}`, each error with the
    entry, the field, the message and a JSON pointer into the request where they apply."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        entry: str | None = None,
        field: str | None = None,
        pointer: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors: list[JSON] = [
            {"entry": entry, "field": field, "message": message, "pointer": pointer}
        ]
        self.headers = dict(headers or {})

    @classmethod
    def many(cls, status: int, errors: list[JSON]) -> ApiError:
        error = cls(status, errors[0]["message"] if errors else "")
        error.errors = errors
        return error

    def body(self) -> JSON:
        return {"errors": self.errors}


ERROR_SCHEMA: JSON = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["entry", "field", "message", "pointer"],
                "properties": {
                    "entry": {"type": ["string", "null"]},
                    "field": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "pointer": {"type": ["string", "null"]},
                },
            },
        }
    },
}
