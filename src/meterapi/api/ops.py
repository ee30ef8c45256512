"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from meterapi.api.deps import RuntimeDep
from meterapi.api.errors import error_response

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
