"""The operator API's outbound webhooks (CONTRACT §8): the outbox, and retry of what it holds."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict

from meterapi.api.admin import Limit, StripeId, operator_router
from meterapi.api.deps import RuntimeDep, SessionDep
from meterapi.api.responses import Page, responses
from meterapi.db import commit_before_announcing
from meterapi.outbound import outbox

router = operator_router()

_EVENT_ID = r"^[A-Za-z0-9_]+$"
OutboundIdPath = Annotated[
    str, Path(min_length=1, max_length=255, pattern=_EVENT_ID, description="msg_…")
]


class OutboundEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from an outbox.OutboxEntry
    id: str  # the webhook-id, the same on every attempt
    type: str
    customer_id: str
    status: Literal["pending", "delivered", "failed", "gone"]
    attempts: int
    next_attempt_at: datetime | None  # only while pending
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class OutboundEventList(Page[OutboundEventOut]):
    pass


@router.get(
    "/webhooks/outbound",
    response_model=OutboundEventList,
    summary="Outbound webhook events, newest first (by default those not delivered)",
    description="`undelivered` is pending, failed or gone.",
    responses=responses({404: "starting_after names no event"}),
)
async def list_outbound(
    session: SessionDep,
    status: Annotated[
        Literal["undelivered", "pending", "delivered", "failed", "gone"], Query()
    ] = "undelivered",
    customer_id: Annotated[
        StripeId | None, Query(description="Only this customer's events (cus_…).")
    ] = None,
    limit: Limit = 20,
    starting_after: Annotated[
        str | None,
        Query(
            max_length=255, pattern=_EVENT_ID, description="The id the previous page ended with."
        ),
    ] = None,
) -> OutboundEventList:
    rows, has_more = await outbox.list_events(
        session,
        status=status,
        stripe_customer_id=customer_id,
        limit=limit,
        starting_after=starting_after,
    )
    return OutboundEventList(
        data=[OutboundEventOut.model_validate(e) for e in rows], has_more=has_more
    )


@router.post(
    "/webhooks/outbound/{event_id}/retry",
    response_model=OutboundEventOut,
    summary="Send an undelivered event again now, under the same webhook-id",
    responses=responses({404: "No such event", 409: "Delivered already (already_delivered)"}),
)
async def retry_outbound(
    event_id: OutboundIdPath, session: SessionDep, runtime: RuntimeDep
) -> OutboundEventOut:
    entry = await outbox.retry(session, event_id=event_id)
    await commit_before_announcing(session)
    runtime.outbound.wake()
    return OutboundEventOut.model_validate(entry)
