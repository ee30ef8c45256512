"""Domain errors: each carries its HTTP status and the stable code of CONTRACT §3.

An error is declared with its status and code as class keywords, its message in the body::

    class NotFound(DomainError, status=404, code="not_found"):
        message = "Not found."

A subclass that names neither keeps its parent's status and code.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status_code = 400
    code = "bad_request"
    message = "The request cannot be processed."
    headers: dict[str, str] | None = None

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status_code = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str | None = None) -> None:
        self.message = message or type(self).message
        super().__init__(self.message)


_API_KEY_CHALLENGE = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}


class MissingApiKey(DomainError, status=401, code="missing_api_key"):
    message = "Send your API key in the X-API-Key header."
    headers = _API_KEY_CHALLENGE


class InvalidApiKey(DomainError, status=401, code="invalid_api_key"):
    message = "The API key is not valid."
    headers = _API_KEY_CHALLENGE


class ApiKeyInQuery(DomainError, status=400, code="api_key_in_query"):
    message = "API keys must not be sent in the query string; use the X-API-Key header."


class AmbiguousApiKey(DomainError, status=400, code="ambiguous_api_key"):
    message = "The request carries two different API keys; send one."


class KeyRotated(DomainError, status=403, code="key_rotated"):
    message = (
        "This key was rotated: until its grace period ends it may call the API and read, "
        "nothing else. Use its replacement."
    )


class SubscriptionInactive(DomainError, status=402, code="subscription_inactive"):
    message = "The subscription does not allow access; update your billing details."


class RateLimited(DomainError, status=429, code="rate_limited"):
    message = "Too many requests."


class SpendCapReached(DomainError, status=402, code="spend_cap_reached"):
    message = "The monthly spend cap is reached; raise it or wait for the next billing period."


class ValidationFailed(DomainError, status=422, code="validation_error"):
    message = "The request is malformed."


class NotFound(DomainError, status=404, code="not_found"):
    message = "Not found."


class PayloadTooLarge(DomainError, status=413, code="payload_too_large"):
    message = "The request body is too large."


class CheckoutIncomplete(DomainError, status=402, code="checkout_incomplete"):
    message = "The Checkout Session is not complete."


class CheckoutExpired(CheckoutIncomplete):
    """Same code and status as an open session (CONTRACT §3); the message tells the buyer."""

    message = "The Checkout Session expired before it was paid; start a new checkout."


class AlreadyClaimed(DomainError, status=409, code="already_claimed"):
    message = "The key for this Checkout Session was already claimed."


class LastActiveKey(DomainError, status=409, code="last_active_key"):
    message = "This is your only active key; rotate it instead (grace_seconds: 0)."


class InvalidSignature(DomainError, status=400, code="invalid_signature"):
    message = "The Stripe-Signature header is missing, invalid or stale."


class StripeUnavailable(DomainError, status=503, code="stripe_unavailable"):
    message = "Stripe could not be reached; try again shortly."


class UsageNotRecorded(DomainError, status=503, code="usage_unavailable"):
    message = "The request could not be recorded; it was not billed. Try again."


class BillingNotConfigured(DomainError, status=503, code="billing_not_configured"):
    message = "Subscriptions are not available: set METERAPI_STRIPE_PRICE_ID."


class StripeRejected(DomainError, status=502, code="stripe_error"):
    message = "Stripe refused the request."


class UpstreamUnavailable(DomainError, status=502, code="upstream_unavailable"):
    message = "The upstream API could not be reached; the call was not billed."


class UpstreamTimeout(DomainError, status=504, code="upstream_timeout"):
    message = "The upstream API did not answer in time; the call was not billed."


class InvalidAdminToken(DomainError, status=401, code="invalid_admin_token"):
    message = "Send the operator token as Authorization: Bearer <METERAPI_ADMIN_TOKEN>."
    headers = {"WWW-Authenticate": 'Bearer realm="admin"'}


class ReportNotParked(DomainError, status=409, code="report_not_parked"):
    message = "Only a parked usage report can be retried; this one is pending or sent."


class EventAlreadyProcessed(DomainError, status=409, code="event_already_processed"):
    message = "This Stripe event was processed already; replaying it would change nothing."


class StripeRateLimited(StripeUnavailable, code="stripe_rate_limited"):
    message = "Stripe is rate limiting this account's requests; try again shortly."


class AlreadyDelivered(DomainError, status=409, code="already_delivered"):
    message = "This outbound event was already delivered."
