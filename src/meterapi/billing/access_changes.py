"""When a customer's access changes, inside the changing transaction: every process's key cache
forgets the old state (``access_changed``), and a flip either way is announced to the outbox
(``announce_access``). Who may call at all is ``keys.access_policy``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.keys import access_policy, invalidation
from meterapi.models import Customer, utcnow
from meterapi.outbound import outbox


async def access_changed(session: AsyncSession, *, customer_id: int) -> None:
    """Drop cached access for the customer everywhere once the transaction commits."""
    await invalidation.bump(session, customer_id=customer_id)


@dataclass(frozen=True)
class _Standing:
    subscription_status: str | None
    past_due_since: datetime | None = None


def standing_allows(status: str | None) -> bool:
    """Access by subscription status alone, as at the moment of a past-due grace's start."""
    return access_policy.allows(_Standing(status), utcnow(), 0)


async def announce_access(
    session: AsyncSession, *, customer: Customer, before_status: str | None
) -> None:
    """Write ``subscription.access_changed`` if the status change flips access either way.

    A customer's first status is not a change (``customer.provisioned`` announces it). The
    status alone decides, so with ``METERAPI_PAST_DUE_GRACE_S`` the ``denied`` event comes when
    the subscription turns ``past_due``, while calls still work until the grace ends.
    """
    after_status = customer.subscription_status
    if before_status is None or after_status is None:
        return
    allowed = standing_allows(after_status)
    if allowed == standing_allows(before_status):
        return
    assert customer.id is not None
    await outbox.enqueue(
        session,
        type=outbox.EventType.SUBSCRIPTION_ACCESS_CHANGED,
        customer_id=customer.id,
        data={"access": "allowed" if allowed else "denied", "status": after_status},
    )
