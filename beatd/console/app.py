"""The console as a Flask Blueprint at /ui on the API's app (`register_console`).

Before every console view: the Host check (as the API's, a 421 page otherwise), the session
from the cookie (beatd.console.sessions), and, without --api-public-read, a 303 to the sign-in
page for anyone not signed in. After every answer under /ui: the security headers
(beatd.console.security). Routing errors under /ui get an HTML page, the API's stay JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from flask import Blueprint, Flask, current_app, g, redirect, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter
from werkzeug.wrappers import Response

from beatd.console import actions, dead, entries, entry, entry_form, overview, signin
from beatd.console.api_caller import CONSOLE_TOKEN
from beatd.console.pages import backend_down, forget_flash, redirect_with, refuse
from beatd.console.security import add_security_headers, is_console_path
from beatd.console.sessions import SESSION_COOKIE, Session
from beatd.console.settings import EXTENSION, Console, KeyOnce, console
from beatd.console.views import name_in_url
from beatd.errors import BackendError
from beatd.http.app import Access, host_allowed, http_error
from beatd.http.context import ApiContext

AddPages = Callable[[Blueprint], None]  # a page module's add_pages
# Endpoints shown to anyone who reaches the server, signed in or not.
OPEN_ENDPOINTS = frozenset({"ui.static", "ui.signin", "ui.signin_submit", "ui.signout"})


def register_console(
    app: Flask, context: ApiContext, access: Access, extra: Sequence[AddPages] = ()
) -> None:
    """Serve the console at /ui on `app` (the API's), `/` redirecting to it; `extra` adds
    pages of a caller's own (tests)."""
    app.url_map.converters["entry"] = EntryName
    app.extensions[EXTENSION] = Console(
        access,
        KeyOnce(lambda: context.backend().session_key()),
        lambda: context.now().timestamp(),
        lambda digest: context.backend().session_generation(digest),
        lambda digest: context.backend().end_sessions(digest),
    )
    app.register_blueprint(console_blueprint(extra))
    app.add_url_rule("/", "console_root", lambda: redirect("/ui/", 303), methods=["GET"])
    app.before_request(_host_check)  # every console path: those no view matches, and /
    app.after_request(add_security_headers)
    app.register_error_handler(HTTPException, _error_page)


class EntryName(PathConverter):
    """An entry's name (or a run's id) in a console URL, as `name_in_url` writes it; the server
    decodes it back (a `path` converter reads it)."""

    def to_url(self, value: str) -> str:
        return name_in_url(value)


def console_blueprint(extra: Sequence[AddPages] = ()) -> Blueprint:
    ui = Blueprint(
        "ui",
        __name__,
        url_prefix="/ui",
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    ui.before_request(_before)
    ui.after_request(_after)
    ui.context_processor(_page_context)
    ui.register_error_handler(BackendError, backend_down)
    signin.add_pages(ui)
    for pages in (overview, entries, entry, entry_form, actions, dead):
        pages.add_pages(ui)
    for add_pages in extra:
        add_pages(ui)
    return ui


def _host_check() -> Response | None:
    """A console path (/, /ui and under, matched by a view or not) asked for under another
    host: the 421 page (the API's paths have the API's own check)."""
    if not is_console_path(request.path) or host_allowed(request, console().access.allowed_hosts):
        return None
    host = (request.host or "").lower()
    return refuse(
        421,
        f"this server does not answer to the host {host!r}; add it to --api-allowed-hosts "
        "if that is the name clients use",
    )


def _before() -> Response | None:
    request.environ["beatd.route"] = request.endpoint or "none"  # the metrics' route label
    settings = console()
    if request.endpoint == "ui.static":
        return None
    g.session, token = None, None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = Session.decode(cookie, settings.session_key())
        if session is not None:
            token = session.token_in(settings.access.tokens(), settings.now())
            if token is not None and session.generation != settings.generation(session.digest):
                token = None  # signed out (in this browser or another) since it was issued
        g.session = session if token is not None else None
        g.session_ended = token is None
    if token is not None:
        request.environ[CONSOLE_TOKEN] = token
        g.token = token
    if g.session is None and not settings.public_read and request.endpoint not in OPEN_ENDPOINTS:
        to_sign_in = url_for("ui.signin", next=request.full_path.rstrip("?"))
        if g.get("session_ended"):
            return redirect_with(to_sign_in, signin.SESSION_ENDED)
        return redirect(to_sign_in, 303)
    return None


def _after(response: Response) -> Response:
    if g.get("session_ended"):  # a cookie no longer honoured: the browser may drop it
        response.delete_cookie(
            SESSION_COOKIE, path="/ui", secure=request.is_secure, httponly=True, samesite="Strict"
        )
    return forget_flash(response)


def _page_context() -> dict[str, object]:
    session: Session | None = g.get("session")
    token = g.get("token")
    return {
        "csrf_token": "" if session is None else session.csrf,
        "signed_in": None if token is None else token.name,
        "scope": None if token is None else str(token.scope),
        "public_read": console().public_read,
        "now": datetime.fromtimestamp(console().now(), UTC),
    }


def _error_page(error: HTTPException) -> Response:
    """HTML under /ui, the API's JSON elsewhere."""
    if not is_console_path(request.path) or EXTENSION not in current_app.extensions:
        return http_error(error)
    code = error.code or 500
    words = {
        404: "there is no such page in the console",
        405: "this page does not take that method",
        413: "the form is larger than 1 MiB",
    }
    return refuse(code, words.get(code, error.description or error.name))
