"""``create_app(settings)``: the FastAPI application and its lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from meterapi import __version__
from meterapi.api import billing, claim, data, keys, ops, usage, webhooks
from meterapi.api.errors import UnhandledErrors, install_error_handlers
from meterapi.api.limits import BodySizeLimit
from meterapi.api.timing import RequestTiming
from meterapi.config import Settings
from meterapi.dashboard import router as dashboard_router
from meterapi.runtime import Runtime

# How many more container objects may be allocated than freed before the youngest generation is
# collected (Python's default is 700). A paid request holds its objects while it waits for the
# ledger's commit, and with 700 the requests in flight alone set off 10-13 young collections a
# second at 1,700 req/s, with an older one every second and a full one now and then; at 10,000,
# none in 15 s (README, Performance). A young collection's cost follows the objects alive, not
# this number; the few reference cycles the service makes are still collected, only later.
YOUNG_GC_THRESHOLD = 10_000


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Settings are read from the environment only when none are given."""
    settings = settings or Settings()
    runtime = Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        # Everything alive now (modules, the app, pools, caches) lives as long as the process:
        # keep it out of the collector's full passes. Without this, under load each full
        # collection walked ~130,000 objects for tens of milliseconds, about once a second on
        # the metered path, and showed up as p99 latency and lost throughput (README, Performance).
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_GC_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()  # what this app pinned can be collected again once it is gone
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
    app.include_router(ops.router)
    app.include_router(data.router)  # the paid route first: matched on every paid request
    # The claim route before the keys router: /v1/keys/claim is not a key id.
    app.include_router(claim.router)
    app.include_router(keys.router)
    app.include_router(usage.router)
    app.include_router(billing.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard_router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTiming, histogram=runtime.metrics.request_latency)
    app.add_middleware(UnhandledErrors)
    if settings.trusted_proxies:
        # Outermost: every layer (limits, logs) sees the client the trusted proxy names.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
