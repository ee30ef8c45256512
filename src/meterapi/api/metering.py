"""Metered routes: a 2xx response is recorded in the usage ledger before it is sent.

A route declares its cost with ``openapi_extra=cost(units)`` on a router whose ``route_class`` is
``MeteredRoute``. Such a route authenticates its caller itself (``require_api_key``, subscription
checked) before the endpoint runs, and the endpoint reads the caller with ``paying_caller``: on the
hottest path this saves FastAPI a dependency to resolve per request, and the OpenAPI document
still shows the API-key requirement. The recording happens after the endpoint has produced its
response and before a byte of it goes out; an endpoint that raises, or answers outside 2xx,
costs nothing. If the ledger cannot make the usage durable, the caller gets 503 instead of an
unbilled success.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from meterapi.api.deps import API_KEY_SCHEME, require_api_key
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


def paying_caller(request: Request) -> Principal:
    """The caller a metered route authenticated before its endpoint ran."""
    principal: Principal = request.state.principal
    return principal


class MeteredRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = kwargs.get("openapi_extra") or {}
        if extra.get(UNITS_KEY):
            # The requirement a Security dependency would have declared (the scheme itself is
            # registered by the self-service routes, which use the same ApiKeyAuth).
            kwargs["openapi_extra"] = {**extra, "security": [{API_KEY_SCHEME: []}]}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        units = int((self.openapi_extra or {}).get(UNITS_KEY, 0))
        if not units:
            return handler
        route = self.path

        async def metered(request: Request) -> Response:
            await require_api_key(request)
            response = await handler(request)
            if 200 <= response.status_code < 300:
                principal = paying_caller(request)
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
