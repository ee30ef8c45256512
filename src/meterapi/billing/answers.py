"""What the Stripe gateway answers with: plain values, never the SDK's types."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Delivery(StrEnum):
    """What became of one meter event."""

    ACCEPTED = "accepted"  # Stripe answered 2xx
    DUPLICATE = "duplicate"  # Stripe already holds this identifier: the event counts once
    RETRY = "retry"  # 5xx, 429, timeout, connection or auth trouble: send the same event again
    REJECTED = "rejected"  # a validation error: sending it again cannot succeed


@dataclass(frozen=True)
class MeterEventResult:
    delivery: Delivery
    reason: str | None = None


@dataclass(frozen=True)
class CheckoutLink:
    """A new Checkout Session: its id and the hosted page to send the customer to."""

    id: str
    url: str
