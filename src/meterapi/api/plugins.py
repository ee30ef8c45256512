"""Plug-in routers: the operator's own paid API, served beside meterapi's (CONTRACT §6).

``METERAPI_ROUTERS=yourpkg.api:router,other.mod:router`` names them; ``load_router`` imports one,
``check_routers`` refuses a route that overlaps a built-in one (or an earlier plug-in's). Every
problem is a ``RouterError`` whose message is one line naming the import string, for the start
to print and stop on.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence

from fastapi import APIRouter
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute

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


def check_routers(served: Sequence[BaseRoute], routers: Sequence[tuple[str, APIRouter]]) -> None:
    """Refuse a plug-in route that would answer a request meant for one of ``served`` (or of an
    earlier plug-in), or whose requests one of them would answer: the same method, and the same
    path, or a path that the other route's pattern matches. Plug-in routes are then safe to try
    before the built-in ones, where a paid request finds its route sooner."""
    taken = list(iter_route_contexts(served))
    for name, router in routers:
        mine = list(iter_route_contexts(router.routes))
        for route in mine:
            clash = _collision(route, taken)
            if clash:
                raise RouterError(f"{name}: {clash}")
        taken.extend(mine)


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
        if other.path_regex.match(_example(route.path)) or route.path_regex.match(
            _example(other.path)
        ):
            return f"{shared[0]} {route.path} overlaps {other.path}, which meterapi already serves"
    return None


def _example(path: str) -> str:
    """A concrete path the template matches (each parameter replaced by a sample value)."""
    return _PARAMETER.sub("x", path)


_PARAMETER = re.compile(r"\{[^}]*\}")
