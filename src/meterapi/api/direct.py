"""``DirectPaidRoute``: an explicit fast path for paid routes that need nothing but the caller.

A paid route through FastAPI's machinery (dependency solving, exit stacks) costs about 60 µs of
CPU more per request than one called directly (bench/: metered ÷ bare 0.56 against 0.81 in runs
on the same loaded machine; docs/selling-your-api.md). A route whose author chooses
``route_class=DirectPaidRoute`` is called directly: ``authenticate_paid``, then the endpoint.

What it would skip, it refuses instead, by name:

- at construction: an endpoint whose parameters are anything but ``PaidCaller``, ``Usage`` and
  the ``Request``, one that is not ``async``, or one not annotated to return a ``Response``; a
  dependency on the route or its router;
- at start (``check_direct_routes``, from ``create_app`` and again from its lifespan): a
  dependency added by an including router or the app.

Refusals and the 405 of another method are the application's, as on any route.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.types import Receive, Scope, Send

from meterapi.api.paid import PAID_ACCESS, authenticate_paid, usage_dependency, usage_of
from meterapi.api.plugins import RouterError


class DirectPaidRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._caller_name, self._usage_name, self._request_name = _parameters(self)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)  # the 405, as FastAPI answers it
            return
        request = Request(scope, receive, send)
        arguments: dict[str, Any] = {}
        caller = await authenticate_paid(request)
        if self._caller_name:
            arguments[self._caller_name] = caller
        if self._usage_name:
            arguments[self._usage_name] = usage_of(request)
        if self._request_name:
            arguments[self._request_name] = request
        response: Response = await self.endpoint(**arguments)
        await response(scope, receive, send)


def _parameters(route: DirectPaidRoute) -> tuple[str | None, str | None, str | None]:
    """The names the endpoint takes the caller, the meter and the request by; or a refusal."""
    where = f"DirectPaidRoute {route.path}"
    dependant = route.dependant
    if route.dependencies:
        raise RouterError(f"{where}: it would skip the dependencies of its route or router")
    if not inspect.iscoroutinefunction(route.endpoint):
        raise RouterError(f"{where}: the endpoint must be an async def")
    returns = inspect.signature(route.endpoint, eval_str=True).return_annotation
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        raise RouterError(f"{where}: the endpoint must be annotated to return a Response")
    plain = [
        *dependant.path_params,
        *dependant.query_params,
        *dependant.header_params,
        *dependant.cookie_params,
        *dependant.body_params,
    ]
    other = (
        dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    )
    if plain or other:
        raise RouterError(f"{where}: the endpoint may take only PaidCaller, Usage and Request")
    caller = usage = None
    for sub in dependant.dependencies:
        if sub.call is PAID_ACCESS and not sub.dependencies:
            caller = sub.name
        elif sub.call is usage_dependency and not sub.dependencies:
            usage = sub.name
        else:
            raise RouterError(f"{where}: it would skip the dependency {sub.name or sub.call!r}")
    if caller is None:
        raise RouterError(f"{where}: the endpoint must take a PaidCaller")
    return caller, usage, dependant.request_param_name


def check_direct_routes(app: FastAPI) -> None:
    """Refuse a ``DirectPaidRoute`` given dependencies by the app or a router including it."""
    if not any(isinstance(r, DirectPaidRoute) for r in _originals(app)):
        return
    if app.router.dependencies:
        raise RouterError("DirectPaidRoute: it would skip the app's dependencies")
    for context in iter_route_contexts(app.router.routes):
        if isinstance(context.original_route, DirectPaidRoute) and context.dependencies:
            raise RouterError(
                f"DirectPaidRoute {context.path}: it would skip the dependencies of a router "
                "that includes it; use a plain route there"
            )


def _originals(app: FastAPI) -> list[object]:
    return [c.original_route for c in iter_route_contexts(app.router.routes)]
