"""Rate limits on paid routes: one count per API key, shared through Redis or kept in the process.

``RateLimiter.hit(item, key_id)`` counts one call of ``key_id`` against ``item`` (the customer's
rate limit, ``metering.limits_cache``) and returns a ``Verdict``: allowed or not, and what the
RateLimit headers say (CONTRACT §7).

The algorithm is the ``limits`` package's fixed window, with windows aligned to the clock: the
window's number is part of the counter's key, so a window ends for every worker and replica at
the same instant, and one increment (``storage.incr``, one Redis round trip running the
package's own script) answers everything: allowed (count ≤ quota), remaining (quota - count),
and the reset (the window's end, from the clock). The sliding-window counter and the moving
window need a second round trip for the remaining count, which measured about twice the CPU
per request (docs/limits.md). The price of the fixed window: up to twice the quota can pass
across a window's boundary; over any longer span the count holds.

Storage: Redis when ``METERAPI_REDIS_URL`` is set (shared by every process), else memory (each
process counts alone). Redis failing never fails a request (fail open):

- a request waits for Redis ``timeout_s`` at most (plus the few turns of its own event loop a
  reply needs to be read: under saturation the loop's own lag is longer than any Redis round
  trip, and must not be taken for Redis being slow); a timeout or an error lets the request
  through unlimited, counted in ``meterapi_rate_limit_unchecked_total{reason}``; the call it
  gave up on ends in the background (1 s socket timeout), its connection kept;
- after a failure Redis is left alone for ``backoff_s`` (requests go through at once, reason
  ``backoff``), then the next request tries again: the client reconnects by itself;
- the log says so at most once a minute, and says when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from pydantic import SecretStr
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from meterapi.metrics import Counter

log = logging.getLogger(__name__)

KEY_PREFIX = "meterapi"
DEFAULT_TIMEOUT_S = 0.005
DEFAULT_BACKOFF_S = 1.0
LOG_EVERY_S = 60.0
POOL_SIZE = 32  # Redis connections per process: one call in flight each
BACKGROUND_TIMEOUT_S = 1.0
GRACE_TURNS = 3


def _retrieve(call: asyncio.Future[int]) -> None:
    if not call.cancelled():
        call.exception()  # retrieved: the request went on without it


_SCHEMES = {"redis://": "async+redis://", "rediss://": "async+rediss://"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One call counted: whether it may go on, and the values of the RateLimit headers."""

    allowed: bool
    quota: int
    window_s: int
    remaining: int | None  # None: not counted (the shared count was unavailable)
    reset_s: int  # whole seconds until the window ends, ≥ 1

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy`` and ``RateLimit`` (the latter only when counted)."""
        policy = f'"default";q={self.quota};w={self.window_s}'.encode()
        found = [(b"ratelimit-policy", policy)]
        if self.remaining is not None:
            state = f'"default";r={self.remaining};t={self.reset_s}'.encode()
            found.append((b"ratelimit", state))
        return found


def storage_uri(redis_url: str) -> str:
    """The ``limits`` package's name for a Redis address (``async+redis://…``)."""
    for scheme, replacement in _SCHEMES.items():
        if redis_url.startswith(scheme):
            return replacement + redis_url.removeprefix(scheme)
    raise ValueError("a Redis URL starts with redis:// or rediss://")


