"""The HTTP API's server: waitress in its own threads beside the scheduling loop.

waitress reads each request whole (headers and body, within `channel_timeout`) on its own event
loop before handing it to one of a fixed pool of worker threads, so a slow or stalled client
holds neither a worker nor the scheduler; `connection_limit` bounds open connections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

from beatd.turns import LoopTurns

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    threads: int = 4
    channel_timeout: int = 30  # seconds a connection may sit idle or trickle a request
    connection_limit: int = 64
    trusted_proxy: str | None = None  # whose X-Forwarded-Proto sets the request's scheme


class ApiServer:
    """Serves `app` at the settings' address from a daemon thread until `stop()`."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        proxy: dict[str, Any] = {}
        if settings.trusted_proxy is not None:  # https behind a TLS proxy (docs/api.md, TLS)
            proxy = {
                "trusted_proxy": settings.trusted_proxy,
                "trusted_proxy_headers": {"x-forwarded-proto"},
            }
        server = create_server(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            channel_timeout=settings.channel_timeout,
            connection_limit=settings.connection_limit,
            max_request_body_size=2 * 1024 * 1024,  # the app answers 413 above 1 MiB
            ident="beatd",
            clear_untrusted_proxy_headers=True,
            expose_tracebacks=False,
            # waitress takes whole seconds (it casts to int: 0.25 made a loop that never
            # waited, a core and the GIL taken from the scheduler); stop() wakes it at once
            asyncore_loop_timeout=1,
            **proxy,
        )
        if not isinstance(server, BaseWSGIServer):  # one host and port: one listening socket
            raise TypeError(f"unexpected waitress server {server!r}")
        self._server = server
        self._channels: Any = vars(server)["_map"]  # the connections stop() must close
        self._trigger: Any = vars(server)["trigger"]  # wakes the loop (typed int by types-waitress)
        self.host = settings.host
        listening = server.socket
        if listening is None:
            raise TypeError("waitress made a server without a socket")
        self.port = int(listening.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, name="beatd-api", daemon=True)
        self._stopping = False

    def start(self) -> ApiServer:
        self.thread.start()
        return self

    def _serve(self) -> None:
        try:
            self._server.run()
        except OSError as exc:  # closed under the loop: by stop(), or (said) by a fault
            level = logging.DEBUG if self._stopping else logging.ERROR
            log.log(level, "API server loop ended: %s", exc)

    def stop(self) -> None:
        self._stopping = True
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        if self.thread.is_alive():  # closed by the loop's own thread, woken by its trigger
            try:
                self._trigger.pull_trigger(self._close)
            except OSError as exc:  # the trigger's pipe is gone: closed below, from here
                log.warning("API server: its loop could not be woken to stop: %s", exc)
            else:
                self.thread.join(timeout=5)
        if self._channels:  # never started, or its loop did not answer
            self._close()

    def _close(self) -> None:
        self._server.close()
        wasyncore.close_all(self._channels)


def answering(app: Any, turns: LoopTurns) -> Callable[..., Iterable[bytes]]:
    """`app`, each answer counted in `turns` while it is made: the entry index's refreshes wait
    for the answers (`beatd.turns`), which themselves never wait."""

    def answer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with turns.answering():
            result: Iterable[bytes] = app(environ, start_response)
        return result

    return answer
