"""Metered routes: a 2xx response is recorded in the usage ledger before it is sent.

A route declares its cost with ``openapi_extra=cost(units)`` on a router whose ``route_class`` is
``MeteredRoute`` (``cost(0)``: paid access, calls not billed). Such a route authenticates its
caller itself (``require_api_key``, subscription checked) before the endpoint runs, and the
endpoint reads the caller with ``paying_caller``; the OpenAPI document still shows the API-key
requirement. The recording happens after the endpoint has produced its response and before a byte
of it goes out; an endpoint that raises, or answers outside 2xx, costs nothing. If the ledger
cannot make the usage durable, the caller gets 503 instead of an unbilled success.

The paid API is the hottest path there is, so an endpoint that takes nothing but the ``Request``
and returns a ``Response`` is called directly, without FastAPI's per-request machinery (dependency
solving, exit stacks, response validation): there is nothing for it to do there. Refusals are
raised as ``DomainError`` and answered by the application's handlers either way. An endpoint with
parameters or dependencies goes through FastAPI as usual and is metered the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from meterapi.api.deps import API_KEY_SCHEME, require_api_key
from meterapi.errors import UsageNotRecorded
from meterapi.keys.service import Principal
from meterapi.metering.ledger import LedgerUnavailable
from meterapi.runtime import Runtime

UNITS_KEY = "x-meterapi-units"


def cost(units: int) -> dict[str, Any]:
    """The ``openapi_extra`` of a paid route that costs ``units`` per successful call.

    ``cost(0)``: the route needs a paying caller like any other, but its calls are not billed
    (included in the subscription); nothing is written to the ledger for them.
    """
    if units < 0:
        raise ValueError("a route cannot cost less than nothing")
    return {UNITS_KEY: units}


def paying_caller(request: Request) -> Principal:
    """The caller a metered route authenticated before its endpoint ran."""
    principal: Principal = request.state.principal
    return principal


class MeteredRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = kwargs.get("openapi_extra") or {}
        self.paid = UNITS_KEY in extra
        self.units = int(extra.get(UNITS_KEY, 0))
        self.direct = self.paid and _takes_only_the_request(endpoint)
        if self.paid:
            # The requirement a Security dependency would have declared (the scheme itself is
            # registered by the self-service routes, which use the same ApiKeyAuth).
            kwargs["openapi_extra"] = {**extra, "security": [{API_KEY_SCHEME: []}]}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.paid:
            return handler

        async def metered(request: Request) -> Response:
            principal = await require_api_key(request)
            return await self._charge(request, principal, await handler(request))

        return metered

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.direct or scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)  # incl. 405 for another method
            return
        request = Request(scope, receive, send)
        principal = await require_api_key(request)
        response = await self._charge(request, principal, await self.endpoint(request))
        await response(scope, receive, send)

    async def _charge(self, request: Request, principal: Principal, response: Response) -> Response:
        """Record a successful response's units; answer 503 if they cannot be recorded."""
        if self.units and 200 <= response.status_code < 300:
            runtime: Runtime = request.app.state.runtime
            try:
                await runtime.recorder.record(
                    customer_id=principal.customer_id,
                    api_key_id=principal.key_id,
                    route=self.path,
                    units=self.units,
                )
            except LedgerUnavailable as exc:
                raise UsageNotRecorded() from exc
            runtime.metrics.units_recorded.inc(self.units)
        return response


def _takes_only_the_request(endpoint: Callable[..., Any]) -> bool:
    """``async def endpoint(request: Request) -> Response``: nothing for FastAPI to resolve."""
    if not inspect.iscoroutinefunction(endpoint):
        return False
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = list(signature.parameters.values())
    returns = signature.return_annotation
    return (
        len(parameters) == 1
        and parameters[0].annotation is Request
        and isinstance(returns, type)
        and issubclass(returns, Response)
    )
