"""``POST /v1/keys/claim``: the first key of a completed Checkout, revealed exactly once."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from meterapi.api.bodies import RequestBody
from meterapi.api.deps import (
    GatewayDep,
    KeyPolicyDep,
    PriceIdDep,
    PublicRateLimitDep,
    SessionDep,
)
from meterapi.api.keys import KeyCreated
from meterapi.api.responses import responses
from meterapi.billing.claim import claim_first_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyClaim(RequestBody):
    # Stripe ids are letters, digits and underscores; anything else cannot name a session.
    checkout_session_id: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_]+$",
        description="The Checkout Session id (cs_…).",
    )
    claim_token: str | None = Field(
        default=None,
        max_length=200,
        description="The claim_token that POST /v1/checkout returned with this session.",
    )


@router.post(
    "/claim",
    status_code=201,
    response_model=KeyCreated,
    summary="Reveal the first API key of a completed Checkout Session (once only)",
    responses=responses(
        {
            402: "The Checkout Session is open or expired (checkout_incomplete)",
            404: "No such Checkout Session for this service, or a wrong claim token",
            409: "This session's key was already claimed (already_claimed)",
            429: "Too many claims from this address (rate_limited)",
            503: "Stripe could not be reached to check the session",
        }
    ),
    dependencies=[PublicRateLimitDep],
)
async def claim_key(
    body: KeyClaim,
    session: SessionDep,
    gateway: GatewayDep,
    policy: KeyPolicyDep,
    price_id: PriceIdDep,
) -> KeyCreated:
    key, plaintext = await claim_first_key(
        session,
        checkout_session_id=body.checkout_session_id,
        claim_token=body.claim_token,
        gateway=gateway,
        price_id=price_id,
        policy=policy,
    )
    return KeyCreated.of(key, plaintext)
