"""The paid-route API in one process: what is billed, when, and what the OpenAPI document shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from sqlmodel import select

from meterapi import Caller, PaidCaller, Usage, create_app
from meterapi.api import data
from meterapi.api.direct import DirectPaidRoute
from meterapi.api.plugins import RouterError
from meterapi.config import Settings
from meterapi.db import Sessionmaker
from meterapi.errors import NotFound, RateLimited
from meterapi.models import UsageEvent
from tests.integration import internals
from tests.integration.keys_support import Seeder, headers
from tests.integration.totals import ledger_total


class Text(BaseModel):
    text: str


def words_router(seen: list[str], db_url: str) -> APIRouter:
    """Paid routes of every kind, behind a router-level dependency that notes each call."""

    async def note(request: Request) -> None:
        seen.append(request.url.path)
        if request.headers.get("x-limit") == "hit":
            raise RateLimited()

    router = APIRouter(prefix="/t", dependencies=[Depends(note)])

    @router.post("/words")
    async def words(body: Text, caller: PaidCaller, usage: Usage) -> dict[str, int | str]:
        count = len(body.text.split())
        usage.charge(count)
        return {"words": count, "customer": caller.customer_id}

    @router.get("/stream")
    async def stream(caller: PaidCaller, usage: Usage, request: Request) -> StreamingResponse:
        usage.charge(3)

        async def chunks() -> AsyncIterator[bytes]:
            # Runs after the response started: its units must be durable by now.
            yield f"{await ledger_total(db_url)}\n".encode()
            yield b"done\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @router.get("/refused")
    async def refused(caller: PaidCaller, usage: Usage) -> None:
        usage.charge(5)
        raise NotFound()

    @router.get("/crash")
    async def crash(caller: PaidCaller, usage: Usage) -> None:
        usage.charge(5)
        raise RuntimeError("boom")

    @router.get("/bad-request")
    async def bad_request(caller: PaidCaller, usage: Usage) -> JSONResponse:
        usage.charge(5)
        return JSONResponse({"error": "no"}, status_code=400)

    @router.get("/late")
    async def late(caller: PaidCaller, usage: Usage) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                usage.charge(1)
            except RuntimeError as exc:
                yield str(exc).encode()

        return StreamingResponse(chunks())

    @router.get("/unpaid")
    async def unpaid(usage: Usage) -> dict[str, str]:
        usage.charge(1)  # no PaidCaller: a bug of the route's author, refused
        return {}

    return router


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.fixture
def seen() -> list[str]:
    return []


@pytest.fixture
async def words_app(settings: Settings, seen: list[str]) -> AsyncIterator[FastAPI]:
    app = create_app(settings, routers=[words_router(seen, settings.database_url)])
    yield app


async def keyed(seed: Seeder, cus: str = "cus_words") -> str:
    customer_id = await seed.customer(stripe_customer_id=cus)
    return (await seed.key(customer_id))[1]


async def test_variable_units_and_what_is_not_billed(
    words_app: FastAPI, seen: list[str], seed: Seeder, db_url: str
) -> None:
    async with serving(words_app) as client:
        key = await keyed(seed)
        ok = await client.post("/t/words", json={"text": "one two three"}, headers=headers(key))
        assert ok.json() == {"words": 3, "customer": "cus_words"}
        assert await ledger_total(db_url) == 3
        for path, status in [
            ("/t/refused", 404),
            ("/t/crash", 500),
            ("/t/bad-request", 400),
        ]:
            assert (await client.get(path, headers=headers(key))).status_code == status, path
        invalid = await client.post("/t/words", json={"txt": "a b"}, headers=headers(key))
        assert invalid.status_code == 422
        limited = await client.post(
            "/t/words", json={"text": "a b"}, headers={**headers(key), "X-Limit": "hit"}
        )
        assert limited.status_code == 429
        assert (await client.post("/t/words", json={"text": "a b"})).status_code == 401
        late = await client.get("/t/late", headers=headers(key))
        assert late.status_code == 200 and "after the response started" in late.text
        assert (await client.get("/t/unpaid", headers=headers(key))).status_code == 500
        assert await ledger_total(db_url) == 3
        # The router-level dependency ran on every call, paid or refused.
        assert len(seen) == 9


async def test_a_stream_is_billed_before_its_first_byte(words_app: FastAPI, seed: Seeder) -> None:
    async with serving(words_app) as client:
        key = await keyed(seed)
        async with client.stream("GET", "/t/stream", headers=headers(key)) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
        assert lines == ["3", "done"]


async def test_no_ledger_no_answer(words_app: FastAPI, seed: Seeder, db_url: str) -> None:
    async with serving(words_app) as client:
        key = await keyed(seed)
        await internals.break_ledger(words_app)
        for response in [
            await client.post("/t/words", json={"text": "a b"}, headers=headers(key)),
            await client.get("/t/stream", headers=headers(key)),
        ]:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "usage_unavailable"
        assert await ledger_total(db_url) == 0


async def test_the_direct_example_route_refuses_dependencies_it_would_skip(
    settings: Settings,
    seed: Seeder,
    db_url: str,
) -> None:
    """/v1/data is a DirectPaidRoute: a dependency it cannot run stops the start, by name,
    instead of being skipped in silence."""

    async def limiter(request: Request) -> None:
        raise RateLimited()

    guarded = APIRouter(dependencies=[Depends(limiter)])
    guarded.include_router(data.router)
    with pytest.raises(RouterError, match="DirectPaidRoute /v1/data: it would skip"):
        create_app(settings.model_copy(update={"example_routes": False}), routers=[guarded])

    app = create_app(settings)
    app.router.dependencies.append(Depends(limiter))  # after create_app: checked at start
    with pytest.raises(RouterError, match="the app's dependencies"):
        async with app.router.lifespan_context(app):
            pass

    # The same endpoint on a plain route runs the router's dependency, and is refused by it.
    plain = APIRouter(dependencies=[Depends(limiter)])
    plain.add_api_route("/v1/guarded", data.get_data)
    app = create_app(settings, routers=[plain])
    async with serving(app) as client:
        key = await keyed(seed)
        assert (await client.get("/v1/guarded", headers=headers(key))).status_code == 429
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
        assert await ledger_total(db_url) == 1


async def _direct_ok(caller: PaidCaller, usage: Usage, request: Request) -> Response:
    return Response()


async def _direct_query(n: int, caller: PaidCaller) -> Response:
    return Response()


async def _direct_no_caller(usage: Usage) -> Response:
    return Response()


async def _direct_model(caller: PaidCaller) -> dict[str, str]:
    return {}


async def _noop() -> None:
    return None


@pytest.mark.parametrize(
    ("endpoint", "extra", "message"),
    [
        (_direct_query, {}, "may take only PaidCaller, Usage and Request"),
        (_direct_no_caller, {}, "must take a PaidCaller"),
        (_direct_model, {}, "annotated to return a Response"),
        (_direct_ok, {"dependencies": [Depends(_noop)]}, "dependencies of its route or router"),
    ],
)
def test_a_direct_route_refuses_what_it_would_skip(
    endpoint: Callable[..., Any], extra: dict[str, Any], message: str
) -> None:
    router = APIRouter(route_class=DirectPaidRoute)
    router.add_api_route("/ok", _direct_ok)  # the shape it takes
    with pytest.raises(RouterError, match=message):
        router.add_api_route("/x", endpoint, **extra)


async def test_the_ledger_names_the_route_template_with_every_prefix(
    settings: Settings, sessionmaker: Sessionmaker, seed: Seeder
) -> None:
    inner = APIRouter(prefix="/inner")

    @inner.get("/items/{item}")
    async def item(item: str, caller: PaidCaller, usage: Usage) -> dict[str, str]:
        usage.charge(2)
        return {"item": item}

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner)
    app = create_app(settings, routers=[outer])
    async with serving(app) as client:
        key = await keyed(seed)
        assert (await client.get("/outer/inner/items/7", headers=headers(key))).status_code == 200
        async with sessionmaker() as session:
            rows = (await session.exec(select(UsageEvent.route, UsageEvent.units))).all()
    assert [tuple(r) for r in rows] == [("/outer/inner/items/{item}", 2)]


async def test_example_routes_can_be_switched_off(settings: Settings, seed: Seeder) -> None:
    app = create_app(settings.model_copy(update={"example_routes": False}))
    async with serving(app) as client:
        key = await keyed(seed)
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 404
        assert "/v1/data" not in (await client.get("/openapi.json")).json()["paths"]


async def test_openapi_shows_plugin_paid_routes_with_the_key_scheme(words_app: FastAPI) -> None:
    async with serving(words_app) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["ApiKey"]["in"] == "header"
    for path, method in [("/t/words", "post"), ("/t/stream", "get"), ("/v1/data", "get")]:
        assert schema["paths"][path][method]["security"] == [{"ApiKey": []}], path
    words = schema["paths"]["/t/words"]["post"]
    assert "requestBody" in words
    # Usage and the caller are not parameters the client sends.
    assert "parameters" not in words or all(p["in"] != "query" for p in words.get("parameters", []))


def collides(path: str, method: str = "GET") -> APIRouter:
    router = APIRouter()

    async def endpoint(caller: PaidCaller) -> Caller:
        return caller

    router.add_api_route(path, endpoint, methods=[method])
    return router


@pytest.mark.parametrize(
    ("path", "method", "message"),
    [
        ("/healthz", "GET", "GET /healthz collides"),
        ("/v1/data", "GET", "GET /v1/data collides"),
        ("/v1/keys", "POST", "POST /v1/keys collides"),
        ("/v1/keys/{key_id}", "DELETE", "DELETE /v1/keys/{key_id} collides"),
        ("/v1/keys/mine", "DELETE", "DELETE /v1/keys/mine overlaps /v1/keys/{key_id}"),
        ("/v1/{anything}", "GET", "GET /v1/{anything} overlaps /v1/data"),
        ("/dashboard/assets/{file}", "GET", "overlaps /dashboard/assets/"),
    ],
)
def test_a_route_colliding_with_a_built_in_one_stops_the_start(
    settings: Settings, path: str, method: str, message: str
) -> None:
    with pytest.raises(RouterError, match=message):
        create_app(settings, routers=[collides(path, method)])


def test_routes_that_do_not_collide_are_served(settings: Settings) -> None:
    app = create_app(settings, routers=[collides("/v1/data", "POST"), collides("/v1/keys/x")])
    paths = {(c.path, m) for c in iter_route_contexts(app.routes) for m in c.methods or ()}
    assert {("/v1/data", "POST"), ("/v1/keys/x", "GET"), ("/v1/data", "GET")} <= paths


@pytest.fixture
def plugin_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An importable module of the test's own, with a router and a few things that are not."""
    import sys

    root = tmp_path_factory.mktemp("plugins")
    (root / "paidapi_plugin_probe.py").write_text(
        "from fastapi import APIRouter\n"
        "router = APIRouter()\n"
        "not_a_router = 42\n"
        "@router.get('/probe')\n"
        "async def probe() -> dict[str, bool]:\n"
        "    return {'ok': True}\n"
    )
    (root / "paidapi_plugin_broken.py").write_text("import no_such_module_anywhere\n")
    sys.path.insert(0, str(root))
    yield "paidapi_plugin_probe"
    sys.path.remove(str(root))
    for name in ("paidapi_plugin_probe", "paidapi_plugin_broken"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("paidapi_plugin_probe.router", "is not of the form"),
        ("paidapi_plugin_missing:router", "cannot import 'paidapi_plugin_missing:router'"),
        ("paidapi_plugin_broken:router", "No module named 'no_such_module_anywhere'"),
        ("paidapi_plugin_probe:nothing", "has no attribute 'nothing'"),
        ("paidapi_plugin_probe:not_a_router", "is a int, not a fastapi.APIRouter"),
    ],
)
def test_bad_router_names_stop_the_start(
    settings: Settings, plugin_module: str, spec: str, message: str
) -> None:
    with pytest.raises(RouterError, match=message) as raised:
        create_app(settings.model_copy(update={"routers": [spec]}))
    assert "\n" not in str(raised.value)


