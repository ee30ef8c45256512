"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from meterapi.api.deps import RuntimeDep
from meterapi.api.errors import error_response
from meterapi.metering.reports import pending_stats
from meterapi.metrics import CONTENT_TYPE
from meterapi.models import utcnow

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness: 200 while the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: 200 when the database answers, 503 otherwise",
    responses={503: {"description": "The database does not answer"}},
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with runtime.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__)
        return error_response(503, "database_unavailable", "The database does not answer.")
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    summary="Prometheus metrics: pending usage, report outcomes, auth outcomes, latency",
    response_class=PlainTextResponse,
)
async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    m = runtime.metrics
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), runtime.sessionmaker() as session:
            units, age, parked = await pending_stats(session, now=utcnow())
        m.pending_units.value, m.oldest_unreported_age.value = units, age
        m.parked_reports.value = parked
    except Exception as exc:  # still serve the in-process figures
        log.warning("usage figures for /metrics unavailable: %s", type(exc).__name__)
    return PlainTextResponse(m.registry.render(), media_type=CONTENT_TYPE)
