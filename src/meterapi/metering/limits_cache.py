"""The limits of each customer, kept in the process for the paid path (CONTRACT §7).

A paid request needs its customer's effective limits, and must not read the database for them::

    limits = await runtime.limits.get(caller.customer_pk)
    limits.rate_limit           # a ``limits.RateLimitItem`` (per API key), or None: no rate limit
    limits.monthly_spend_cap    # minor units of the price's currency, or None: no cap

What applies is what ``metering.limits.limits_for`` reports: the operator's rate-limit override
where one is set (which may be "none at all"), else ``METERAPI_RATE_LIMIT``; the customer's own
monthly spend cap, else none.

- **Filled on a miss**, by one short read of ``customer_limit`` shared by every request waiting
  on the same customer (single flight); a warm entry costs a dict lookup.
- **Invalidated with the key cache.** ``metering.limits.set_limits`` calls
  ``keys.invalidation.bump(session, customer_id=…)`` in the transaction that changes the limits,
  and this cache follows the key cache (``KeyCache.follow``): whatever drops a customer there
  (this process's own commit, another process's notification) drops their limits here, and
  whatever clears it (a revision jump, a lost listener) clears this too. So a change reaches
  this process at once and every other within one check-in of the invalidation feed.
- **Trusted like the key cache:** while the invalidation feed cannot vouch for the key cache,
  every lookup reads the database (still one read for concurrent callers); no entry outlives
  ``ttl_s`` in any case.
- A fill that raced an invalidation answers its callers but is not kept, so a stale read can
  never be cached after the change that made it stale.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field

from limits import RateLimitItem, parse

from meterapi.background import SingleFlight
from meterapi.db import Sessionmaker
from meterapi.models import CustomerLimit


@dataclass(frozen=True, slots=True)
class CustomerLimits:
    """The limits that apply to one customer's paid calls now."""

    rate_limit: RateLimitItem | None  # per API key of the customer; None: no rate limit
    monthly_spend_cap: int | None  # minor units; None: no cap


def _always() -> bool:
    return True


@dataclass(eq=False, repr=False)
class LimitsCache:
    sessionmaker: Sessionmaker
    _: KW_ONLY
    default_rate: str | None
    ttl_s: float = 60.0
    max_entries: int = 100_000
    trusted: Callable[[], bool] = _always
    clock: Callable[[], float] = time.monotonic
    generation: int = field(default=0, init=False)
    reads: int = field(default=0, init=False)  # database reads made (tests and diagnostics)
    _entries: OrderedDict[int, tuple[CustomerLimits, float]] = field(
        default_factory=OrderedDict, init=False
    )
    _fills: SingleFlight[int, CustomerLimits] = field(default_factory=SingleFlight, init=False)
    _rates: dict[str, RateLimitItem] = field(default_factory=dict, init=False)

    def __repr__(self) -> str:
        return f"LimitsCache(entries={len(self._entries)}, generation={self.generation})"

    async def get(self, customer_pk: int) -> CustomerLimits:
        """The limits that apply to the customer whose row id is ``customer_pk``."""
        found = self._entries.get(customer_pk)
        if found is not None:
            limits, valid_until = found
            if self.clock() < valid_until and self.trusted():
                return limits
        return await self._fills.run(customer_pk, lambda: self._read(customer_pk))

    # -- invalidation (called by the key cache this one follows) -----------------------------

    def forget(self, customer_ids: Iterable[int]) -> None:
        self.generation += 1
        for customer_id in customer_ids:
            self._entries.pop(customer_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    # -- fills (one read for every caller waiting on the customer) ----------------------------

    async def _read(self, customer_pk: int) -> CustomerLimits:
        generation = self.generation
        started = self.clock()
        self.reads += 1
        async with self.sessionmaker() as session:
            row = await session.get(CustomerLimit, customer_pk)
        rate = row.rate_limit if row is not None and row.rate_limit_set else self.default_rate
        limits = CustomerLimits(
            rate_limit=self._rate(rate) if rate is not None else None,
            monthly_spend_cap=row.monthly_spend_cap if row is not None else None,
        )
        if generation == self.generation:
            self._entries[customer_pk] = (limits, started + self.ttl_s)
            self._entries.move_to_end(customer_pk)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return limits

    def _rate(self, text: str) -> RateLimitItem:
        item = self._rates.get(text)
        if item is None:
            item = self._rates[text] = parse(text)
        return item
