"""The HTTP API as a WSGI application (docs/api.md).

Before any route: the Host header must be one this server answers to (421 otherwise: a page
from another site reaching 127.0.0.1 through DNS rebinding names its own host), the request
must carry a token of the route's scope (401, 403) unless reads are public, and its body must
fit 1 MiB (413). Every answer is JSON; no CORS headers are sent, so a browser page from another
origin cannot read an answer. Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from beatd.http.routes import ApiError, Encoded, Reply, Route
from beatd.http.tokens import ApiToken, Scope, TokenTable

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
NOT_MODIFIED = 304
PUBLIC = ApiToken("public", Scope.READ, b"")  # who reads when --api-public-read is on
SESSION_TOKEN = "beatd.session_token"  # environ key: the console session's token (in process)
# Items of a long list encoded at a time (`json_text`): one json.dumps holds the interpreter
# (the GIL) until its whole text is done, 0.25 s for the 10,000 entries a batch answers and
# three times that on a loaded machine, while the scheduling loop in the same process waits.
JSON_PIECE = 100


@dataclass(frozen=True, slots=True)
class Access:
    """Who may ask: the tokens (re-read on SIGHUP, hence a callable), whether reads need none,
    and the Host header values this server answers to (`host` or `host:port`, lowercase)."""

    tokens: Callable[[], TokenTable]
    allowed_hosts: frozenset[str]
    public_read: bool = False
    refused: Callable[[str], None] = lambda _reason: None  # counts a refused token, by why


def create_app(routes: Sequence[Route], access: Access) -> Flask:
    app = Flask("beatd.http")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    for route in routes:
        app.add_url_rule(
            route.flask_rule,
            endpoint=route.name,
            view_func=_view(route, access),
            methods=[route.method],
        )
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(ApiError, _api_error)
    return app


def _view(route: Route, access: Access) -> Callable[..., Response]:
    def view(**_path: str) -> Response:
        request.environ["beatd.route"] = route.name
        check_host(request, access.allowed_hosts)
        request.environ["beatd.token"] = authorize(request, route.scope, access)
        if route.body is not None:
            request.environ["beatd.body"] = read_body(request)
        reply = route.handler(request)
        return json_response(reply.status, reply.body, reply.headers)

    view.__name__ = route.name
    return view


def host_allowed(req: Request, allowed: frozenset[str]) -> bool:
    """Whether the request's Host header is one this server answers to."""
    host = (req.host or "").lower()
    return host in allowed or host.rsplit(":", 1)[0] in allowed


def check_host(req: Request, allowed: frozenset[str]) -> None:
    host = (req.host or "").lower()
    if not host_allowed(req, allowed):
        raise ApiError(
            421,
            f"this server does not answer to the host {host!r}; add it to --api-allowed-hosts "
            "if that is the name clients use",
            field="Host",
        )


def authorize(req: Request, scope: Scope, access: Access) -> ApiToken:
    """The token the request acts with, checked for the route's `scope`. The console's
    in-process calls (beatd.console.api_caller) carry the signed-in session's token in the
    environ key SESSION_TOKEN, which no client can set (HTTP headers become HTTP_* keys)."""
    session = req.environ.get(SESSION_TOKEN)
    token = session if isinstance(session, ApiToken) else bearer_token(req, scope, access)
    if scope is Scope.WRITE and token.scope is not Scope.WRITE:
        access.refused("scope")
        raise ApiError(403, f"token {token.name} may only read; this request needs a write token")
    return token


def bearer_token(req: Request, scope: Scope, access: Access) -> ApiToken:
    """The token of the Authorization header (PUBLIC for a read without one, when reads are
    public); 401 when it is missing, malformed or not in the token file."""
    header = req.headers.get("Authorization", "")
    kind, _, presented = header.partition(" ")
    if not header:
        if access.public_read and scope is Scope.READ:
            return PUBLIC
        access.refused("missing")
        raise _unauthorized("this request needs a token: Authorization: Bearer TOKEN")
    if kind.lower() != "bearer" or not presented.strip():
        access.refused("malformed")
        raise _unauthorized("the Authorization header must be `Bearer TOKEN`")
    token = access.tokens().find(presented.strip())
    if token is None:
        access.refused("unknown")
        log.warning("API request refused: unknown token method=%s path=%s", req.method, req.path)
        raise _unauthorized("the token is not in the API token file")
    return token


def read_body(req: Request) -> Any:
    """The request's JSON body: 413 above MAX_BODY, 422 when it is not JSON."""
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_BODY // 1024} KiB")
    data = req.get_data(cache=True)  # werkzeug stops reading a chunked body at MAX_BODY
    if not data.strip():
        return {}  # no body: an empty object (POST .../resume needs none)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(422, f"the body is not JSON: {exc}", pointer="") from None


def body_of(req: Request) -> Any:
    return req.environ["beatd.body"]


def token_of(req: Request) -> ApiToken:
    token: ApiToken = req.environ["beatd.token"]
    return token


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, message, field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="beatd"'}
    )


def json_response(status: int, body: Any, headers: dict[str, str] | Any = None) -> Response:
    """`body` as JSON (`json_text`); a 304 has no body (RFC 9110)."""
    text = None if status == NOT_MODIFIED else json_text(body)
    response = Response(text, status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def json_text(body: Any) -> str:
    """`json.dumps(body, ensure_ascii=False)`, a list longer than JSON_PIECE items (in objects
    with text keys) encoded JSON_PIECE items at a time, so that other threads run in between;
    an Encoded body is its text."""
    if isinstance(body, Encoded):
        return body.text
    if isinstance(body, list) and len(body) > JSON_PIECE:
        pieces = (
            json_text(body[at : at + JSON_PIECE])[1:-1] for at in range(0, len(body), JSON_PIECE)
        )
        return "[" + ", ".join(pieces) + "]"
    if isinstance(body, dict) and body and all(isinstance(key, str) for key in body):
        members = (f"{_dumps(key)}: {json_text(value)}" for key, value in body.items())
        return "{" + ", ".join(members) + "}"
    return _dumps(body)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _api_error(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


def http_error(error: HTTPException) -> Response:
    """The API's JSON answer to a routing or protocol error (404, 405, 413...)."""
    code = error.code or 500
    messages = {
        404: "no such path in the API: GET /v1/openapi.json lists them",
        405: "this path does not take that method: GET /v1/openapi.json lists them",
        413: f"the request body is larger than {MAX_BODY // 1024} KiB",
    }
    message = messages.get(code, error.description or error.name)
    headers = {}
    if code == 405 and error.get_response().headers.get("Allow"):
        headers["Allow"] = error.get_response().headers["Allow"]
    return json_response(code, ApiError(code, message).body(), headers)


def reply(body: Any, status: int = 200) -> Reply:
    return Reply(status, body)
