"""The HTTP API's own metrics, in the daemon's registry (docs/metrics.md, "HTTP API metrics"):
requests by route and status, how long they took, and refused tokens by why."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

NO_ROUTE = "none"  # a path no route declares (404), or a method it does not take (405)
# The API answers from memory and the backend: most in milliseconds, a backfill or a large
# page in a second or more.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

StartResponse = Callable[..., Any]


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "beatd_api_requests",
            "HTTP API requests answered, by route (its operationId) and status code.",
            ["route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "beatd_api_request_duration_seconds",
            "How long the HTTP API took to answer, by route, from the request read whole.",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "beatd_api_auth_failures",
            "HTTP API requests refused for their token: missing, malformed, unknown, or a "
            "read token on a write (scope); the console's sign-ins too.",
            ["reason"],
            registry=registry,
        )

    def wrap(self, app: Any) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
        """`app` as a WSGI application whose every answer is counted and timed."""

        def counted(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            started = time.perf_counter()
            status: list[str] = []

            def start(code: str, headers: Any, *rest: Any) -> Any:
                status.append(code.split(" ", 1)[0])
                return start_response(code, headers, *rest)

            try:
                return list(app(environ, start))
            finally:
                route = environ.get("beatd.route", NO_ROUTE)
                self.requests.labels(route, status[0] if status else "500").inc()
                self.duration.labels(route).observe(time.perf_counter() - started)

        return counted
