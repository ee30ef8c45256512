"""Revealing a new customer's first key, once per completed Checkout Session."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.billing.subscriptions import object_id, provision_from_checkout, stripe_time
from meterapi.errors import AlreadyClaimed, CheckoutExpired, CheckoutIncomplete, NotFound
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import ApiKey, CheckoutSession, utcnow

FIRST_KEY_NAME = "default"


def claim_token(checkout_session_id: str, *, pepper: bytes) -> str:
    """The secret that proves a claim comes from the browser that started the checkout.

    Stateless: base64url(HMAC-SHA-256(pepper, "claim:" + session id)), so nothing is stored and
    a session id read from a URL or a log is not enough to claim its key.
    """
    mac = hmac.new(pepper, f"claim:{checkout_session_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def claim_token_matches(checkout_session_id: str, token: str | None, *, pepper: bytes) -> bool:
    """Compare in constant time; a missing token never matches."""
    expected = claim_token(checkout_session_id, pepper=pepper).encode("ascii")
    return hmac.compare_digest(expected, (token or "").encode("utf-8", "replace"))


async def claim_first_key(
    session: AsyncSession,
    *,
    checkout_session_id: str,
    claim_token: str | None,
    gateway: StripeGateway,
    price_id: str | None,
    policy: KeyPolicy,
) -> tuple[ApiKey, str]:
    """Issue the key of a completed Checkout Session; the plaintext is returned this once.

    If the webhook has not been processed yet, the session and its subscription are fetched
    from Stripe and provisioned through the same path the webhook uses. Raises ``NotFound``
    (unknown, not for our price, or a wrong or missing claim token: one answer),
    ``CheckoutIncomplete`` (open or expired) or ``AlreadyClaimed``.
    """
    if not claim_token_matches(checkout_session_id, claim_token, pepper=policy.pepper):
        raise NotFound("No such checkout session.")  # before any lookup: costs no Stripe call
    row = await session.get(CheckoutSession, checkout_session_id)
    if row is None:
        await _provision_from_stripe(
            session, checkout_session_id=checkout_session_id, gateway=gateway, price_id=price_id
        )
    # Exactly one of several concurrent claims changes the row: on PostgreSQL the others wait
    # for its row lock, then find claimed_at set; on SQLite writers are serialised.
    now = utcnow()
    result = await session.exec(
        update(CheckoutSession)
        .where(
            col(CheckoutSession.id) == checkout_session_id,
            col(CheckoutSession.claimed_at).is_(None),
        )
        .values(claimed_at=now)
        .returning(col(CheckoutSession.customer_id))
    )
    customer_id = result.scalar_one_or_none()
    if customer_id is None:
        raise AlreadyClaimed()
    return await key_service.issue(
        session, customer_id=int(customer_id), name=FIRST_KEY_NAME, policy=policy
    )


async def _provision_from_stripe(
    session: AsyncSession, *, checkout_session_id: str, gateway: StripeGateway, price_id: str | None
) -> None:
    found = await gateway.retrieve_checkout_session(checkout_session_id)
    if found.get("mode") != "subscription":
        raise NotFound("No such checkout session.")
    if found.get("status") == "expired":
        raise CheckoutExpired()
    if found.get("status") != "complete":
        raise CheckoutIncomplete()
    subscription: Any = found.get("subscription")
    if not isinstance(subscription, dict):
        subscription_id = object_id(subscription)
        if subscription_id is None:
            raise CheckoutIncomplete()
        subscription = await gateway.retrieve_subscription(subscription_id)
    # Versioned at the session's creation, before any event about its subscription: what we
    # fetched stands in until the webhooks (each newer) arrive and take over.
    version = stripe_time(found.get("created")) or utcnow()
    customer = await provision_from_checkout(
        session,
        checkout_session=found,
        subscription=subscription,
        version=version,
        price_id=price_id,
    )
    if customer is None:
        raise NotFound("No such checkout session.")
