"""Plug-in routers: the operator's own paid API, served beside meterapi's (CONTRACT §6).

``METERAPI_ROUTERS=yourpkg.api:router,other.mod:router`` names them; ``load_router`` imports one,
``include_routers`` adds them after the built-in routes, refusing a route that one of those (or an
earlier plug-in) already answers. Every problem is a ``RouterError`` whose message is one line
naming the import string, for the start to print and stop on.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence

from fastapi import APIRouter, FastAPI
from fastapi.routing import RouteContext, iter_route_contexts

from meterapi.config import ConfigError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RouterError(ConfigError):
    """A plug-in router cannot be served; the message says which and why, in one line."""


def load_router(spec: str) -> APIRouter:
    """The ``APIRouter`` that ``"package.module:attribute"`` names."""
    if not _SPEC.match(spec):
        raise RouterError(f"METERAPI_ROUTERS: {spec!r} is not of the form 'package.module:router'")
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # an import error, or any error the module raised on import
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RouterError(f"METERAPI_ROUTERS: cannot import {spec!r} ({reason})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RouterError(
                f"METERAPI_ROUTERS: {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            )
        target = getattr(target, part)
    if not isinstance(target, APIRouter):
        raise RouterError(
            f"METERAPI_ROUTERS: {spec!r} is a {type(target).__name__}, not a fastapi.APIRouter"
        )
    return target


def load_routers(specs: Iterable[str]) -> list[tuple[str, APIRouter]]:
    return [(spec, load_router(spec)) for spec in specs]


def include_routers(app: FastAPI, routers: Sequence[tuple[str, APIRouter]]) -> None:
    """Add each router's routes after those already in ``app``, refusing collisions."""
    for name, router in routers:
        taken = list(iter_route_contexts(app.router.routes))
        for route in iter_route_contexts(router.routes):
            clash = _collision(route, taken)
            if clash:
                raise RouterError(f"{name}: {clash}")
        app.include_router(router)


def _collision(route: RouteContext, taken: Sequence[RouteContext]) -> str | None:
    """Why ``route`` cannot be served beside ``taken``, or None."""
    if route.path is None or route.methods is None:
        return None  # websockets, mounts: nothing to compare
    for other in taken:
        if other.path is None or other.methods is None:
            continue
        shared = sorted(route.methods & other.methods - {"HEAD"})
        if not shared:
            continue
        if other.path == route.path:
            return f"{shared[0]} {route.path} collides with a route meterapi already serves"
        if "{" not in route.path and other.path_regex.match(route.path):
            # A literal path that an earlier route (with parameters) matches would never be
            # reached: routes are tried in order.
            return f"{shared[0]} {route.path} is already answered by {other.path}"
    return None
