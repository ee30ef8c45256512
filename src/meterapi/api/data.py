"""``GET /v1/data``: the example paid resource, written as any paid route is (CONTRACT §6)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from meterapi.api.direct import DirectPaidRoute
from meterapi.api.paid import PaidCaller, Usage
from meterapi.api.responses import KEY_REFUSED, SUBSCRIPTION_INACTIVE, responses

# DirectPaidRoute: called without FastAPI's dependency machinery, which the endpoint does not
# need (api/direct.py); a plain APIRouter serves the same endpoint the ordinary way.
router = APIRouter(prefix="/v1", tags=["data"], route_class=DirectPaidRoute)


class DataOut(BaseModel):
    object: str = "data"
    customer_id: str
    items: list[int]


@router.get(
    "/data",
    response_model=DataOut,
    summary="The example paid resource (costs 1 unit)",
    responses=responses(
        KEY_REFUSED,
        SUBSCRIPTION_INACTIVE,
        {
            429: "Over the key's rate limit (rate_limited); not billed",
            503: "The call could not be recorded, so it was not served",
        },
    ),
)
async def get_data(caller: PaidCaller, usage: Usage) -> Response:
    usage.charge(1)
    body = DataOut(customer_id=caller.customer_id, items=[1, 2, 3])
    # Already JSON: FastAPI need not validate and encode it again.
    return Response(body.model_dump_json(), media_type="application/json")
