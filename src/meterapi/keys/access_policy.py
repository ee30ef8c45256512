"""Who may call the paid API, by subscription status (CONTRACT §3). The policy, in one place."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from meterapi.models import SubscriptionStatus

ALWAYS_ALLOWED = frozenset({SubscriptionStatus.ACTIVE.value, SubscriptionStatus.TRIALING.value})


class SubscriptionState(Protocol):
    @property
    def subscription_status(self) -> str | None: ...

    @property
    def past_due_since(self) -> datetime | None: ...


def allows(customer: SubscriptionState, now: datetime, grace_s: int) -> bool:
    """``active``/``trialing`` yes; ``past_due`` within ``grace_s`` of the failure; else no.

    A ``past_due`` customer without ``past_due_since`` is refused unless there is no grace at
    all to count (fail closed: billing records when the payment failed).
    """
    status = customer.subscription_status
    if status in ALWAYS_ALLOWED:
        return True
    if status != SubscriptionStatus.PAST_DUE.value or grace_s <= 0:
        return False
    since = customer.past_due_since
    return since is not None and now < since + timedelta(seconds=grace_s)
