"""``GET /v1/data``: the example paid resource."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from meterapi.api.deps import ApiKeyDep

router = APIRouter(prefix="/v1", tags=["data"])


class DataOut(BaseModel):
    object: str = "data"
    customer_id: str
    items: list[int]


@router.get(
    "/data",
    response_model=DataOut,
    summary="The example paid resource (costs 1 unit)",
    responses={
        400: {"description": "Key sent in the query string, or two different keys sent"},
        401: {"description": "Missing or invalid API key"},
        402: {"description": "The subscription does not allow access"},
    },
)
async def get_data(caller: ApiKeyDep) -> DataOut:
    return DataOut(customer_id=caller.stripe_customer_id, items=[1, 2, 3])
