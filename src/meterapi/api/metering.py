"""Metered routes: a 2xx response is recorded in the usage ledger before it is sent.

A route declares its cost with ``openapi_extra=cost(units)`` on a router whose ``route_class`` is
``MeteredRoute``. The recording happens after the endpoint has produced its response and before a
byte of it goes out; an endpoint that raises, or answers outside 2xx, costs nothing. If the ledger
cannot make the usage durable, the caller gets 503 instead of an unbilled success.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from meterapi.errors import UsageNotRecorded
from meterapi.keys.service import Principal
from meterapi.metering.ledger import LedgerUnavailable
from meterapi.runtime import Runtime

UNITS_KEY = "x-meterapi-units"


def cost(units: int) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that costs ``units`` per successful call."""
    if units < 1:
        raise ValueError("a metered route costs at least one unit")
    return {UNITS_KEY: units}


class MeteredRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        units = int((self.openapi_extra or {}).get(UNITS_KEY, 0))
        if not units:
            return handler
        route = self.path

        async def metered(request: Request) -> Response:
            response = await handler(request)
            if 200 <= response.status_code < 300:
                principal: Principal = request.state.principal
                runtime: Runtime = request.app.state.runtime
                try:
                    await runtime.recorder.record(
                        customer_id=principal.customer_id,
                        api_key_id=principal.key_id,
                        route=route,
                        units=units,
                    )
                except LedgerUnavailable as exc:
                    raise UsageNotRecorded() from exc
                runtime.metrics.units_recorded.inc(units)
            return response

        return metered
