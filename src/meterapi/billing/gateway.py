"""The one door to Stripe: the only module that imports ``stripe``.

Everything else asks this gateway and gets plain values (``billing.answers``) or ``DomainError``s
back, so the rest of the service never depends on the SDK's types, and the emulator or real
Stripe sit behind one URL.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import stripe

from meterapi.billing.answers import CheckoutLink, Delivery, MeterEventResult
from meterapi.billing.event_shape import NOT_AN_EVENT, is_event
from meterapi.billing.expiring import ExpiringSet
from meterapi.config import EMULATOR_KEY, Settings
from meterapi.errors import (
    BillingNotConfigured,
    InvalidSignature,
    NotFound,
    StripeRateLimited,
    StripeRejected,
    StripeUnavailable,
)

log = logging.getLogger(__name__)

PRICE_LOOKUP_KEY = "meterapi_metered_requests"
WEBHOOK_TOLERANCE_S = 300
# The emulator signs with this secret when the operator configured none.
EMULATOR_WEBHOOK_SECRET = "whsec_meterapi_emulator_development_only"  # noqa: S105 (public by design)


def _is_duplicate_identifier(exc: stripe.InvalidRequestError) -> bool:
    # Stripe refuses a repeated identifier with 400; the code is not documented, the message is.
    return exc.code == "duplicate_meter_event" or "already exists with identifier" in str(
        exc.user_message or exc
    )


UNKNOWN_SESSION_TTL_S = 60.0
# What a Stripe call the gateway does not translate may raise (a command line reports it in
# one line); named here so that no other module imports the SDK.
StripeCallError = stripe.StripeError


def _domain_error(exc: stripe.StripeError, what: str) -> Exception:
    """Map an SDK error to a ``DomainError`` whose message holds no request data or secret."""
    if isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404:
        return NotFound(f"No such {what}.")
    if exc.http_status == 409:  # a lock conflict on Stripe's side: worth trying again
        return StripeUnavailable()
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError | stripe.CardError):
        return StripeRejected(f"Stripe refused the {what} request ({exc.http_status}).")
    return StripeUnavailable()


def _reason(exc: stripe.StripeError) -> str:
    status = exc.http_status or "network"
    message = (exc.user_message or type(exc).__name__)[:300]
    return f"{type(exc).__name__} ({status}): {message}"


class StripeGateway:
    def __init__(self, settings: Settings) -> None:
        key = (
            settings.stripe_secret_key.get_secret_value()
            if settings.stripe_secret_key is not None
            else EMULATOR_KEY
        )
        self.settings = settings
        self._http = stripe.HTTPXClient(timeout=settings.stripe_timeout_s)
        base = settings.stripe_api_base
        self._client = stripe.StripeClient(
            key,
            http_client=self._http,
            base_addresses={"api": base, "meter_events": base},
            max_network_retries=2,
        )
        self._unknown_sessions = ExpiringSet(ttl_s=UNKNOWN_SESSION_TTL_S, max_size=10_000)
        self._meter_id: str | None = None
        self._prices: dict[str, tuple[Decimal, str]] = {}
        secret = settings.stripe_webhook_secret
        self.webhook_secret = (
            secret.get_secret_value() if secret is not None else EMULATOR_WEBHOOK_SECRET
        )

    def __repr__(self) -> str:
        return f"StripeGateway(api_base={self.settings.stripe_api_base!r})"

    def read_requests_per_second(self) -> float | None:
        """A pace for bulk reads that stays under Stripe's limit (25/s in test mode, 100/s in
        live mode, shared with everything else the account does); None for the emulator."""
        key = self.settings.stripe_secret_key
        if key is None:
            return None
        return 80.0 if "_live_" in key.get_secret_value() else 20.0

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # -- usage ------------------------------------------------------------------------------

    async def send_meter_event(
        self, *, identifier: str, stripe_customer_id: str, value: int, timestamp: datetime
    ) -> MeterEventResult:
        """Send one meter event once (the reporter owns retries and their backoff)."""
        params: dict[str, Any] = {
            "event_name": self.settings.stripe_meter_event_name,
            "identifier": identifier,
            "timestamp": int(timestamp.timestamp()),
            "payload": {"stripe_customer_id": stripe_customer_id, "value": str(value)},
        }
        try:
            await self._client.v1.billing.meter_events.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": identifier, "max_network_retries": 0},
            )
        except stripe.InvalidRequestError as exc:
            if _is_duplicate_identifier(exc):
                return MeterEventResult(Delivery.DUPLICATE)
            if exc.http_status == 409:
                return MeterEventResult(Delivery.RETRY, _reason(exc))
            return MeterEventResult(Delivery.REJECTED, _reason(exc))
        except stripe.IdempotencyError as exc:
            return MeterEventResult(Delivery.REJECTED, _reason(exc))
        except stripe.StripeError as exc:
            # APIError (5xx), RateLimitError (429), APIConnectionError (timeouts, resets), and
            # authentication trouble an operator can fix: all worth sending again later.
            return MeterEventResult(Delivery.RETRY, _reason(exc))
        return MeterEventResult(Delivery.ACCEPTED)

    async def find_meter_id(self) -> str:
        """The active meter of the configured event name (looked up once, then remembered)."""
        if self._meter_id is not None:
            return self._meter_id
        event_name = self.settings.stripe_meter_event_name
        try:
            meters = await self._client.v1.billing.meters.list_async(params={"limit": 100})
        except stripe.StripeError as exc:
            raise _domain_error(exc, "meter") from exc
        for meter in meters.data:
            if meter.event_name == event_name and meter.status == "active":
                self._meter_id = meter.id
                return meter.id
        raise BillingNotConfigured(
            f"No active Stripe meter has the event name {event_name!r}: run meterapi stripe setup."
        )

    async def meter_usage_total(
        self, *, meter_id: str, stripe_customer_id: str, start: datetime, end: datetime
    ) -> int:
        """Stripe's summed value for a customer over [start, end), every page of summaries read.

        The bounds are rounded outwards to whole minutes, as Stripe requires. One call per page,
        none retried here: ``StripeRateLimited`` on a 429 lets the caller back off and pace.
        """
        params: dict[str, Any] = {
            "customer": stripe_customer_id,
            "start_time": int(start.timestamp()) // 60 * 60,
            "end_time": -(-int(end.timestamp()) // 60) * 60,
            "limit": 100,
        }
        total = Decimal(0)
        while True:
            try:
                page = await self._client.v1.billing.meters.event_summaries.list_async(
                    meter_id,
                    params=params,  # type: ignore[arg-type]
                    options={"max_network_retries": 0},
                )
            except stripe.RateLimitError as exc:
                raise StripeRateLimited() from exc
            except stripe.StripeError as exc:
                raise _domain_error(exc, "meter event summary") from exc
            total += sum((Decimal(str(s.aggregated_value)) for s in page.data), Decimal(0))
            if not page.has_more or not page.data:
                return int(total)
            params["starting_after"] = page.data[-1].id

    async def unit_price(self, price_id: str) -> tuple[Decimal, str]:
        """The price's amount per unit (minor units, decimal) and currency, read once."""
        cached = self._prices.get(price_id)
        if cached is not None:
            return cached
        try:
            price = await self._client.v1.prices.retrieve_async(price_id)
        except stripe.StripeError as exc:
            raise _domain_error(exc, "price") from exc
        if price.unit_amount_decimal is not None:
            amount = Decimal(str(price.unit_amount_decimal))
        elif price.unit_amount is not None:
            amount = Decimal(price.unit_amount)
        else:  # tiered prices have no single unit amount
            raise StripeRejected("The price has no single unit amount (tiered pricing).")
        self._prices[price_id] = (amount, price.currency)
        return amount, price.currency

    async def upcoming_invoice(
        self, *, stripe_customer_id: str, subscription_id: str | None
    ) -> dict[str, Any]:
        """The invoice Stripe would issue next (``create_preview``), as a plain dict."""
        params: dict[str, Any] = {"customer": stripe_customer_id}
        if subscription_id:
            params["subscription"] = subscription_id
        try:
            invoice = await self._client.v1.invoices.create_preview_async(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise StripeUnavailable(_reason(exc)) from exc
        return invoice.to_dict()

    # -- checkout, subscriptions, portal -----------------------------------------------------

    async def create_checkout_session(
        self,
        *,
        price_id: str,
        success_url: str,
        cancel_url: str,
        customer_email: str | None = None,
        client_reference_id: str | None = None,
    ) -> CheckoutLink:
        """A hosted Checkout Session in subscription mode for one metered price (no quantity)."""
        params: dict[str, Any] = {
            "mode": "subscription",
            "line_items": [{"price": price_id}],
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if customer_email:
            params["customer_email"] = customer_email
        if client_reference_id:
            params["client_reference_id"] = client_reference_id
        try:
            created = await self._client.v1.checkout.sessions.create_async(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise _domain_error(exc, "checkout session") from exc
        if not created.url:
            raise StripeRejected("Stripe returned a Checkout Session without a URL.")
        return CheckoutLink(id=created.id, url=created.url)

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        """The Checkout Session with its subscription expanded, as a plain dict.

        An id Stripe answered 404 for is answered ``NotFound`` from memory for a minute, without
        asking again: guessed ids sent to the public claim route cost one Stripe call each.
        """
        if self._unknown_sessions.holds(session_id):
            raise NotFound("No such checkout session.")
        try:
            found = await self._client.v1.checkout.sessions.retrieve_async(
                session_id, params={"expand": ["subscription"]}
            )
        except stripe.StripeError as exc:
            error = _domain_error(exc, "checkout session")
            if isinstance(error, NotFound):
                self._unknown_sessions.add(session_id)
            raise error from exc
        return found.to_dict()

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        """The subscription as Stripe holds it now, as a plain dict."""
        try:
            found = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as exc:
            raise _domain_error(exc, "subscription") from exc
        return found.to_dict()

    async def create_portal_session(self, *, stripe_customer_id: str, return_url: str) -> str:
        """A customer-portal session for one customer; returns its URL."""
        try:
            portal = await self._client.v1.billing_portal.sessions.create_async(
                params={"customer": stripe_customer_id, "return_url": return_url}
            )
        except stripe.StripeError as exc:
            raise _domain_error(exc, "billing portal session") from exc
        return portal.url

    # -- webhooks ---------------------------------------------------------------------------

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Check ``Stripe-Signature`` over the raw body; return the event as a plain dict.

        Raises ``InvalidSignature`` for a missing or bad signature, and for a signed body that
        is not an event object (an array, a string, an object without id, type or created).
        """
        if not signature:
            raise InvalidSignature("The Stripe-Signature header is missing.")
        if not signature.isascii():
            raise InvalidSignature("The Stripe-Signature header does not verify.")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidSignature(NOT_AN_EVENT) from exc
        try:
            stripe.WebhookSignature.verify_header(
                text, signature, self.webhook_secret, tolerance=WEBHOOK_TOLERANCE_S
            )
        except (stripe.SignatureVerificationError, ValueError) as exc:
            raise InvalidSignature("The Stripe-Signature header does not verify.") from exc
        try:
            event = json.loads(text)
        except ValueError as exc:
            raise InvalidSignature(NOT_AN_EVENT) from exc
        if not is_event(event):
            raise InvalidSignature(NOT_AN_EVENT)
        return cast(dict[str, Any], event)

    # -- setup ------------------------------------------------------------------------------

    async def ensure_metered_price(
        self, *, unit_amount_decimal: str = "1", currency: str = "usd"
    ) -> tuple[str, str]:
        """Find or create the meter, product and metered price; return (meter id, price id)."""
        event_name = self.settings.stripe_meter_event_name
        meters = await self._client.v1.billing.meters.list_async(params={"limit": 100})
        meter = next(
            (m for m in meters.data if m.event_name == event_name and m.status == "active"), None
        )
        if meter is None:
            meter = await self._client.v1.billing.meters.create_async(
                params={
                    "display_name": "API requests",
                    "event_name": event_name,
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {
                        "type": "by_id",
                        "event_payload_key": "stripe_customer_id",
                    },
                    "value_settings": {"event_payload_key": "value"},
                }
            )
        prices = await self._client.v1.prices.list_async(
            params={"lookup_keys": [PRICE_LOOKUP_KEY], "active": True, "limit": 10}
        )
        price = next(
            (
                p
                for p in prices.data
                if p.lookup_key == PRICE_LOOKUP_KEY
                and p.recurring is not None
                and p.recurring.meter == meter.id
            ),
            None,
        )
        if price is None:
            product = await self._client.v1.products.create_async(
                params={"name": "API access", "metadata": {"managed_by": "meterapi"}}
            )
            price = await self._client.v1.prices.create_async(
                params={
                    "currency": currency,
                    "product": product.id,
                    "unit_amount_decimal": Decimal(unit_amount_decimal),
                    "lookup_key": PRICE_LOOKUP_KEY,
                    "recurring": {
                        "interval": "month",
                        "usage_type": "metered",
                        "meter": meter.id,
                    },
                }
            )
        return meter.id, price.id
