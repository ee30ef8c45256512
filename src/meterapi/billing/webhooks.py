"""The webhook inbox: verify, store once by event id, handle once.

Failure strategy: a delivery whose handling raises a transient failure (Stripe 5xx, 429, a
timeout or connection error, a database error, anything unexpected) is answered with a 5xx, so
Stripe delivers it again (live mode retries for up to three days). A failure that Stripe's own
answer makes permanent (a 404 for the object the event names, or another refusal) would fail
the same way on every delivery: it is recorded (``failed_at``, ``last_error``, and left
unprocessed so that ``meterapi webhooks replay`` can try it again) and answered 2xx, so Stripe
stops re-delivering.

The handler runs inside a savepoint: its partial writes are rolled back, while the inbox row
stays, unprocessed, with ``attempts`` and ``last_error`` for operators. A later delivery of the
same event finds the row unprocessed, claims it with a conditional ``UPDATE … WHERE
processed_at IS NULL`` (one of several concurrent deliveries wins; the others see it processed)
and handles it again. We chose redelivery over a background retry loop because Stripe already
owns durable retries with backoff, and it keeps a single code path: every effect happens in the
request that acknowledges it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.billing.subscriptions import (
    object_id,
    provision_from_checkout,
    record_invoice,
    stripe_time,
    sync_subscription,
)
from meterapi.db import insert_or_ignore
from meterapi.errors import (
    DomainError,
    EventAlreadyProcessed,
    InvalidSignature,
    NotFound,
    StripeRejected,
)
from meterapi.models import StripeEvent, utcnow

log = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)


class Outcome(StrEnum):
    PROCESSED = "processed"  # handled: state may have changed
    IGNORED = "ignored"  # stored, but not about us (unknown type, another price)
    DUPLICATE = "duplicate"  # already processed: nothing done
    FAILED = "failed"  # handling raised: kept unprocessed, answer non-2xx so Stripe retries
    # Stripe answered that it cannot work (e.g. 404): kept unprocessed with failed_at, answer 2xx
    FAILED_PERMANENTLY = "failed_permanently"


@dataclass(frozen=True)
class Receipt:
    event_id: str
    outcome: Outcome
    status_code: int = 200


async def receive(
    session: AsyncSession,
    *,
    payload: bytes,
    signature: str | None,
    gateway: StripeGateway,
    price_id: str | None,
) -> Receipt:
    """Verify a delivery, store it in the inbox, and handle it unless it already was.

    Raises ``InvalidSignature`` (nothing stored) for a missing, bad or stale signature.
    """
    event = gateway.verify_event(payload, signature)
    try:
        event_id = str(event["id"])
        event_type = str(event["type"])
        created = stripe_time(event["created"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidSignature("The webhook body is not a Stripe event.") from exc
    if created is None:
        raise InvalidSignature("The webhook body is not a Stripe event.")
    if not await _take(
        session, event_id=event_id, event_type=event_type, created=created, payload=payload
    ):
        return Receipt(event_id, Outcome.DUPLICATE)
    return await _handle_taken(
        session, event=event, event_id=event_id, gateway=gateway, price_id=price_id
    )


async def _handle_taken(
    session: AsyncSession,
    *,
    event: dict[str, Any],
    event_id: str,
    gateway: StripeGateway,
    price_id: str | None,
) -> Receipt:
    """Handle an event this caller holds; a failure leaves it unprocessed, with its error."""
    try:
        async with session.begin_nested():
            handled = await handle(session, event=event, gateway=gateway, price_id=price_id)
    except Exception as exc:
        permanent = is_permanent(exc)
        # Type only: an exception's text may carry customer data.
        log.warning(
            "webhook %s (%s) failed%s: %s",
            event_id,
            event.get("type"),
            " permanently" if permanent else "",
            type(exc).__name__,
        )
        await _finish(session, event_id, error=_describe(exc), permanent=permanent)
        if permanent:
            return Receipt(event_id, Outcome.FAILED_PERMANENTLY)
        status = exc.status_code if isinstance(exc, DomainError) else 500
        return Receipt(event_id, Outcome.FAILED, status_code=max(status, 500))
    await _finish(session, event_id, error=None)
    return Receipt(event_id, Outcome.PROCESSED if handled else Outcome.IGNORED)


async def replay_unprocessed(
    session: AsyncSession, *, gateway: StripeGateway, price_id: str | None, limit: int = 100
) -> list[Receipt]:
    """Handle again the stored events whose handling failed (``meterapi webhooks replay``).

    For events Stripe stopped re-delivering. Their signatures were verified when they arrived.
    Rows are locked while handled, so a concurrent delivery of the same event waits.
    """
    stored = (
        await session.exec(
            select(StripeEvent)
            .where(col(StripeEvent.processed_at).is_(None))
            .order_by(col(StripeEvent.stripe_created_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    receipts = []
    for row in stored:
        row.attempts += 1
        event = json.loads(row.payload)
        receipts.append(
            await _handle_taken(
                session, event=event, event_id=row.id, gateway=gateway, price_id=price_id
            )
        )
    return receipts


async def list_failed(
    session: AsyncSession, *, limit: int, starting_after: str | None
) -> tuple[list[StripeEvent], bool]:
    """Stored events whose handling failed (unprocessed, with an error), by id; and has_more."""
    query = select(StripeEvent).where(
        col(StripeEvent.processed_at).is_(None), col(StripeEvent.last_error).is_not(None)
    )
    if starting_after is not None:
        query = query.where(col(StripeEvent.id) > starting_after)
    rows = list((await session.exec(query.order_by(col(StripeEvent.id)).limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def replay_one(
    session: AsyncSession, *, event_id: str, gateway: StripeGateway, price_id: str | None
) -> Receipt:
    """Handle one stored, unprocessed event again, through the same path as a delivery.

    ``NotFound`` if it was never stored, ``EventAlreadyProcessed`` if it was handled already.
    The row is locked while handled, so a concurrent delivery of the same event waits.
    """
    row = await session.get(StripeEvent, event_id, with_for_update=True)
    if row is None:
        raise NotFound("No such Stripe event.")
    if row.processed_at is not None:
        raise EventAlreadyProcessed()
    row.attempts += 1
    event = json.loads(row.payload)
    return await _handle_taken(
        session, event=event, event_id=row.id, gateway=gateway, price_id=price_id
    )


async def _take(
    session: AsyncSession, *, event_id: str, event_type: str, created: Any, payload: bytes
) -> bool:
    """Store the event; True if this delivery must handle it (new, or stored but unprocessed)."""
    values = {
        "id": event_id,
        "type": event_type[:100],
        "stripe_created_at": created,
        "payload": payload.decode("utf-8", errors="replace"),
        "received_at": utcnow(),
        "attempts": 1,
    }
    table = StripeEvent.__table__  # type: ignore[attr-defined]
    statement = insert_or_ignore(session, table, values, conflict=["id"]).returning(table.c.id)
    if (await session.exec(statement)).scalar_one_or_none() is not None:
        return True
    # Already stored. Handle again only if it was never processed; the row lock this UPDATE
    # takes makes concurrent re-deliveries wait, then match nothing once one has processed it.
    retry = await session.exec(
        update(StripeEvent)
        .where(col(StripeEvent.id) == event_id, col(StripeEvent.processed_at).is_(None))
        .values(attempts=StripeEvent.attempts + 1)
    )
    return retry.rowcount == 1


def is_permanent(exc: Exception) -> bool:
    """The event cannot be handled however often it is tried again: Stripe answered that what
    it names does not exist or refused the request, or a value in it cannot be read (a
    timestamp past what a datetime holds, say), or a field of its object has another JSON type
    than Stripe's (a string where an object or list belongs: the handler's lookups then fail
    with AttributeError, TypeError or KeyError, and would on every retry)."""
    return isinstance(
        exc, NotFound | StripeRejected | ValueError | TypeError | AttributeError | KeyError
    )


async def _finish(
    session: AsyncSession, event_id: str, *, error: str | None, permanent: bool = False
) -> None:
    values: dict[str, Any] = {"last_error": error, "failed_at": utcnow() if permanent else None}
    if error is None:
        values["processed_at"] = utcnow()
    await session.exec(update(StripeEvent).where(col(StripeEvent.id) == event_id).values(**values))


def _describe(exc: Exception) -> str:
    if isinstance(exc, DomainError):
        return f"{type(exc).__name__}: {exc.code}"[:1000]
    return type(exc).__name__[:1000]


async def handle(
    session: AsyncSession, *, event: dict[str, Any], gateway: StripeGateway, price_id: str | None
) -> bool:
    """Apply one event's effect; False when the event is not about us (ignored)."""
    event_type = event.get("type")
    version = stripe_time(event.get("created"))
    obj = (event.get("data") or {}).get("object") or {}
    assert version is not None
    if event_type == "checkout.session.completed":
        return await _checkout_completed(
            session, checkout_session=obj, version=version, gateway=gateway, price_id=price_id
        )
    if event_type in SUBSCRIPTION_EVENTS:
        customer = await sync_subscription(
            session, subscription=obj, version=version, price_id=price_id, gateway=gateway
        )
        return customer is not None
    if event_type in ("invoice.paid", "invoice.payment_failed"):
        customer = await record_invoice(
            session,
            invoice=obj,
            paid=event_type == "invoice.paid",
            at=version,
            price_id=price_id,
        )
        return customer is not None
    return False


async def _checkout_completed(
    session: AsyncSession,
    *,
    checkout_session: dict[str, Any],
    version: Any,
    gateway: StripeGateway,
    price_id: str | None,
) -> bool:
    if checkout_session.get("mode") != "subscription" or checkout_session.get("status") != (
        "complete"
    ):
        return False
    subscription = checkout_session.get("subscription")
    if not isinstance(subscription, dict):
        subscription_id = object_id(subscription)
        if subscription_id is None:
            return False
        # The event names the subscription only; its items tell whether it is on our price.
        subscription = await gateway.retrieve_subscription(subscription_id)
    customer = await provision_from_checkout(
        session,
        checkout_session=checkout_session,
        subscription=subscription,
        version=version,
        price_id=price_id,
    )
    return customer is not None
