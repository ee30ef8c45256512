"""Subscribing and managing billing: Checkout and the Stripe customer portal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from meterapi.api.bodies import RequestBody
from meterapi.api.deps import (
    CustomerDep,
    GatewayDep,
    KeyPolicyDep,
    PublicRateLimitDep,
    SessionDep,
    SettingsDep,
)
from meterapi.api.responses import KEY_INVALID, KEY_ROTATED, STRIPE_FAILED, responses
from meterapi.billing import checkout
from meterapi.billing.claim import claim_token
from meterapi.db import release_before_waiting
from meterapi.errors import NotFound
from meterapi.models import Customer

router = APIRouter(prefix="/v1", tags=["billing"])


class CheckoutCreate(RequestBody):
    email: str | None = Field(
        default=None,
        max_length=320,
        # Explicit ranges, not \s: JSON Schema's regex dialect and ours disagree on \s.
        pattern=r"^[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+\.[^@\x00-\x20\x7f]+$",
        description="Prefills Checkout's email field.",
    )
    client_reference_id: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="Your own reference, kept on the Checkout Session.",
    )


class CheckoutOut(BaseModel):
    id: str = Field(description="The Checkout Session id (cs_…); claim the key with it.")
    url: str = Field(description="Stripe's hosted Checkout page; send the customer there.")
    claim_token: str = Field(
        description="A secret for the buyer's browser: POST /v1/keys/claim needs it with the id."
    )


class PortalOut(BaseModel):
    url: str = Field(description="A Stripe customer-portal session for your own customer.")


@router.post(
    "/checkout",
    status_code=201,
    response_model=CheckoutOut,
    summary="Start a subscription: a Stripe Checkout Session for the metered price",
    responses=responses({429: "Too many from this address (rate_limited)"}, STRIPE_FAILED),
    dependencies=[PublicRateLimitDep],
)
async def create_checkout(
    gateway: GatewayDep,
    settings: SettingsDep,
    policy: KeyPolicyDep,
    body: Annotated[CheckoutCreate | None, Body()] = None,
) -> CheckoutOut:
    body = body or CheckoutCreate()
    link = await checkout.start_checkout(
        gateway,
        settings=settings,
        email=body.email,
        client_reference_id=body.client_reference_id,
    )
    token = claim_token(link.id, pepper=policy.pepper)
    return CheckoutOut(id=link.id, url=link.url, claim_token=token)


@router.post(
    "/billing/portal",
    status_code=201,
    response_model=PortalOut,
    summary="Open the Stripe customer portal for the caller's own customer",
    responses=responses(KEY_INVALID, KEY_ROTATED, STRIPE_FAILED),
)
async def create_portal(
    caller: CustomerDep, session: SessionDep, gateway: GatewayDep, settings: SettingsDep
) -> PortalOut:
    customer = await session.get(Customer, caller.customer_id)
    if customer is None:
        raise NotFound()
    await release_before_waiting(session)  # before Stripe is asked
    url = await checkout.open_portal(gateway, settings=settings, customer=customer)
    return PortalOut(url=url)
