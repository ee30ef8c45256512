"""The outbox: outbound events, written in the transaction of the change they announce.

- ``enqueue(session, type=…, customer_id=…, data=…)`` adds one row to the caller's transaction and
  never commits: the event exists if and only if the change that caused it does. Its body
  (``{"type", "timestamp", "data"}``, ``data.customer_id`` always the Stripe customer id) and its
  ``event_id`` (the ``webhook-id``) are fixed here, so every retry sends the same bytes.
- Events are written whether or not ``METERAPI_WEBHOOK_URL`` is set, so an operator can see them
  (``meterapi webhooks outbound list``) and a URL set later receives the last three days' events.
  The table stays bounded all the same: an event still undelivered ``DELIVERY_WINDOW`` after it
  was written ends ``failed``, and finished events (delivered, failed, gone) are deleted
  ``RETENTION`` after they were written (``expire_and_prune``, run by every deliverer).
- A session whose sessionmaker was ``attach``-ed to a deliverer wakes it once it commits an
  event, so delivery starts at once instead of at the next poll.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import pydantic_core
from sqlalchemy import delete, event, update
from sqlalchemy.orm import Session
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.db import Sessionmaker
from meterapi.errors import AlreadyDelivered, NotFound, ValidationFailed
from meterapi.models import ApiKey, Customer, OutboundEvent, OutboundStatus, utcnow

DELIVERY_WINDOW = timedelta(days=3)
RETENTION = timedelta(days=30)
MAX_PAGE = 100

_WAKE_INFO = "meterapi.outbound.wake"
_WRITTEN_INFO = "meterapi.outbound.written"


class EventType(StrEnum):
    CUSTOMER_PROVISIONED = "customer.provisioned"
    SUBSCRIPTION_ACCESS_CHANGED = "subscription.access_changed"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    USAGE_THRESHOLD_REACHED = "usage.threshold_reached"


UNDELIVERED = (OutboundStatus.PENDING, OutboundStatus.FAILED, OutboundStatus.GONE)
STATUS_FILTERS = {s.value: (s,) for s in OutboundStatus} | {"undelivered": UNDELIVERED}


def new_event_id() -> str:
    """``msg_`` and 128 random bits: unique, and the same on every attempt to send it."""
    return "msg_" + secrets.token_hex(16)


async def enqueue(
    session: AsyncSession,
    *,
    type: str,
    customer_id: int,
    data: Mapping[str, Any],
    now: datetime | None = None,
) -> OutboundEvent:
    """Write an event into the caller's transaction; ``data`` gets the Stripe ``customer_id``."""
    now = now or utcnow()
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise NotFound(f"No customer {customer_id}.")
    body = {
        "type": type,
        "timestamp": now,
        "data": {"customer_id": customer.stripe_customer_id}
        | {k: v for k, v in data.items() if k != "customer_id"},
    }
    row = OutboundEvent(
        event_id=new_event_id(),
        type=type,
        customer_id=customer_id,
        payload=pydantic_core.to_json(body).decode(),
        next_attempt_at=now,
        give_up_at=now + DELIVERY_WINDOW,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    session.info[_WRITTEN_INFO] = True
    return row


def key_public(key: ApiKey) -> dict[str, Any]:
    """A key as ``KeyPublic`` shows it (CONTRACT §3): never the key itself, never its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "last4": key.last4,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


@dataclass(frozen=True)
class OutboxEntry:
    """An outbound event as operators see it."""

    id: str  # the webhook-id
    type: str
    customer_id: str  # the Stripe customer id
    status: str
    attempts: int
    next_attempt_at: datetime | None  # when pending
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    data: dict[str, Any]

    @classmethod
    def of(cls, row: OutboundEvent, stripe_customer_id: str) -> OutboxEntry:
        body = json.loads(row.payload)
        return cls(
            id=row.event_id,
            type=row.type,
            customer_id=stripe_customer_id,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if row.status == OutboundStatus.PENDING else None,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            data=dict(body.get("data") or {}),
        )


async def list_events(
    session: AsyncSession,
    *,
    status: str | None = None,
    stripe_customer_id: str | None = None,
    limit: int = 20,
    starting_after: str | None = None,
) -> tuple[list[OutboxEntry], bool]:
    """Newest first; ``status`` is one of ``OutboundStatus`` or ``undelivered`` (pending, failed
    or gone); ``stripe_customer_id`` narrows to one customer (``cus_…``); ``starting_after`` is an
    event id from the previous page. Returns (page, has_more)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}.")
    query = select(OutboundEvent, Customer.stripe_customer_id).join(
        Customer, col(Customer.id) == col(OutboundEvent.customer_id)
    )
    if status is not None:
        if status not in STATUS_FILTERS:
            raise ValidationFailed("status must be one of: " + ", ".join(STATUS_FILTERS) + ".")
        query = query.where(col(OutboundEvent.status).in_(STATUS_FILTERS[status]))
    if stripe_customer_id is not None:
        query = query.where(col(Customer.stripe_customer_id) == stripe_customer_id)
    if starting_after is not None:
        cursor = await _row_id(session, starting_after)
        query = query.where(col(OutboundEvent.id) < cursor)
    query = query.order_by(col(OutboundEvent.id).desc()).limit(limit + 1)
    rows = (await session.exec(query)).all()
    return [OutboxEntry.of(row, stripe_id) for row, stripe_id in rows[:limit]], len(rows) > limit


