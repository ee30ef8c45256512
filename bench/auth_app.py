"""meterapi with one more route: ``GET /bench/authenticated``, the paid API's key check and
answer without the metering, for the key validator's own figure (authenticated ÷ bare).

The route is a paid route like ``/v1/data`` (a ``DirectPaidRoute`` taking ``PaidCaller``: the key
from the header, the cache, the subscription check) that charges nothing, so nothing is written to
the ledger, and it answers the same body, matched right after ``/v1/data``. The difference from
``/v1/data`` in the same run is what durable metering costs; the difference from ``/healthz`` is
what the key check costs.

    uvicorn bench.auth_app:create_app --factory   # with the service's usual environment
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response

from meterapi import PaidCaller
from meterapi.api import data
from meterapi.api.data import DataOut
from meterapi.api.direct import DirectPaidRoute
from meterapi.cli.serve import create_served_app as create_service

PATH = "/bench/authenticated"


async def authenticated(caller: PaidCaller) -> Response:
    body = DataOut(customer_id=caller.customer_id, items=[1, 2, 3])
    return Response(body.model_dump_json(), media_type="application/json")


def create_app() -> FastAPI:
    app = create_service()
    router = APIRouter(route_class=DirectPaidRoute)
    router.add_api_route(PATH, authenticated, include_in_schema=False)
    app.include_router(router)
    # Matched right after /v1/data's router, as /v1/data is: FastAPI tries included routers in
    # order, and each one passed costs a few microseconds, which would blur the comparison.
    routes = app.router.routes
    added = routes.pop()
    position = next(
        i for i, r in enumerate(routes) if getattr(r, "original_router", None) is data.router
    )
    routes.insert(position + 1, added)
    return app
