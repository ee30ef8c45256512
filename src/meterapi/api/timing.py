"""Per-request bookkeeping in one pure-ASGI layer (it runs on every request, the paid path
included): latency by route template for ``/metrics``, the access log line (``access_log``),
and ``Cache-Control: no-store`` on the responses that can reveal a key."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterapi.api import access_log
from meterapi.api.middleware import HttpMiddleware
from meterapi.metrics import Histogram

# POST /v1/keys, /v1/keys/claim and /v1/keys/{id}/rotate answer with a key's plaintext: no
# cache may keep any of their answers, errors included (those come from the error handlers,
# outside the routes, hence here).
KEY_REVEALING_PREFIX = "/v1/keys"
NO_STORE = (b"cache-control", b"no-store")


class RequestTiming(HttpMiddleware):
    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        super().__init__(app)
        self.histogram = histogram

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = [0]
        no_store = scope["method"] == "POST" and scope["path"].startswith(KEY_REVEALING_PREFIX)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if no_store:
                    message = {**message, "headers": [*message.get("headers", ()), NO_STORE]}
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not status[0]:
                status[0] = 500  # what the server answers for an exception that escaped
            raise
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # Unmatched paths share one label, so random URLs cannot grow the series.
            template = getattr(route, "path", None) or "unmatched"
            self.histogram.observe(seconds, route=template, status=str(status[0] // 100) + "xx")
            access_log.write(scope, status[0], seconds)
