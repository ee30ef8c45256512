"""The gateway's routes: each listed path is a Starlette ``Route`` whose ASGI app authenticates
the caller like any paid route, forwards the request, bills the upstream's 2xx and streams the
answer back.

Billing goes through the paid mechanism every paid route uses (``api.paid``): the units (the
upstream's ``X-Meterapi-Units``, else the route's) are charged once the upstream's 2xx status and
headers have arrived, and the recording layer makes them durable as the response starts, before
its first byte goes to the client. A client that hangs up mid-stream has already been billed, as
for any 2xx that was produced; 502 and 504 are answered before anything is charged.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from meterapi.api.deps import API_KEY_SCHEME
from meterapi.api.errors import ERROR_SCHEMA
from meterapi.api.paid import authenticate_paid, usage_of
from meterapi.gateway.proxy import (
    Upstream,
    client_headers,
    identity_headers,
    units_of,
    upstream_headers,
)
from meterapi.gateway.spec import PARAMETER, GatewayFileError, GatewayRoute, GatewaySpec

log = logging.getLogger(__name__)

# Characters left as they are in a forwarded path and query: whatever the client escaped stays
# escaped, anything else outside ASCII is escaped.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Forward:
    """The ASGI app of one gateway route."""

    def __init__(self, upstream: Upstream, route: GatewayRoute) -> None:
        self.upstream = upstream
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        caller = await authenticate_paid(request)  # refusals are DomainErrors, answered as such
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        target = self.upstream.target(
            quote(raw_path, safe=_PATH_SAFE).encode(),
            quote(scope["query_string"], safe=_QUERY_SAFE).encode(),
        )
        headers = upstream_headers(scope["headers"]) + identity_headers(
            customer=caller.customer_id,
            key_id=caller.key_id,
            method=method,
            target=target,
            secret=self.upstream.secret,
        )
        body = request.stream() if _has_body(scope["headers"]) else None
        response = await self.upstream.open(
            method=method, target=target, headers=headers, body=body
        )
        try:
            headers_down, units_header = client_headers(response.headers.raw)
            if 200 <= response.status_code < 300:
                meter = usage_of(request)
                meter.route = self.route.path
                meter.charge(units_of(units_header, default=self.route.units, route=meter.route))
            # The recording layer makes the units durable as this response starts, before its
            # first byte; if it cannot, the client gets 503 and sending raises, which ends this.
            answer = StreamingResponse(_body(response), status_code=response.status_code)
            answer.raw_headers = headers_down
            await answer(scope, receive, send)
        finally:
            await response.aclose()


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives, still encoded as the upstream sent it."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        # Too late for a status: the client's connection is cut, so it sees an incomplete body.
        log.warning(
            "upstream broke off %s %s mid-body (%s); the answer to the client is cut short",
            response.request.method,
            response.request.url.path,
            type(exc).__name__,
        )
        raise


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def mount(app: FastAPI, spec: GatewaySpec, upstream: Upstream) -> None:
    """Add the gateway's routes after the built-in ones, and list them in the OpenAPI document.

    A gateway route whose requests a built-in route would take stops the start.
    """
    for route in spec.routes:
        for method in route.methods:
            scope: Scope = {"type": "http", "method": method, "path": _sample(route.path)}
            scope.update(root_path="", headers=[], query_string=b"")
            taken = next((r for r in app.router.routes if r.matches(scope)[0] == Match.FULL), None)
            if taken is not None:
                raise GatewayFileError(
                    f"gateway route {method} {route.path} collides with a built-in route "
                    f"({getattr(taken, 'path', '') or scope['path']})"
                )
    for route in spec.routes:
        # Starlette's Route takes an ASGI app as its endpoint too, and calls it as one.
        app.router.add_route(
            route.path,
            Forward(upstream, route),  # type: ignore[arg-type]
            methods=list(route.methods),
            include_in_schema=False,  # documented by add_to_openapi
        )
    _document(app, spec)


_SAMPLES = {"str": "x", "path": "x/y", "int": "1", "float": "1.5", "uuid": str(uuid.UUID(int=1))}


def _sample(path: str) -> str:
    """A concrete path the template matches, to ask the app's router who would take it."""
    return PARAMETER.sub(lambda m: _SAMPLES.get(m.group(2) or "str", "x"), path)


def _document(app: FastAPI, spec: GatewaySpec) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            add_to_openapi(schema, spec)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_to_openapi(schema: dict[str, Any], spec: GatewaySpec) -> None:
    """List each gateway route: its method, path parameters, cost and the API-key scheme."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).setdefault(
        API_KEY_SCHEME, {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    )
    paths = schema.setdefault("paths", {})
    for route in spec.routes:
        names = [m.group(1) for m in PARAMETER.finditer(route.path)]
        path = PARAMETER.sub(r"{\1}", route.path)
        item = paths.setdefault(path, {})
        cost = f"costs {route.units} unit{'s' if route.units != 1 else ''}"
        for method in route.methods:
            item[method.lower()] = {
                "tags": ["gateway"],
                "summary": f"Forwarded to the upstream ({cost})",
                "description": f"forwarded; {cost} per 2xx answer, or what the upstream's "
                "X-Meterapi-Units header says",
                "operationId": f"gateway_{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path)}",
                "security": [{API_KEY_SCHEME: []}],
                "x-meterapi-units": route.units,
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in names
                ],
                "responses": {
                    "200": {"description": "The upstream's answer, streamed as it arrives"},
                    **{str(status): _error(text) for status, text in _REFUSALS.items()},
                },
            }


_REFUSALS = {
    401: "Missing or invalid API key",
    402: "The subscription does not allow access",
    429: "Over the key's rate limit; not billed",
    502: "The upstream could not be reached; not billed",
    503: "The call could not be recorded, so it was not served",
    504: "The upstream did not answer in time; not billed",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