async def _row_id(session: AsyncSession, event_id: str) -> int:
    found = (
        await session.exec(select(OutboundEvent.id).where(OutboundEvent.event_id == event_id))
    ).first()
    if found is None:
        raise NotFound(f"No outbound event {event_id}.")
    return found


async def retry(
    session: AsyncSession, *, event_id: str, now: datetime | None = None
) -> OutboxEntry:
    """Send an undelivered event again now, under the same id, with a fresh retry window.

    Raises ``NotFound``, or ``AlreadyDelivered`` for a delivered one.
    """
    now = now or utcnow()
    found = (
        await session.exec(
            select(OutboundEvent, Customer.stripe_customer_id)
            .join(Customer, col(Customer.id) == col(OutboundEvent.customer_id))
            .where(OutboundEvent.event_id == event_id)
            .with_for_update(of=OutboundEvent)
        )
    ).first()
    if found is None:
        raise NotFound(f"No outbound event {event_id}.")
    row, stripe_customer_id = found
    if row.status == OutboundStatus.DELIVERED:
        raise AlreadyDelivered()
    row.status = OutboundStatus.PENDING
    row.attempts = 0  # the schedule starts over: first retry within seconds
    row.next_attempt_at = now
    row.give_up_at = max(row.give_up_at, now + DELIVERY_WINDOW)
    session.add(row)
    await session.flush()
    session.info[_WRITTEN_INFO] = True
    return OutboxEntry.of(row, stripe_customer_id)


async def expire_and_prune(
    session: AsyncSession, *, now: datetime, reason: str = "not delivered within 3 days"
) -> tuple[int, int]:
    """Fail pending events past their window; delete finished ones past ``RETENTION``.

    Returns (failed now, deleted).
    """
    expired = await session.exec(
        update(OutboundEvent)
        .where(
            col(OutboundEvent.status) == OutboundStatus.PENDING,
            col(OutboundEvent.give_up_at) < now,
            col(OutboundEvent.claimed_until).is_(None) | (col(OutboundEvent.claimed_until) <= now),
        )
        .values(
            status=OutboundStatus.FAILED, last_error=reason, claimed_until=None, claimed_by=None
        )
    )
    deleted = await session.exec(
        delete(OutboundEvent).where(
            col(OutboundEvent.created_at) < now - RETENTION,
            col(OutboundEvent.status) != OutboundStatus.PENDING,
        )
    )
    return int(expired.rowcount), int(deleted.rowcount)


def attach(sessionmaker: Sessionmaker, wake: Callable[[], None]) -> None:
    """Sessions from ``sessionmaker`` call ``wake`` after committing an outbound event."""
    info = dict(sessionmaker.kw.get("info") or {})
    info[_WAKE_INFO] = wake
    sessionmaker.configure(info=info)


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    if session.info.pop(_WRITTEN_INFO, False):
        wake = session.info.get(_WAKE_INFO)
        if callable(wake):
            wake()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_WRITTEN_INFO, None)
