"""What the console's pages and actions share: the clock the console runs on, where an
entry's page is, and an API refusal shown as a page in the API's own words and status."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import url_for
from werkzeug.wrappers import Response

from beatd.console.api_caller import ApiFailure
from beatd.console.pages import refuse
from beatd.console.settings import console


def now() -> datetime:
    """The console's now (the API context's clock: a fake one in tests and screenshots)."""
    return datetime.fromtimestamp(console().now(), UTC)


def entry_url(name: str) -> str:
    return url_for("ui.entry", name=name)


def refusal(status: int, errors: Sequence[Mapping[str, Any]]) -> Response:
    """The API's refusal (a read token's 403, an unknown entry's 404, a 409 naming the schedule
    file, a 422 naming the field) as the console's refusal page, with the API's status."""
    said = [
        f"{error['field']}: {error['message']}" if error.get("field") else str(error["message"])
        for error in errors
    ]
    return refuse(status, "; ".join(said) or f"the API answered {status}")


def shows_refusals(page: Callable[..., Any]) -> Callable[..., Any]:
    """A page whose API reads may be refused (a 503 while the backend is unreachable, say):
    the refusal is shown as a page, in the API's words and status, not as a 500."""

    @functools.wraps(page)
    def shown(**kwargs: Any) -> Any:
        try:
            return page(**kwargs)
        except ApiFailure as failure:
            return refusal(failure.status, failure.errors)

    return shown
