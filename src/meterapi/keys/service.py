"""Issue, rotate, revoke and list API keys, and find a key by its digest: database work only
(authenticating a request, with its cache, is ``keys.guard``).

Services take the session first and keyword-only arguments, ``flush()`` only and never commit:
the caller's unit of work decides. Key and access changes call ``invalidation.bump`` in the same
transaction, so every process's cache forgets the old state once it commits; issuing and revoking
a key write ``key.created`` / ``key.revoked`` to the outbound outbox in that transaction too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.errors import (
    LastActiveKey,
    NotFound,
    ValidationFailed,
)
from meterapi.keys import format as key_format
from meterapi.keys import hashing, invalidation
from meterapi.keys.policy import KeyPolicy
from meterapi.models import ApiKey, Customer, utcnow
from meterapi.outbound import outbox

DEFAULT_GRACE_SECONDS = 3600


def is_usable(key: ApiKey, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


async def find_customer(session: AsyncSession, *, stripe_customer_id: str) -> Customer:
    """The customer with this Stripe id, or ``NotFound``."""
    result = await session.exec(
        select(Customer).where(Customer.stripe_customer_id == stripe_customer_id)
    )
    customer = result.first()
    if customer is None:
        raise NotFound(f"No customer with Stripe id {stripe_customer_id}.")
    return customer


async def issue(
    session: AsyncSession,
    *,
    customer_id: int,
    name: str = "default",
    expires_at: datetime | None = None,
    policy: KeyPolicy,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext, which exists nowhere else afterwards."""
    now = now or utcnow()
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at must be in the future.")
    plaintext = key_format.generate(live=policy.live)
    key = ApiKey(
        id=key_format.new_key_id(),
        customer_id=customer_id,
        name=name,
        digest=policy.digest(plaintext),
        prefix=key_format.display_prefix(plaintext),
        last4=plaintext[-4:],
        created_at=now,
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    await outbox.enqueue(
        session,
        type=outbox.EventType.KEY_CREATED,
        customer_id=customer_id,
        data={"key": outbox.key_public(key)},
        now=now,
    )
    return key, plaintext


async def issue_for_stripe_customer(
    session: AsyncSession,
    *,
    stripe_customer_id: str,
    name: str = "default",
    policy: KeyPolicy,
) -> tuple[ApiKey, str]:
    """``issue`` for the customer known by its Stripe id (``NotFound`` creates nothing)."""
    customer = await find_customer(session, stripe_customer_id=stripe_customer_id)
    assert customer.id is not None
    return await issue(session, customer_id=customer.id, name=name, policy=policy)


async def list_keys(session: AsyncSession, *, customer_id: int) -> list[ApiKey]:
    """The customer's keys, newest first, revoked and expired ones included."""
    result = await session.exec(
        select(ApiKey)
        .where(ApiKey.customer_id == customer_id)
        .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
    )
    return list(result.all())


async def _key(session: AsyncSession, *, key_id: str, customer_id: int | None) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    # Another customer's key is reported exactly like a missing one.
    if key is None or (customer_id is not None and key.customer_id != customer_id):
        raise NotFound("No such key.")
    return key


async def rotate(
    session: AsyncSession,
    *,
    customer_id: int,
    key_id: str,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    policy: KeyPolicy,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Issue a successor with the same name; the old key keeps working ``grace_seconds`` more,
    for the paid API and reading only (``Principal.rotated``)."""
    now = now or utcnow()
    old = await _key(session, key_id=key_id, customer_id=customer_id)
    if not is_usable(old, now):
        raise NotFound("No active key with this id.")
    new, plaintext = await issue(
        session, customer_id=customer_id, name=old.name, policy=policy, now=now
    )
    until = now + timedelta(seconds=grace_seconds)
    old.expires_at = until if old.expires_at is None else min(old.expires_at, until)
    old.rotated_at = old.rotated_at or now
    session.add(old)
    await invalidation.bump(session, key_id=old.id)
    await session.flush()
    return new, plaintext


async def revoke(
    session: AsyncSession,
    *,
    key_id: str,
    customer_id: int | None,
    allow_last: bool = False,
    now: datetime | None = None,
) -> ApiKey:
    """Revoke now (idempotent). ``customer_id=None`` is the operator's reach over every key.

    Refuses the customer's only usable key with ``LastActiveKey`` unless ``allow_last``. A
    rotated key in its grace period does not count as another: it cannot manage keys and ends
    with its grace, so revoking its successor would leave the customer with no key at all.
    """
    now = now or utcnow()
    key = await _key(session, key_id=key_id, customer_id=customer_id)
    if key.revoked_at is not None:
        return key
    # Lock the customer so two concurrent revocations cannot each leave the other as the last.
    await session.exec(select(Customer.id).where(Customer.id == key.customer_id).with_for_update())
    if not allow_last and is_usable(key, now):
        others = await session.exec(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.customer_id == key.customer_id,
                ApiKey.id != key.id,
                col(ApiKey.revoked_at).is_(None),
                col(ApiKey.rotated_at).is_(None),
                (col(ApiKey.expires_at).is_(None)) | (col(ApiKey.expires_at) > now),
            )
        )
        if others.one() == 0:
            raise LastActiveKey()
    key.revoked_at = now
    session.add(key)
    await invalidation.bump(session, key_id=key.id)
    await session.flush()
    await outbox.enqueue(
        session,
        type=outbox.EventType.KEY_REVOKED,
        customer_id=key.customer_id,
        data={"key": outbox.key_public(key)},
        now=now,
    )
    return key


async def find_by_digest(session: AsyncSession, digest: str) -> tuple[ApiKey, Customer] | None:
    """The key stored under ``digest`` and its customer, in one statement; None if no key has
    it. Usable or not: revoked and expired keys are found too (see ``is_usable``)."""
    result = await session.exec(
        select(ApiKey, Customer)
        .join(Customer, col(Customer.id) == col(ApiKey.customer_id))
        .where(ApiKey.digest == digest)
    )
    row = result.first()
    if row is None or not hashing.same_digest(row[0].digest, digest):
        return None
    return row[0], row[1]


async def get_customer(session: AsyncSession, customer_id: int) -> Customer | None:
    """The customer row, by primary key."""
    return await session.get(Customer, customer_id)
