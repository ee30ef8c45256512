"""Every dependency the app's routes use runs on the event loop: FastAPI sends a plain-function
dependency to its thread pool, a hop per request that none of ours needs."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from meterapi.app import create_app
from meterapi.config import Settings


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependencies(sub)


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # an included router's routes
        if included is not None:
            yield from _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def _runs_on_the_loop(call: Any) -> bool:
    if inspect.isclass(call):
        return False  # a class is instantiated on the thread pool
    target = call if inspect.isroutine(call) else getattr(call, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def test_no_dependency_runs_on_the_thread_pool(tmp_path: Any) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        admin_token="a" * 40,
    )
    app = create_app(settings)  # builds without I/O
    routes = list(_api_routes(app.router.routes))
    assert len(routes) > 20
    wrong = {
        f"{getattr(call, '__qualname__', type(call).__qualname__)} (for {route.path})"
        for route in routes
        for call in _dependencies(route.dependant)
        if not _runs_on_the_loop(call)
    }
    assert wrong == set()


def test_the_check_sees_a_plain_function() -> None:
    def plain() -> None: ...

    async def on_the_loop() -> None: ...

    assert not _runs_on_the_loop(plain)
    assert _runs_on_the_loop(on_the_loop)
