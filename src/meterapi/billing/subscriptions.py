"""A customer's subscription state, kept equal to Stripe's latest whatever order news arrives in.

Rules, so that any order and any repetition of Stripe's events ends in the same state:

- A subscription snapshot (from an event, or fetched) carries a *version*: the Stripe ``created``
  time of the event that brought it. A snapshot older than the stored version is ignored; a newer
  one replaces the stored state. Two snapshots with the same version (Stripe's clock has whole
  seconds) cannot be ordered, so the second one fetches the subscription from Stripe instead.
- ``past_due_since`` is derived from a set of signals (``SubscriptionSignal``), not folded into
  one column: the earliest bad signal (failed payment, ``past_due`` snapshot) at or after the
  latest good one (``active``/``trialing`` snapshot, paid invoice). A set is order-independent.
- Provisioning from Checkout (webhook or key claim) goes through ``provision_from_checkout``,
  which is idempotent: it upserts the customer and records the Checkout Session once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.access import access_changed, announce_access
from meterapi.billing.gateway import StripeGateway
from meterapi.db import insert_or_ignore
from meterapi.errors import CheckoutIncomplete
from meterapi.models import (
    CheckoutSession,
    Customer,
    SubscriptionSignal,
    SubscriptionStatus,
    utcnow,
)
from meterapi.outbound import outbox

GOOD_STANDING = {SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING}
ENDED = {SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED}


def stripe_time(value: Any) -> datetime | None:
    """A Stripe unix timestamp as an aware UTC datetime; ``ValueError`` if it is not one."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError) as exc:  # past what a datetime holds
        raise ValueError("timestamp out of range") from exc


def object_id(value: Any) -> str | None:
    """The id of a field that is either an id string or an expanded object."""
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


def _price_id(item: dict[str, Any]) -> str | None:
    price = item.get("price") or (item.get("plan") or None)
    return object_id(price)


def our_item(subscription: dict[str, Any], price_id: str | None) -> dict[str, Any] | None:
    """The subscription's item on our price, or None when the subscription is not ours.

    With no price configured (development against the emulator), any first item is ours.
    """
    items = (subscription.get("items") or {}).get("data") or []
    for item in items:
        if price_id is None or _price_id(item) == price_id:
            return dict(item)
    return None


def invoice_subscription_id(invoice: dict[str, Any]) -> str | None:
    """Since API 2025-03-31 the subscription is at ``parent.subscription_details.subscription``."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return object_id(details.get("subscription")) or object_id(invoice.get("subscription"))


def invoice_may_be_ours(invoice: dict[str, Any], price_id: str | None) -> bool:
    """False only when the invoice's lines show prices and none of them is ours."""
    lines = (invoice.get("lines") or {}).get("data") or []
    prices = [
        object_id(((line.get("pricing") or {}).get("price_details") or {}).get("price"))
        or object_id(line.get("price"))
        for line in lines
    ]
    known = [p for p in prices if p]
    return price_id is None or not known or price_id in known


async def record_signal(
    session: AsyncSession, *, subscription_id: str, at: datetime, good: bool
) -> None:
    values = {"subscription_id": subscription_id, "at": at, "good": good}
    table = SubscriptionSignal.__table__  # type: ignore[attr-defined]
    await session.exec(
        insert_or_ignore(session, table, values, conflict=["subscription_id", "at", "good"])
    )


async def _past_due_since(session: AsyncSession, subscription_id: str) -> datetime | None:
    latest_good = (
        await session.exec(
            select(func.max(SubscriptionSignal.at)).where(
                SubscriptionSignal.subscription_id == subscription_id,
                col(SubscriptionSignal.good).is_(True),
            )
        )
    ).one()
    query = select(func.min(SubscriptionSignal.at)).where(
        SubscriptionSignal.subscription_id == subscription_id,
        col(SubscriptionSignal.good).is_(False),
    )
    if latest_good is not None:
        query = query.where(col(SubscriptionSignal.at) >= latest_good)
    return (await session.exec(query)).one()


