"""``GET /v1/data``: the example paid resource."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from meterapi.api.metering import MeteredRoute, cost, paying_caller

router = APIRouter(prefix="/v1", tags=["data"], route_class=MeteredRoute)


class DataOut(BaseModel):
    object: str = "data"
    customer_id: str
    items: list[int]


@router.get(
    "/data",
    response_model=DataOut,
    summary="The example paid resource (costs 1 unit)",
    openapi_extra=cost(1),
    responses={
        400: {"description": "Key sent in the query string, or two different keys sent"},
        401: {"description": "Missing or invalid API key"},
        402: {"description": "The subscription does not allow access"},
        503: {"description": "The call could not be recorded, so it was not served"},
    },
)
async def get_data(request: Request) -> Response:
    caller = paying_caller(request)
    body = DataOut(customer_id=caller.stripe_customer_id, items=[1, 2, 3])
    # Already JSON: FastAPI need not validate and encode it again on the hottest path.
    return Response(body.model_dump_json(), media_type="application/json")
