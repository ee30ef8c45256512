"""``POST /webhooks/stripe``: Stripe's events, verified over the raw body and handled once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from meterapi.api.deps import GatewayDep, PriceIdDep, RuntimeDep, SessionDep
from meterapi.api.errors import error_response
from meterapi.billing import webhooks

router = APIRouter(tags=["billing"])


@router.post(
    "/webhooks/stripe",
    summary="Stripe webhooks: signature checked, each event handled once",
    responses={
        200: {
            "description": "Processed, ignored (not about us), a duplicate, or failed "
            "permanently (Stripe does not know what it names; kept for the operator)"
        },
        400: {"description": "Bad or stale Stripe-Signature, or not an event: nothing stored"},
        500: {"description": "Handling failed for now; the event is kept, Stripe re-delivers"},
    },
)
async def receive_stripe_event(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    runtime: RuntimeDep,
    price_id: PriceIdDep,
    stripe_signature: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> JSONResponse:
    receipt = await webhooks.receive(
        session,
        payload=await request.body(),
        signature=stripe_signature,
        gateway=gateway,
        price_id=price_id,
    )
    runtime.metrics.webhook_events.inc(outcome=receipt.outcome.value)
    if receipt.outcome is webhooks.Outcome.FAILED:
        # The failure is recorded in the inbox and committed; a non-2xx makes Stripe retry.
        return error_response(
            receipt.status_code,
            "webhook_handling_failed",
            "The event could not be handled now; it will be retried.",
        )
    return JSONResponse({"received": True, "outcome": receipt.outcome.value})
