"""The entries page's table rows, kept per view while the entry index holds the same rows.

The console runs in the scheduler's process and shares its interpreter: a client fetching the
entries page 10 times a second must cost the scheduler little (issue 19). The API's answer for a
view carries an ETag (the index's tag); the page asks again with If-None-Match and, while the API
answers 304, reuses the rows it rendered from the last answer. Only the relative times ("in 4
min") depend on the moment asked: they are left out of the kept HTML and written in at each
request, so a kept page reads exactly as a fresh one would.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import current_app
from flask.sansio.app import App
from markupsafe import Markup, escape

from beatd.console.views import Moment, entry_links, parse_stamp, seconds_text
from beatd.timetext import relative

EXTENSION = "beatd.console.entry_rows"
TEMPLATE = "entry_rows.html"
VIEWS_KEPT = 64  # views (filters, order, page) kept, the least recently asked dropped first
HOLE = "\x00relative\x00"  # where a row's relative time goes (no answer's text holds a NUL)

View = tuple[tuple[str, str], ...]  # the API query of a view, sorted


@dataclass(frozen=True, slots=True)
class Rendered:
    """One answer of the API (`data`, under the ETag `tag`) with its rows rendered: `parts`
    around the holes of `dues`, the next due of each row that has one, in order."""

    tag: str | None
    data: Mapping[str, Any]
    parts: Sequence[str]
    dues: Sequence[datetime]

    @classmethod
    def of(cls, data: Mapping[str, Any], tag: str | None) -> Rendered:
        dues: list[datetime] = []  # in the rows' order, as `_html` shows them

        def held_open(stamp: str | None) -> Moment | None:
            due = parse_stamp(stamp)
            if due is None:
                return None
            dues.append(due)
            return Moment(f"{due:%Y-%m-%dT%H:%M:%SZ}", HOLE)

        parts = _html(data["entries"], held_open).split(HOLE)
        if len(parts) != len(dues) + 1:  # a text held the hole's mark: not kept, never wrong
            return cls(None, data, [], [])
        return cls(tag, data, parts, dues)

    def at(self, moment: datetime) -> Markup:
        """The rows as they read at `moment`."""
        if not self.parts:
            return Markup(_rendered_at(self.data, moment))
        out = [self.parts[0]]
        for due, part in zip(self.dues, self.parts[1:], strict=True):
            out.append(str(escape(relative(due, moment))))
            out.append(part)
        return Markup("".join(out))


def _rendered_at(data: Mapping[str, Any], moment: datetime) -> str:
    """The rows of `data` rendered afresh, as they read at `moment`."""
    return _html(data["entries"], lambda stamp: Moment.of(stamp, moment))


def _html(
    entries: Sequence[Mapping[str, Any]], shown_next: Callable[[str | None], Moment | None]
) -> str:
    """The rows of `entries`, each next due shown as `shown_next` makes it."""
    hrefs = entry_links([entry["name"] for entry in entries])
    rows = [
        {
            **entry,
            "href": link,
            "next": shown_next(entry.get("next_due")),
            "duration": seconds_text(entry.get("last_duration_s")),
        }
        for entry, link in zip(entries, hrefs, strict=True)
    ]
    return current_app.jinja_env.get_template(TEMPLATE).render(rows=rows)


class KeptRows:
    """The last `Rendered` answer of each view, at most `size` views; shared by the server's
    threads."""

    def __init__(self, size: int = VIEWS_KEPT) -> None:
        self._size = size
        self._kept: OrderedDict[View, Rendered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, view: View) -> Rendered | None:
        with self._lock:
            found = self._kept.get(view)
            if found is not None:
                self._kept.move_to_end(view)
            return found

    def put(self, view: View, rendered: Rendered) -> None:
        if rendered.tag is None:
            return
        with self._lock:
            self._kept[view] = rendered
            self._kept.move_to_end(view)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)


def install(app: App) -> None:
    """Give `app` its kept rows (once)."""
    app.extensions.setdefault(EXTENSION, KeptRows())


def kept_rows() -> KeptRows:
    """The kept rows of the app serving this request."""
    found: KeptRows = current_app.extensions[EXTENSION]
    return found
