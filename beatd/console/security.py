"""The console's guards: security headers on every console response, the Host check, and the
checks every console POST passes (`action`): the same-origin Origin header, a signed-in
session, and its CSRF token in the form's `csrf` field."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Request, g, request
from werkzeug.wrappers import Response

from beatd.console.pages import refuse
from beatd.console.sessions import Session

CSRF_FIELD = "csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # default-src does not cover framing (frame-ancestors)
}
CONSOLE_PREFIX = "/ui"


def is_console_path(path: str) -> bool:
    return path == "/" or path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def add_security_headers(response: Response) -> Response:
    """The console's headers, on every answer under /ui (and the / redirect), errors too;
    pages (not the static files) are never stored."""
    if is_console_path(request.path):
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        if request.endpoint != "ui.static":
            response.headers["Cache-Control"] = "no-store"
    return response


def own_origin(req: Request) -> str:
    """This request's own origin, scheme://host[:port], as a browser sends it in Origin."""
    return f"{req.scheme}://{req.host}".lower()


def origin_refusal(req: Request) -> str | None:
    """Why the request's Origin header is not the console's own, or None when it is."""
    origin = req.headers.get("Origin")
    own = own_origin(req)
    if origin is None:
        return (
            "the form came without an Origin header; the console takes actions only from its "
            f"own pages at {own} (browsers send Origin with every form they post)"
        )
    if origin.lower() != own:
        return (
            f"the form came from {origin}, not from the console's own origin {own}: a page of "
            "another site cannot act here (behind a TLS proxy, see docs/api.md, Console sign-in)"
        )
    return None


def csrf_refusal(session: Session | None, req: Request) -> str | None:
    """Why the form's CSRF field does not match the session's, or None when it does."""
    if session is None:
        return "actions need you signed in with a write token: sign in first"
    presented = req.form.get(CSRF_FIELD)
    if not presented:
        return (
            "the form has no CSRF token: reload the page and try again (forms of the console "
            "carry one)"
        )
    if not session.csrf_matches(presented):
        return (
            "the form's CSRF token is not this session's (it was signed in again, or the form "
            "came from elsewhere): reload the page and try again"
        )
    return None


def action(view: Callable[..., Any]) -> Callable[..., Any]:
    """A console POST view, run only when the request's Origin is the console's own and its
    `csrf` form field is the signed-in session's; otherwise a 403 page saying why."""

    @functools.wraps(view)
    def checked(**kwargs: Any) -> Any:
        why = origin_refusal(request) or csrf_refusal(g.get("session"), request)
        if why is not None:
            return refuse(403, why)
        return view(**kwargs)

    return checked