async def test_routers_named_in_settings_are_served(settings: Settings, plugin_module: str) -> None:
    app = create_app(settings.model_copy(update={"routers": [f"{plugin_module}:router"]}))
    async with serving(app) as client:
        assert (await client.get("/probe")).json() == {"ok": True}


async def test_an_existing_fastapi_project_mounted_under_meterapi(
    settings: Settings, seed: Seeder, db_url: str
) -> None:
    """docs/selling-your-api.md: the project's paid routers go into meterapi, the rest of the
    project is mounted behind it, and both lifespans run."""
    started: list[str] = []

    @asynccontextmanager
    async def project_lifespan(_app: FastAPI) -> AsyncIterator[None]:
        started.append("project")
        yield

    project = FastAPI(lifespan=project_lifespan)

    @project.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    paid = APIRouter()

    @paid.get("/v1/premium")
    async def premium(caller: PaidCaller, usage: Usage) -> dict[str, str]:
        usage.charge(4)
        return {"for": caller.customer_id}

    app = create_app(settings, routers=[paid])
    app.mount("/", project)  # after meterapi's routes: only what meterapi does not serve
    meterapi_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def both(app_: FastAPI) -> AsyncIterator[None]:
        async with meterapi_lifespan(app_), project.router.lifespan_context(project):
            yield

    app.router.lifespan_context = both
    async with serving(app) as client:
        key = await keyed(seed)
        assert (await client.get("/hello")).json() == {"hello": "world"}
        assert (await client.get("/v1/premium", headers=headers(key))).json() == {
            "for": "cus_words"
        }
        assert (await client.get("/healthz")).status_code == 200
        assert await ledger_total(db_url) == 4
    assert started == ["project"]
