"""``KeyGuard``: one process's key authenticator — the presented key's digest (computed once per
request), the cache, the single-flight fill from the database, the access policy — and the
long-lived machinery around it: the cache's invalidation and the ``last_used_at`` writer.

``keys.service`` only reads and writes rows; everything about answering a request is here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.background import SingleFlight
from meterapi.config import Settings
from meterapi.db import Sessionmaker
from meterapi.errors import InvalidApiKey, SubscriptionInactive
from meterapi.keys import access_policy, heartbeat, invalidation, service
from meterapi.keys import format as key_format
from meterapi.keys.cache import CustomerEntry, KeyCache, KeyEntry
from meterapi.keys.heartbeat import Acknowledgement
from meterapi.keys.invalidation import Invalidator
from meterapi.keys.last_used import LastUsedTracker
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer, utcnow


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


@dataclass(eq=False, repr=False, kw_only=True)
class KeyGuard:
    policy: KeyPolicy
    past_due_grace_s: int
    cache: KeyCache
    invalidator: Invalidator
    last_used: LastUsedTracker
    sessionmaker: Sessionmaker
    engine: AsyncEngine
    # Cache fills in progress, by digest: concurrent misses on one key share one read.
    _fills: SingleFlight[str, None] = field(default_factory=SingleFlight, init=False)
    _check_ins: SingleFlight[None, bool] = field(default_factory=SingleFlight, init=False)

    def __repr__(self) -> str:  # never the pepper
        return f"KeyGuard(live={self.policy.live}, cache={self.cache!r})"

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        policy: KeyPolicy,
        engine: AsyncEngine,
        sessionmaker: Sessionmaker,
    ) -> KeyGuard:
        """Build without I/O and attach the cache to ``sessionmaker``'s commits."""
        cache = KeyCache(max_entries=settings.key_cache_size, ttl_s=settings.key_cache_ttl_s)
        invalidation.attach(sessionmaker, cache)
        return cls(
            policy=policy,
            past_due_grace_s=settings.past_due_grace_s,
            cache=cache,
            invalidator=Invalidator(cache, database_url=settings.database_url),
            last_used=LastUsedTracker(sessionmaker),
            sessionmaker=sessionmaker,
            engine=engine,
        )

    async def propagate(self) -> Acknowledgement:
        """After committing a revocation: return once no other process can serve the key
        (every live one applied the change, or stopped trusting its cache; keys.heartbeat)."""
        return await heartbeat.await_acknowledged(
            self.engine, exclude=self.invalidator.heartbeat.id
        )

    async def start(self) -> None:
        await self.invalidator.start()
        self.last_used.start()

    async def stop(self) -> None:
        await self.invalidator.stop()
        await self.last_used.stop()

    async def authenticate(
        self, plaintext: str, *, require_access: bool = True, now: datetime | None = None
    ) -> Principal:
        """The caller behind ``plaintext``, or ``InvalidApiKey`` / ``SubscriptionInactive``.

        The keyed hash is computed once, for every presented value and before the format check;
        malformed, unknown, revoked and expired keys all raise the same error. A warm key is
        answered from the cache without opening a session; otherwise one read by digest, shared
        by every concurrent caller of that key, fills the cache.

        ``require_access=False`` admits any valid key whatever the subscription's state: for
        the customer's own keys, usage and billing portal, which a lapsed customer needs most.
        """
        now = now or utcnow()
        digest = self.policy.digest(plaintext)
        found = None
        if not self.cache.trusted():
            await self._check_in()
        # Still untrusted (the invalidation feed cannot be heard): the database answers.
        if self.cache.trusted():
            found = self._cached(digest, plaintext)
            if found is None:
                await self._fill(digest, now)
                found = self._cached(digest, plaintext)
        elif not key_format.looks_valid(plaintext):
            raise InvalidApiKey()
        if found is None:  # untrusted, or invalidated since the fill: read for this request
            found = await self._load(digest, now)
        key, customer = found
        if key.expires_at is not None and key.expires_at <= now:
            raise InvalidApiKey()
        if require_access and not access_policy.allows(customer, now, self.past_due_grace_s):
            raise SubscriptionInactive()
        self.last_used.note(key.key_id, now)
        return Principal(
            key_id=key.key_id,
            customer_id=key.customer_id,
            stripe_customer_id=customer.stripe_customer_id,
            key_name=key.name,
            rotated=key.rotated,
        )

    def _cached(self, digest: str, plaintext: str) -> tuple[KeyEntry, CustomerEntry] | None:
        """The key and its customer from the cache; ``InvalidApiKey`` for a malformed key or a
        known miss; None if the database must be asked. The whole hot path of a warm key."""
        entry = self.cache.key(digest)
        if entry is None:
            # Only a well-formed key was ever cached, so the shape and checksum are checked
            # here, off the warm path; every refusal still paid for the digest.
            if not key_format.looks_valid(plaintext) or self.cache.is_known_miss(digest):
                raise InvalidApiKey()
            return None
        customer = self.cache.customer(entry.customer_id)
        return None if customer is None else (entry, customer)

    async def _check_in(self) -> None:
        """The cache's trust ran out (the poller is late: a starved event loop, a slow
        database): check in now, once for all concurrent callers. Failing, callers read the
        database themselves."""
        with contextlib.suppress(Exception):  # a failure only means reading the database
            await self._check_ins.run(None, self.invalidator.check_in)

    async def _fill(self, digest: str, now: datetime) -> None:
        """Bring the key into the cache (or into its misses), once for all concurrent callers.

        Without this, a hot key whose entry expires, or a cold start under load, would send
        every request in flight to the database at once. An unknown key fills the miss cache,
        and its callers are then refused from there.
        """

        async def read() -> None:
            # An unknown key is now a known miss (unless invalidated meanwhile).
            with contextlib.suppress(InvalidApiKey):
                await self._load(digest, now)

        await self._fills.run(digest, read)

    async def _load(self, digest: str, now: datetime) -> tuple[KeyEntry, CustomerEntry]:
        """Read the key (or only its customer, if the key is cached) in a short session of our
        own, and cache what was read; ``InvalidApiKey`` (cached as a miss) if no usable key has
        this digest. A read that raced an invalidation is returned but not cached."""
        cache = self.cache
        generation = cache.generation  # before the read: a concurrent invalidation voids it
        entry = cache.key(digest)
        async with self.sessionmaker() as session:
            if entry is not None:
                customer = await service.get_customer(session, entry.customer_id)
                if customer is None:  # the key's foreign key makes this unreachable
                    raise InvalidApiKey()
            else:
                row = await service.find_by_digest(session, digest)
                if row is None or not service.is_usable(row[0], now):
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
                cache.put_key(digest, entry, generation=generation)
            customer_entry = self._customer_entry(customer)
        cache.put_customer(customer_entry, generation=generation)
        return entry, customer_entry

    def _customer_entry(self, customer: Customer) -> CustomerEntry:
        assert customer.id is not None
        return CustomerEntry(
            customer_id=customer.id,
            stripe_customer_id=customer.stripe_customer_id,
            subscription_status=customer.subscription_status,
            past_due_since=customer.past_due_since,
            valid_until=self.cache.clock() + self.cache.ttl_s,
        )
