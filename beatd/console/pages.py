"""Rendering console pages: `render(page, **ctx)` with the context every page has (the
messages to show, the CSRF token, who is signed in), messages carried across a redirect in a
signed cookie (`redirect_with`), and the page that refuses an action (`refuse`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import g, redirect, render_template, request
from werkzeug.wrappers import Response

from beatd.console.sessions import FLASH_PURPOSE, sign, unsign
from beatd.console.settings import console
from beatd.errors import BackendError

FLASH_COOKIE = "beatd_flash"
FLASH_LIFETIME = 60  # seconds: the next page shows the messages, then they go
COOKIE_PATH = "/ui"
HEADINGS = {401: "Not signed in", 403: "Refused", 404: "Not found", 421: "Wrong host"}


@dataclass(frozen=True, slots=True)
class Message:
    """A line in the page's message area: `info` (what was done) or `error` (what was not)."""

    text: str
    kind: str = "info"


def render(page: str, **context: Any) -> str:
    """The template `page` with `context`; its `messages` (strings or Message) follow the ones
    a redirect carried here."""
    given = [m if isinstance(m, Message) else Message(str(m)) for m in context.pop("messages", [])]
    return render_template(page, messages=[*flashed(), *given], **context)


def refuse(status: int, why: str) -> Response:
    """The page that says why an action or a page was refused."""
    heading = HEADINGS.get(status, "Not done")
    page = render("refused.html", status=status, heading=heading, why=why)
    return Response(page, status=status, mimetype="text/html")


def redirect_with(location: str, *messages: Message | str) -> Response:
    """A 303 to `location` whose page shows `messages` (an action's outcome)."""
    response = redirect(location, 303)
    kept = [m if isinstance(m, Message) else Message(m) for m in messages]
    value = json.dumps([[m.kind, m.text] for m in kept], separators=(",", ":")).encode()
    response.set_cookie(
        FLASH_COOKIE,
        sign(console().session_key(), FLASH_PURPOSE, value),
        max_age=FLASH_LIFETIME,
        path=COOKIE_PATH,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    g.flash_set = True
    return response


def flashed() -> list[Message]:
    """The messages a redirect carried to this page (shown once)."""
    value = request.cookies.get(FLASH_COOKIE)
    if not value or g.get("flash_read"):
        return []
    g.flash_read = True
    try:
        key = console().session_key()
    except BackendError:  # the page says so (backend_down); its messages are lost
        return []
    data = unsign(key, FLASH_PURPOSE, value)
    try:
        pairs = json.loads(data) if data is not None else []
        return [Message(str(text), str(kind)) for kind, text in pairs]
    except (ValueError, TypeError):
        return []


def forget_flash(response: Response) -> Response:
    """Clear the messages cookie once a page has shown them."""
    if g.get("flash_read") and not g.get("flash_set"):
        response.delete_cookie(
            FLASH_COOKIE,
            path=COOKIE_PATH,
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
    return response


def backend_down(error: BackendError) -> Response:
    """The page of a console request the backend could not serve (the session key)."""
    return refuse(503, f"the backend did not answer, so sessions cannot be checked: {error}")
