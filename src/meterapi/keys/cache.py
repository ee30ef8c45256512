"""The in-process key cache: what makes a warm key cost zero database statements.

Three bounded LRU maps, all keyed by non-secret values:

- ``digest → KeyEntry`` for known, usable keys. An entry lives at most ``ttl_s`` and never past
  the key's ``expires_at`` (the caller also checks ``expires_at`` on every hit).
- ``digest`` → "no such usable key" (unknown, revoked or expired), so a flood of well-formed
  random keys costs one database read per distinct key, then none.
- ``customer id → CustomerEntry``: the subscription state the access policy reads, so that
  a hit needs no customer read either.

Invalidation (see ``invalidation``) removes entries by key id or customer id, or everything.
Every invalidation advances ``generation``; a fill records the generation before its database
read and is dropped if an invalidation happened meanwhile, so a read that raced a revocation
can never re-insert the stale state.

Caches of other per-customer facts (a customer's limits) ``follow`` this one: each
invalidation of a customer, and each clear, reaches them too, so they need no feed of their own.

``trusted_until`` (monotonic) is how long the invalidation feed vouches for the cache; past it
every lookup misses, so each request reads the database (``keys.heartbeat``). A cache nobody
invalidates (a single unit of work) is trusted for ever.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_id: str
    customer_id: int
    expires_at: datetime | None
    valid_until: float  # on the cache's monotonic clock
    name: str | None = None
    rotated: bool = False  # in its rotation grace period (expires_at is its end)


@dataclass(frozen=True, slots=True)
class CustomerEntry:
    customer_id: int
    stripe_customer_id: str
    subscription_status: str | None
    past_due_since: datetime | None
    valid_until: float


class Follower(Protocol):
    """A cache of per-customer facts, invalidated whenever the key cache is."""

    def forget(self, customer_ids: Iterable[int]) -> None: ...

    def clear(self) -> None: ...


@dataclass(eq=False, repr=False, kw_only=True)
class KeyCache:
    max_entries: int = 100_000
    ttl_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    generation: int = field(default=0, init=False)
    # The cache_revision this cache is known to reflect.
    revision: int | None = field(default=None, init=False)
    trusted_until: float = field(default=math.inf, init=False)
    _keys: OrderedDict[str, KeyEntry] = field(default_factory=OrderedDict, init=False)
    _key_digests: dict[str, str] = field(default_factory=dict, init=False)
    _misses: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False)
    _customers: OrderedDict[int, CustomerEntry] = field(default_factory=OrderedDict, init=False)
    _followers: list[Follower] = field(default_factory=list, init=False)

    def __repr__(self) -> str:
        return (
            f"KeyCache(keys={len(self._keys)}, misses={len(self._misses)}, "
            f"customers={len(self._customers)}, generation={self.generation})"
        )

    # -- lookups ---------------------------------------------------------------------------

    def trusted(self) -> bool:
        return self.clock() < self.trusted_until

    def key(self, digest: str) -> KeyEntry | None:
        entry = self._keys.get(digest)
        if entry is None or not self._usable(self._keys, digest, entry.valid_until):
            return None
        return entry

    def is_known_miss(self, digest: str) -> bool:
        until = self._misses.get(digest)
        return until is not None and self._usable(self._misses, digest, until)

    def customer(self, customer_id: int) -> CustomerEntry | None:
        entry = self._customers.get(customer_id)
        if entry is None or not self._usable(self._customers, customer_id, entry.valid_until):
            return None
        return entry

    def _usable(self, entries: OrderedDict[Any, Any], found: Any, valid_until: float) -> bool:
        """Whether the entry ``found`` in ``entries`` may answer: not if it expired (it is
        dropped) or the cache is not trusted now; one that may is now the most recently used."""
        now = self.clock()
        if valid_until <= now:
            if entries is self._keys:
                self._drop_key(found)  # and its key id from the index invalidation reads
            else:
                del entries[found]
            return False
        if now >= self.trusted_until:
            return False
        entries.move_to_end(found)
        return True

    # -- fills (dropped when an invalidation happened since ``generation`` was read) ---------

    def lifetime(self, now: datetime, expires_at: datetime | None) -> float:
        """Until when (monotonic) an entry may live: the TTL, capped at ``expires_at``."""
        seconds = self.ttl_s
        if expires_at is not None:
            seconds = min(seconds, (expires_at - now).total_seconds())
        return self.clock() + seconds

    def put_key(self, digest: str, entry: KeyEntry, *, generation: int) -> None:
        if generation != self.generation:
            return
        self._drop_key(digest)
        self._keys[digest] = entry
        self._key_digests[entry.key_id] = digest
        while len(self._keys) > self.max_entries:
            self._drop_key(next(iter(self._keys)))

    def put_miss(self, digest: str, *, generation: int) -> None:
        if generation == self.generation:
            self._put_newest(self._misses, digest, self.clock() + self.ttl_s)

    def put_customer(self, entry: CustomerEntry, *, generation: int) -> None:
        if generation == self.generation:
            self._put_newest(self._customers, entry.customer_id, entry)

    def _put_newest(self, entries: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        """Store as the most recently used, evicting the least recently used past the bound."""
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    # -- invalidation ----------------------------------------------------------------------

    def follow(self, follower: Follower) -> None:
        """Invalidate ``follower`` whenever this cache is (its customers, or everything)."""
        self._followers.append(follower)

    def invalidate(self, *, key_ids: Iterable[str] = (), customer_ids: Iterable[int] = ()) -> None:
        self.generation += 1
        customer_ids = tuple(customer_ids)
        for follower in self._followers:
            follower.forget(customer_ids)
        for key_id in key_ids:
            digest = self._key_digests.get(key_id)
            if digest is not None:
                self._drop_key(digest)
        for customer_id in customer_ids:
            self._customers.pop(customer_id, None)

    def clear(self) -> None:
        self.generation += 1
        for follower in self._followers:
            follower.clear()
        self._keys.clear()
        self._key_digests.clear()
        self._misses.clear()
        self._customers.clear()

    def observe_revision(self, revision: int) -> bool:
        """The database's ``cache_revision`` as just read; clears everything if it moved."""
        if revision == self.revision:
            return False
        self.revision = revision
        self.clear()
        return True

    def advance_revision(self, revision: int) -> None:
        """A change we applied ourselves: skip the full clear if it is the very next one."""
        if self.revision is not None and revision == self.revision + 1:
            self.revision = revision

    def _drop_key(self, digest: str) -> None:
        entry = self._keys.pop(digest, None)
        if entry is not None and self._key_digests.get(entry.key_id) == digest:
            del self._key_digests[entry.key_id]
