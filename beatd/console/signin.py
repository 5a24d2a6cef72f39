"""Signing in and out: GET/POST /ui/signin (a form with the token), POST /ui/signout.

A sign-in POST must come from the console's own origin; the token is looked up in the token
file as the API does (a wrong one is counted in beatd_api_auth_failures, as `unknown`, an empty
one as `missing`) and a session cookie is set: HttpOnly, SameSite=Strict, Path=/ui, Secure when
the request came over https (docs/api.md, Console sign-in), Max-Age 12 hours.
"""

from __future__ import annotations

import logging

from flask import Blueprint, g, request, url_for
from werkzeug.wrappers import Response

from beatd.console.pages import COOKIE_PATH, Message, redirect_with, refuse, render
from beatd.console.security import csrf_refusal, origin_refusal
from beatd.console.sessions import SESSION_COOKIE, SESSION_LIFETIME, Session
from beatd.console.settings import console

log = logging.getLogger(__name__)
SESSION_ENDED = Message(
    "your session has ended: it was opened 12 hours ago, or its token is no longer in the API "
    "token file; sign in again",
    "error",
)


def add_pages(ui: Blueprint) -> None:
    ui.add_url_rule("/signin", "signin", signin_page, methods=["GET"])
    ui.add_url_rule("/signin", "signin_submit", signin_submit, methods=["POST"])
    ui.add_url_rule("/signout", "signout", signout, methods=["POST"])


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site), of printable
    ASCII only (a line break or a control character cannot be put in a Location header)."""
    if (
        value
        and value.startswith("/ui/")
        and not value.startswith("/ui//")
        and "\\" not in value
        and all("!" <= char <= "~" for char in value)
    ):
        return value
    return url_for("ui.overview")


def signin_page() -> str:
    ended = [SESSION_ENDED] if g.get("session_ended") else []
    return render("signin.html", next=safe_next(request.args.get("next")), messages=ended)


def signin_submit() -> Response | tuple[str, int]:
    why = origin_refusal(request)
    if why is not None:
        return refuse(403, why)
    settings = console()
    presented = request.form.get("token", "").strip()
    target = safe_next(request.form.get("next"))
    token = settings.access.tokens().find(presented) if presented else None
    if token is None:
        settings.access.refused("unknown" if presented else "missing")
        if presented:
            log.warning("console sign-in refused: unknown token")
        message = (
            "that token is not in this server's API token file: check it, or ask for one "
            "(`beatd api token NAME`)"
            if presented
            else "enter a token to sign in"
        )
        return render("signin.html", next=target, messages=[Message(message, "error")]), 401
    session = Session.open(token, settings.now(), settings.generation(Session.digest_of(token)))
    response = redirect_with(target, f"signed in as {token.name} ({token.scope})")
    response.set_cookie(
        SESSION_COOKIE,
        session.encode(settings.session_key()),
        max_age=SESSION_LIFETIME,
        path=COOKIE_PATH,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    g.session_ended = False
    log.info("console sign-in token=%s", token.name)
    return response


def signout() -> Response:
    why = origin_refusal(request)
    session = g.get("session")
    if why is None and session is not None:
        why = csrf_refusal(session, request)
    if why is not None:
        return refuse(403, why)
    if session is not None:  # every cookie of this token issued so far, copies too, ends
        console().end_sessions(session.digest)
    response = redirect_with(url_for("ui.signin"), "signed out")
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict"
    )
    g.session_ended = False
    return response
