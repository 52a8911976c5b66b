"""Prometheus metrics: request counts and latencies per route, multi-process aware."""

import os
import time
from typing import Any

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "voms_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "voms_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Observe:
    """Pure ASGI middleware counting and timing requests per route template.

    Not ``@app.middleware("http")``: that wraps every request in extra tasks and memory
    streams, which costs more CPU than a redemption's own Python work.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled series met so far: looking one up through labels() costs more
        # than the observation itself.
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = (scope["method"], getattr(scope.get("route"), "path", "unmatched"))
            latency = self._latency.get(route)
            if latency is None:
                latency = self._latency[route] = LATENCY.labels(*route)
            latency.observe(time.perf_counter() - started)
            answered = (*route, status)
            requests = self._requests.get(answered)
            if requests is None:
                requests = self._requests[answered] = REQUESTS.labels(*route, str(status))
            requests.inc()


def render(business: bytes = b"") -> Response:
    """The metrics page; with several workers, summed over all of them. ``business``:
    the figures read from the database (the same in every worker, so added once)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry) + business, media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest() + business, media_type=CONTENT_TYPE_LATEST)
