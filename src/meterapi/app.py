"""``create_app(settings)``: the FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from meterapi import __version__
from meterapi.api import (
    admin,
    admin_ops,
    admin_outbound,
    billing,
    claim,
    customer_limits,
    data,
    keys,
    ops,
    usage,
    webhooks,
)
from meterapi.api.direct import check_direct_routes
from meterapi.api.errors import UnhandledErrors, install_error_handlers
from meterapi.api.limits import BodySizeLimit
from meterapi.api.paid import UsageRecording
from meterapi.api.plugins import check_routers, load_routers
from meterapi.api.timing import RequestTiming
from meterapi.config import Settings
from meterapi.dashboard import admin_router
from meterapi.dashboard import router as dashboard_router
from meterapi.gateway import Gateway
from meterapi.runtime import Runtime


def create_app(settings: Settings | None = None, *, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """Build the service. Settings are read from the environment only when none are given.

    ``routers`` are served after meterapi's own routes, with those of ``settings.routers``
    (``METERAPI_ROUTERS``); a route that collides with one already served raises ``RouterError``.
    """
    settings = settings or Settings()
    plugins = load_routers(settings.routers)  # before any work: a bad name stops the start
    runtime = Runtime.build(settings)
    gateway = Gateway.from_settings(settings)  # checks the gateway file before anything runs

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        check_direct_routes(app_)
        await runtime.start()
        if gateway is not None:
            await gateway.start()
        try:
            yield
        finally:
            try:
                if gateway is not None:
                    await gateway.close()
            finally:
                await runtime.close()

    app = FastAPI(
        title="meterapi",
        version=__version__,
        summary="A usage-billed API, metered into Stripe Billing Meters.",
        lifespan=lifespan,
        docs_url=None,  # /docs is served by the dashboard room, with Swagger UI from this host
        # Starlette's trailing-slash redirect builds an absolute URL from the Host header, which
        # anyone can set: no redirects to elsewhere (the dashboard serves both spellings).
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    paid = [data.router] if settings.example_routes else []
    # The claim route before the keys router: /v1/keys/claim is not a key id.
    free = [
        claim.router,
        keys.router,
        usage.router,
        customer_limits.router,
        billing.router,
        webhooks.router,
    ]
    free.append(dashboard_router)
    if settings.admin_token is not None:
        # Without a token nothing under /admin exists: every path there is a plain 404.
        free.extend([admin.router, admin_ops.router, admin_outbound.router, admin_router])
    given = [(f"create_app(routers=[...])[{i}]", router) for i, router in enumerate(routers)]
    plugins = [*given, *plugins]
    built_in = [
        *app.router.routes,
        *(r for router in [ops.router, *paid, *free] for r in router.routes),
    ]
    check_routers(built_in, plugins)  # so no order between them can change what answers
    # Paid routes first: FastAPI tries included routers in order, each passed costs time.
    for router in [ops.router, *paid, *(router for _, router in plugins), *free]:
        app.include_router(router)
    if gateway is not None:
        gateway.mount(app)  # after the built-in routes, which it may not shadow
    check_direct_routes(app)  # and again at start, for routes added to the app since
    # Innermost: it sees the response the route produced, and the layers above see its 503.
    app.add_middleware(
        UsageRecording,
        recorder=runtime.recorder,
        recorded=runtime.metrics.units_recorded,
        on_recorded=runtime.spend.record,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTiming, histogram=runtime.metrics.request_latency)
    app.add_middleware(UnhandledErrors)
    if settings.trusted_proxies:
        # Outermost: every layer (limits, logs) sees the client the trusted proxy names.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
