"""The web console (issue 19; docs/console.md): server-rendered pages at /ui on the HTTP API's
listener, which see and steer the scheduler through the public API routes only.

How a page is written (the overview, beatd/console/overview.py, is the smallest):

- A module with `add_pages(ui: Blueprint)` adding its rules to the console Blueprint; list it
  in `console_blueprint` (beatd/console/app.py). Endpoints are `ui.NAME`; paths are under /ui.
- Data: `api().get(route_name, path={...}, query={...})` (beatd.console.api_caller) runs the
  API route of that operationId in process, as the signed-in session's token, and returns its
  JSON, or raises `ApiFailure(status, errors)` with the API's own messages. Writes use
  `api().send(route_name, path, body, headers)`, which returns an `ApiAnswer` (status, body,
  headers, `.ok`, `.errors`) refusals included, for the page to show. Pass the route name as
  a string literal as the first argument: tests/console/test_guards.py finds every such call
  and checks the name is an operationId of the OpenAPI document. Every GET page is also
  checked there: a 303 to sign-in without a session, shown with --api-public-read, the CSP
  signed in (path parameters are filled with "nightly", an entry of the test's schedules).
- Pages: `render("page.html", **context)` (beatd.console.pages). Templates extend base.html
  and fill the blocks `title` and `content`; every template has `csrf_token`, `signed_in` (the
  token's name or None), `scope`, `public_read`, `now` and `messages` (Message(text, kind),
  kind `info` or `error`; pass `messages=[...]` to add some).
- Actions: a POST view decorated with `@action` (beatd.console.security). It runs only when the
  Origin header is the console's own and the form's hidden field `csrf` equals the session's:

      <form method="post" action="...">
        <input type="hidden" name="csrf" value="{{ csrf_token }}">
        <button type="submit">Trigger now</button>
      </form>

  otherwise the user gets a 403 page saying why. The view calls the API (`api().send`), then
  answers `redirect_with(url, "what was done")` (a 303 whose page shows the message), or, when
  the API refused, shows its errors (a read-only token gets the API's own 403 message);
  `refuse(status, why)` renders a refusal page.
- No inline <script>, <style> or style="" (the Content-Security-Policy is default-src 'self');
  assets go in beatd/console/static/ and ship in the wheel. Every control has an accessible
  name (a <label>, or aria-label).

Sign-in and sessions: beatd.console.signin and beatd.console.sessions; the guards and headers:
beatd.console.security.
"""

from __future__ import annotations

from beatd.console.api_caller import ApiAnswer, ApiCaller, ApiFailure, api
from beatd.console.app import console_blueprint, register_console
from beatd.console.pages import Message, redirect_with, refuse, render
from beatd.console.security import action

__all__ = [
    "ApiAnswer",
    "ApiCaller",
    "ApiFailure",
    "Message",
    "action",
    "api",
    "console_blueprint",
    "redirect_with",
    "refuse",
    "register_console",
    "render",
]
