"""A per-client limit on the unauthenticated routes that cost a Stripe call.

``POST /v1/checkout`` creates a Checkout Session and ``POST /v1/keys/claim`` may fetch one: with
no key to count against, anyone could spend the operator's Stripe rate limit, which checkout,
the portal and webhook handling need. Counted per client address, in this process, over a
moving window (the ``limits`` package); nothing here does I/O.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from meterapi.errors import RateLimited


def parse_rate(text: str) -> RateLimitItem:
    """``20/minute``, ``100/second``…; raises ``ValueError`` for anything else."""
    return parse(text)


class PublicRateLimit:
    def __init__(self, rate: str) -> None:
        self.rate = rate
        self._item = parse_rate(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def __repr__(self) -> str:
        return f"PublicRateLimit({self.rate!r})"

    async def hit(self, client: str) -> None:
        """Count one call from ``client``; raises ``RateLimited`` (with Retry-After) when over."""
        if await self._limiter.hit(self._item, "public", client):
            return
        stats = await self._limiter.get_window_stats(self._item, "public", client)
        error = RateLimited("Too many requests from this address; try again later.")
        error.headers = {"Retry-After": str(max(1, math.ceil(stats.reset_time - time.time())))}
        raise error
