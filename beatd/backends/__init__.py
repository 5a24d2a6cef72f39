"""Backends by URL scheme: `sqlite:///relative.db`, `sqlite:////absolute.db`, `redis://...`."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from beatd.backends.base import Backend, DeadLetter, Delivery, LeaderInfo, Lease, Outgoing
from beatd.errors import BeatdError


def default_broker() -> str:
    """`$STATE_DIRECTORY/beatd.db` under systemd, `./beatd.db` elsewhere."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return f"sqlite:///{os.path.join(os.path.abspath(state_dir), 'beatd.db')}"
    return "sqlite:///beatd.db"


def open_backend(url: str) -> Backend:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from beatd.backends.sqlite import SQLiteBackend

        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise BeatdError(
                f"cannot read broker URL {url!r}: use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        return SQLiteBackend(url[len(prefix) :])
    raise BeatdError(f"unsupported broker URL scheme {scheme!r} in {url!r}: use sqlite://")


__all__ = [
    "Backend",
    "DeadLetter",
    "Delivery",
    "LeaderInfo",
    "Lease",
    "Outgoing",
    "default_broker",
    "open_backend",
]
