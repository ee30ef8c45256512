"""Starting a subscription: a hosted Checkout Session, and the customer portal afterwards."""

from __future__ import annotations

from meterapi.billing.answers import CheckoutLink
from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.errors import BillingNotConfigured
from meterapi.models import Customer


def dashboard_url(settings: Settings) -> str:
    return f"{settings.public_url}/dashboard"


async def start_checkout(
    gateway: StripeGateway,
    *,
    settings: Settings,
    email: str | None = None,
    client_reference_id: str | None = None,
) -> CheckoutLink:
    """A Checkout Session in subscription mode on the configured metered price."""
    if not settings.stripe_price_id:
        raise BillingNotConfigured()
    return await gateway.create_checkout_session(
        price_id=settings.stripe_price_id,
        # Stripe substitutes the literal {CHECKOUT_SESSION_ID} when it redirects.
        success_url=f"{dashboard_url(settings)}?session_id={{CHECKOUT_SESSION_ID}}",
        # The dashboard says the checkout was cancelled (and forgets its claim token).
        cancel_url=f"{dashboard_url(settings)}?checkout=cancelled",
        customer_email=email,
        client_reference_id=client_reference_id,
    )


async def open_portal(gateway: StripeGateway, *, settings: Settings, customer: Customer) -> str:
    """A customer-portal session URL for this customer only; it returns to the dashboard."""
    return await gateway.create_portal_session(
        stripe_customer_id=customer.stripe_customer_id, return_url=dashboard_url(settings)
    )
