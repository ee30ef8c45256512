"""meterapi with one more route: ``GET /bench/authenticated``, the paid API's key check and
answer without the metering, for the key validator's own figure (authenticated ÷ bare).

The route is written the way any route of the service that needs a paying caller is: with the
``ApiKeyDep`` dependency (``require_api_key``: key from the header, cache, subscription check),
answering the same body as ``/v1/data``. Only the ledger write is missing, so the difference from
``/v1/data`` in the same run is what durable metering costs, and the difference from ``/healthz``
is what the key check costs.

    uvicorn bench.auth_app:create_app --factory   # with the service's usual environment
"""

from __future__ import annotations

from fastapi import FastAPI, Response

from meterapi.api.data import DataOut
from meterapi.api.deps import ApiKeyDep
from meterapi.app import create_app as create_service

PATH = "/bench/authenticated"


def create_app() -> FastAPI:
    app = create_service()

    @app.get(PATH, include_in_schema=False)
    async def authenticated(caller: ApiKeyDep) -> Response:
        body = DataOut(customer_id=caller.stripe_customer_id, items=[1, 2, 3])
        return Response(body.model_dump_json(), media_type="application/json")

    return app
