"""What `beatd.Client` raises when beatd refuses a request: the same messages whichever way it
went (the backend directly, or the HTTP API), since both come from beatd.operations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from beatd.errors import BeatdError


class ClientError(BeatdError):
    """A refusal: its HTTP status (the API's, or the one it would have answered) and each
    error with its `entry`, `field`, `message` and `pointer` (into the request's JSON)."""

    def __init__(self, status: int, errors: Sequence[Mapping[str, Any]]) -> None:
        self.status = status
        self.errors = [dict(e) for e in errors]
        fields = status in (413, 422)  # a field's problem, worded as `beatd check` words it
        super().__init__("\n".join(_line(e, fields) for e in self.errors))


class InvalidRequest(ClientError):
    """422: a field `beatd check` would refuse in a file, in its words."""


class TooLarge(InvalidRequest):
    """413: args and kwargs over 64 KiB, or a request body over 1 MiB."""


class Conflict(ClientError):
    """409: the name is a file entry's (the error names the file), or exists already."""


class VersionConflict(ClientError):
    """412: the entry is no longer at the version the write expected: read it again."""


class NotFound(ClientError):
    """404: no such entry."""


class NotAllowed(ClientError):
    """401, 403, 421: no token, a read-only token, or a host the server does not answer to."""


_BY_STATUS: dict[int, type[ClientError]] = {
    401: NotAllowed,
    403: NotAllowed,
    404: NotFound,
    409: Conflict,
    412: VersionConflict,
    413: TooLarge,
    421: NotAllowed,
    422: InvalidRequest,
}


def error_for(status: int, errors: Sequence[Mapping[str, Any]]) -> ClientError:
    return _BY_STATUS.get(status, ClientError)(status, errors)


def _line(error: Mapping[str, Any], with_field: bool) -> str:
    """An error as the CLI words it: `entry E: field F: message` for a field's problem, the
    message alone otherwise (it names its entry itself)."""
    entry, field, message = error.get("entry"), error.get("field"), str(error.get("message"))
    if not with_field or entry is None:
        return message
    if field is None:
        return f"entry {entry}: {message}"
    return f"entry {entry}: field {field}: {message}"