class RateLimiter:
    def __init__(
        self,
        *,
        redis_url: SecretStr | None,
        unchecked: Counter | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_s: float = DEFAULT_BACKOFF_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = redis_url is not None
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.clock = clock
        self.monotonic = monotonic
        self._unchecked = unchecked
        self._down_until = -math.inf
        self._down = False
        self._last_log = -math.inf
        self.storage: Storage
        self._pool: BlockingConnectionPool | None = None
        if redis_url is None:
            self.storage = MemoryStorage()
        else:
            # A bounded pool, opened at start: a burst of requests waits for a connection (hit()
            # gives up after timeout_s) instead of opening dozens at once. No retries inside the
            # client: a failure is answered by failing open at once.
            url = redis_url.get_secret_value()
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_SIZE,
                # Bounds for calls a request gave up on (hit() waits timeout_s at most).
                timeout=BACKGROUND_TIMEOUT_S,
                socket_timeout=BACKGROUND_TIMEOUT_S,
                socket_connect_timeout=BACKGROUND_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
            self._pool = pool
            options: dict[str, Any] = {"connection_pool": pool}
            self.storage = RedisStorage(
                storage_uri(url),
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                **options,  # passed on to redis.asyncio.Redis
            )

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"RateLimiter(shared={self.shared}, timeout_s={self.timeout_s})"

    async def hit(self, item: RateLimitItem, key_id: str) -> Verdict:
        """Count one call of ``key_id`` against ``item``; never raises, never waits on Redis
        longer than ``timeout_s`` and a few turns of the event loop."""
        window = item.get_expiry()
        now = self.clock()
        number = int(now // window)
        reset_s = max(1, math.ceil((number + 1) * window - now))
        if self.shared and self.monotonic() < self._down_until:
            return self._unlimited(item, reset_s, "backoff")
        key = item.key_for("paid", key_id, str(number))
        if not self.shared:
            count = await self.storage.incr(key, window)
            return self._verdict(item, count, reset_s)
        call = asyncio.ensure_future(self.storage.incr(key, window))
        await asyncio.wait((call,), timeout=self.timeout_s)
        # A busy event loop runs the timer in the same turn as it reads the reply, and resumes
        # the call only a turn or two later: give it those turns (any await costs them) before
        # calling Redis late. Without this, a saturated process fails open on every call.
        for _ in range(GRACE_TURNS):
            if call.done():
                break
            await asyncio.sleep(0)
        if not call.done():
            # Not cancelled: cancelling drops the connection. It ends by itself (socket timeout).
            call.add_done_callback(_retrieve)
            return self._failed(item, reset_s, "timeout")
        try:
            count = call.result()
        except redis_errors.TimeoutError:
            return self._failed(item, reset_s, "timeout")
        except Exception as exc:  # the storage's errors: connection refused, reset, auth…
            return self._failed(item, reset_s, "error", exc)
        if self._down:
            self._down = False
            self._log("rate limits: Redis answers again; limits apply")
        return self._verdict(item, count, reset_s)

    def _verdict(self, item: RateLimitItem, count: int, reset_s: int) -> Verdict:
        return Verdict(
            allowed=count <= item.amount,
            quota=item.amount,
            window_s=item.get_expiry(),
            remaining=max(0, item.amount - count),
            reset_s=reset_s,
        )

    async def start(self, *, settle_s: float = 2.0) -> None:
        """Open the pool's connections and load the counting script before the first request
        (bounded by ``settle_s``): connecting and the script's first load take round trips a
        request's ``timeout_s`` is not meant for. Redis being down delays nothing."""
        if not self.shared:
            return
        try:
            async with asyncio.timeout(settle_s):
                warm = [self.storage.incr(f"{KEY_PREFIX}/warm-up", 1) for _ in range(POOL_SIZE)]
                await asyncio.gather(*warm)
        except Exception as exc:
            self._log(f"rate limits: Redis unavailable at start ({type(exc).__name__})")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    def _failed(
        self, item: RateLimitItem, reset_s: int, reason: str, exc: Exception | None = None
    ) -> Verdict:
        self._down = True
        self._down_until = self.monotonic() + self.backoff_s
        what = type(exc).__name__ if exc is not None else f"no answer in {self.timeout_s}s"
        self._log(f"rate limits: Redis unavailable ({what}); paid requests go on unlimited")
        return self._unlimited(item, reset_s, reason)

    def _unlimited(self, item: RateLimitItem, reset_s: int, reason: str) -> Verdict:
        if self._unchecked is not None:
            self._unchecked.inc(reason=reason)
        return Verdict(True, item.amount, item.get_expiry(), None, reset_s)

    def _log(self, message: str) -> None:
        now = self.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message)