async def _lock_customer(session: AsyncSession, *, stripe_customer_id: str) -> Customer:
    """The customer row for a Stripe customer, created if new, locked for this transaction."""
    now = utcnow()
    values = {
        "stripe_customer_id": stripe_customer_id,
        "cancel_at_period_end": False,
        "created_at": now,
        "updated_at": now,
    }
    table = Customer.__table__  # type: ignore[attr-defined]
    await session.exec(insert_or_ignore(session, table, values, conflict=["stripe_customer_id"]))
    query = (
        select(Customer)
        .where(Customer.stripe_customer_id == stripe_customer_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.exec(query)).one()


async def customer_for_subscription(
    session: AsyncSession, *, subscription_id: str, lock: bool = False
) -> Customer | None:
    query = select(Customer).where(Customer.subscription_id == subscription_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return (await session.exec(query)).first()


def _signal_of(status: str) -> bool | None:
    if status in GOOD_STANDING:
        return True
    if status == SubscriptionStatus.PAST_DUE:
        return False
    return None


def _adopts(customer: Customer, subscription_id: str, status: str) -> bool:
    """Whether a snapshot of ``subscription_id`` may describe this customer's subscription."""
    if customer.subscription_id in (None, subscription_id):
        return True
    # A customer subscribed again: follow the new subscription once the old one has ended,
    # and never let the end of an old one overwrite a live one.
    if customer.subscription_status in ENDED:
        return True
    return status not in ENDED


async def _refresh_standing(session: AsyncSession, customer: Customer) -> None:
    assert customer.subscription_id is not None
    customer.past_due_since = await _past_due_since(session, customer.subscription_id)


async def sync_subscription(
    session: AsyncSession,
    *,
    subscription: dict[str, Any],
    version: datetime,
    price_id: str | None,
    gateway: StripeGateway | None = None,
) -> Customer | None:
    """Apply a subscription snapshot known as of ``version``; None if not on our price.

    Returns the customer, created if this is the first news about it.
    """
    item = our_item(subscription, price_id)
    if item is None:
        return None
    subscription_id = str(subscription["id"])
    stripe_customer_id = object_id(subscription.get("customer"))
    if stripe_customer_id is None:
        return None
    customer = await _lock_customer(session, stripe_customer_id=stripe_customer_id)
    status = str(subscription.get("status"))
    if not _adopts(customer, subscription_id, status):
        return customer
    if customer.subscription_id != subscription_id:
        customer.subscription_synced_at = None  # a new subscription: no older news about it

    stored = customer.subscription_synced_at
    if stored is not None and version < stored:
        await _record_standing(session, subscription_id, status, version)
        await _after_change(session, customer, before=_access_of(customer))
        return customer
    if stored is not None and version == stored and gateway is not None:
        # Same second as what we hold: the payloads cannot be ordered, Stripe's current one can.
        subscription = await gateway.retrieve_subscription(subscription_id)
        item = our_item(subscription, price_id) or item
        status = str(subscription.get("status"))

    before = _access_of(customer)
    await _record_standing(session, subscription_id, status, version)
    customer.subscription_id = subscription_id
    customer.subscription_item_id = str(item["id"])
    customer.subscription_status = status
    customer.current_period_start = stripe_time(
        item.get("current_period_start") or subscription.get("current_period_start")
    )
    customer.current_period_end = stripe_time(
        item.get("current_period_end") or subscription.get("current_period_end")
    )
    # In flexible billing mode a cancellation at period end shows as `cancel_at`.
    customer.cancel_at_period_end = bool(subscription.get("cancel_at_period_end")) or (
        subscription.get("cancel_at") is not None and status not in ENDED
    )
    customer.subscription_synced_at = version
    await _after_change(session, customer, before=before)
    return customer


async def _record_standing(
    session: AsyncSession, subscription_id: str, status: str, at: datetime
) -> None:
    good = _signal_of(status)
    if good is not None:
        await record_signal(session, subscription_id=subscription_id, at=at, good=good)


def _access_of(customer: Customer) -> tuple[Any, ...]:
    return (customer.subscription_id, customer.subscription_status, customer.past_due_since)


async def _after_change(
    session: AsyncSession, customer: Customer, *, before: tuple[Any, ...]
) -> None:
    if customer.subscription_id is not None:
        await _refresh_standing(session, customer)
    customer.updated_at = utcnow()
    session.add(customer)
    await session.flush()
    if _access_of(customer) != before:
        assert customer.id is not None
        await access_changed(session, customer_id=customer.id)
        await announce_access(session, customer=customer, before_status=before[1])


async def record_invoice(
    session: AsyncSession,
    *,
    invoice: dict[str, Any],
    paid: bool,
    at: datetime,
    price_id: str | None,
) -> Customer | None:
    """A paid (good) or failed (bad) invoice; moves ``past_due_since``. None if not ours."""
    subscription_id = invoice_subscription_id(invoice)
    if subscription_id is None or not invoice_may_be_ours(invoice, price_id):
        return None
    # Recorded even before the subscription is known here: the customer may be provisioned later.
    await record_signal(session, subscription_id=subscription_id, at=at, good=paid)
    customer = await customer_for_subscription(session, subscription_id=subscription_id, lock=True)
    if customer is None:
        return None
    await _after_change(session, customer, before=_access_of(customer))
    return customer


async def provision_from_checkout(
    session: AsyncSession,
    *,
    checkout_session: dict[str, Any],
    subscription: dict[str, Any],
    version: datetime,
    price_id: str | None,
    gateway: StripeGateway | None = None,
) -> Customer | None:
    """Provision the customer and subscription of a completed Checkout Session (idempotent).

    The one path used by the webhook and by the key claim. Returns None when the session is
    not for our price; raises ``CheckoutIncomplete`` when it is open or expired.
    """
    if checkout_session.get("status") != "complete":
        raise CheckoutIncomplete()
    customer = await sync_subscription(
        session, subscription=subscription, version=version, price_id=price_id, gateway=gateway
    )
    if customer is None or customer.subscription_id != str(subscription["id"]):
        return None
    if customer.email is None:
        details = checkout_session.get("customer_details") or {}
        email = details.get("email") or checkout_session.get("customer_email")
        if email:
            customer.email = str(email)[:320]
            session.add(customer)
    assert customer.id is not None
    values = {"id": str(checkout_session["id"]), "customer_id": customer.id, "created_at": utcnow()}
    table = CheckoutSession.__table__  # type: ignore[attr-defined]
    statement = insert_or_ignore(session, table, values, conflict=["id"]).returning(table.c.id)
    if (await session.exec(statement)).scalar_one_or_none() is not None:
        # First news of this Checkout Session (webhook or key claim, whichever came first).
        await outbox.enqueue(
            session,
            type=outbox.EventType.CUSTOMER_PROVISIONED,
            customer_id=customer.id,
            data={"email": customer.email},
        )
    await session.flush()
    return customer
