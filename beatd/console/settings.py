"""What the console reaches, held by the Flask app (`app.extensions`): who may ask (the API's
own `Access`), the session key and sign-outs from the backend, and the clock (injected in tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from beatd.http.app import Access

EXTENSION = "beatd.console"


class KeyOnce:
    """The session key, asked of the backend on first use and kept: it never changes once
    made (`SessionKeys.session_key`), so one read per process is enough."""

    def __init__(self, fetch: Callable[[], bytes]) -> None:
        self._fetch = fetch
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._fetch()
        return self._key


@dataclass(frozen=True, slots=True)
class Console:
    access: Access
    session_key: Callable[[], bytes]
    now: Callable[[], float]  # Unix seconds
    # a token's sign-out generation (by its digest prefix), and signing it out everywhere
    generation: Callable[[str], int]
    end_sessions: Callable[[str], int]

    @property
    def public_read(self) -> bool:
        return self.access.public_read


def console() -> Console:
    """The console settings of the app serving this request."""
    found: Console = current_app.extensions[EXTENSION]
    return found
