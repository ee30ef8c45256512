"""Issue, rotate, revoke, list and authenticate API keys.

Services take the session first and keyword-only arguments, ``flush()`` only and never commit:
the caller's unit of work decides. Key and access changes call ``invalidation.bump`` in the same
transaction, so every process's cache forgets the old state once it commits; issuing and revoking
a key write ``key.created`` / ``key.revoked`` to the outbound outbox in that transaction too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.errors import (
    InvalidApiKey,
    LastActiveKey,
    NotFound,
    SubscriptionInactive,
    ValidationFailed,
)
from meterapi.keys import access, hashing, invalidation
from meterapi.keys import format as key_format
from meterapi.keys.cache import CustomerEntry, KeyCache, KeyEntry
from meterapi.models import ApiKey, Customer, utcnow
from meterapi.outbound import outbox

DEFAULT_GRACE_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key that authenticated the request and its customer.

    ``rotated``: the key has a successor and is in its grace period; it may call the paid API
    and read, nothing else (the API refuses the rest with ``KeyRotated``).
    """

    key_id: str
    customer_id: int
    stripe_customer_id: str
    key_name: str | None = None
    rotated: bool = False


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
    pepper: bytes,
    live: bool,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext, which exists nowhere else afterwards."""
    now = now or utcnow()
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at must be in the future.")
    plaintext = key_format.generate(live=live)
    key = ApiKey(
        id=key_format.new_key_id(),
        customer_id=customer_id,
        name=name,
        digest=hashing.digest(plaintext, pepper=pepper),
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
    pepper: bytes,
    live: bool,
) -> tuple[ApiKey, str]:
    """``issue`` for the customer known by its Stripe id (``NotFound`` creates nothing)."""
    customer = await find_customer(session, stripe_customer_id=stripe_customer_id)
    assert customer.id is not None
    return await issue(session, customer_id=customer.id, name=name, pepper=pepper, live=live)


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
    pepper: bytes,
    live: bool,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Issue a successor with the same name; the old key keeps working ``grace_seconds`` more,
    for the paid API and reading only (``Principal.rotated``)."""
    now = now or utcnow()
    old = await _key(session, key_id=key_id, customer_id=customer_id)
    if not is_usable(old, now):
        raise NotFound("No active key with this id.")
    new, plaintext = await issue(
        session, customer_id=customer_id, name=old.name, pepper=pepper, live=live, now=now
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

    Refuses the customer's only usable key with ``LastActiveKey`` unless ``allow_last``.
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


async def authenticate(
    session: AsyncSession,
    plaintext: str,
    *,
    pepper: bytes,
    cache: KeyCache | None = None,
    past_due_grace_s: int = 0,
    require_access: bool = True,
    now: datetime | None = None,
) -> Principal:
    """The caller behind ``plaintext``, or ``InvalidApiKey`` / ``SubscriptionInactive``.

    The keyed hash is computed for every presented value, before the format check, and digests
    are compared with ``hmac.compare_digest``; malformed, unknown, revoked and expired keys all
    raise the same error. With a warm ``cache`` no SQL statement is issued.
    """
    now = now or utcnow()
    cache = cache if cache is not None else KeyCache(max_entries=1)
    principal = authenticate_cached(
        plaintext,
        pepper=pepper,
        cache=cache,
        past_due_grace_s=past_due_grace_s,
        require_access=require_access,
        now=now,
    )
    if principal is not None:
        return principal
    digest = hashing.digest(plaintext, pepper=pepper)
    entry = cache.key(digest)
    if entry is None:
        entry, customer = await _load(session, digest, cache=cache, now=now)
    else:
        customer = cache.customer(entry.customer_id) or await _load_customer(
            session, entry.customer_id, cache=cache
        )
    return _admit(
        entry,
        customer,
        now=now,
        past_due_grace_s=past_due_grace_s,
        require_access=require_access,
    )


def authenticate_cached(
    plaintext: str,
    *,
    pepper: bytes,
    cache: KeyCache,
    past_due_grace_s: int = 0,
    require_access: bool = True,
    now: datetime,
) -> Principal | None:
    """``authenticate`` from the cache alone: the caller, an error, or ``None`` if the database
    must be asked. This is the whole hot path of a warm key: no session, no I/O."""
    digest = hashing.digest(plaintext, pepper=pepper)  # for every value, well formed or not
    entry = cache.key(digest)
    if entry is None:
        # Only a well-formed key was ever cached, so the shape and checksum are checked here,
        # off the warm path; every refusal still pays for the digest above.
        if not key_format.looks_valid(plaintext) or cache.is_known_miss(digest):
            raise InvalidApiKey()
        return None
    customer = cache.customer(entry.customer_id)
    if customer is None:
        return None
    return _admit(
        entry,
        customer,
        now=now,
        past_due_grace_s=past_due_grace_s,
        require_access=require_access,
    )


def _admit(
    entry: KeyEntry,
    customer: CustomerEntry,
    *,
    now: datetime,
    past_due_grace_s: int,
    require_access: bool,
) -> Principal:
    if entry.expires_at is not None and entry.expires_at <= now:
        raise InvalidApiKey()
    if require_access and not access.allows(customer, now, past_due_grace_s):
        raise SubscriptionInactive()
    return Principal(
        key_id=entry.key_id,
        customer_id=entry.customer_id,
        stripe_customer_id=customer.stripe_customer_id,
        key_name=entry.name,
        rotated=entry.rotated,
    )


async def _load(
    session: AsyncSession, digest: str, *, cache: KeyCache, now: datetime
) -> tuple[KeyEntry, CustomerEntry]:
    generation = cache.generation  # before the read: a concurrent invalidation voids the fill
    result = await session.exec(
        select(ApiKey, Customer)
        .join(Customer, col(Customer.id) == col(ApiKey.customer_id))
        .where(ApiKey.digest == digest)
    )
    row = result.first()
    if row is None or not hashing.same_digest(row[0].digest, digest) or not is_usable(row[0], now):
        cache.put_miss(digest, generation=generation)
        raise InvalidApiKey()
    key, customer = row
    entry = KeyEntry(
        key_id=key.id,
        customer_id=key.customer_id,
        expires_at=key.expires_at,
        valid_until=cache.lifetime(now, key.expires_at),
        name=key.name,
        rotated=key.rotated_at is not None,
    )
    customer_entry = _customer_entry(customer, cache)
    cache.put_key(digest, entry, generation=generation)
    cache.put_customer(customer_entry, generation=generation)
    return entry, customer_entry


async def _load_customer(
    session: AsyncSession, customer_id: int, *, cache: KeyCache
) -> CustomerEntry:
    generation = cache.generation
    customer = await session.get(Customer, customer_id)
    if customer is None:  # the key's foreign key makes this unreachable; refuse all the same
        raise InvalidApiKey()
    entry = _customer_entry(customer, cache)
    cache.put_customer(entry, generation=generation)
    return entry


def _customer_entry(customer: Customer, cache: KeyCache) -> CustomerEntry:
    assert customer.id is not None
    return CustomerEntry(
        customer_id=customer.id,
        stripe_customer_id=customer.stripe_customer_id,
        subscription_status=customer.subscription_status,
        past_due_since=customer.past_due_since,
        valid_until=cache.clock() + cache.ttl_s,
    )
