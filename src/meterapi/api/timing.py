"""Request latency by route template, for ``/metrics``."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterapi.metrics import Histogram


class RequestTiming:
    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label, so random URLs cannot grow the series.
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.observe(
                time.perf_counter() - started, route=template, status=str(status[0] // 100) + "xx"
            )
