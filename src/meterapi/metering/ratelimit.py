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
PRUNE_EVERY_S = 1.0


_UNSEEN = (0, 0.0)
_SCHEMES = {"redis://": "async+redis://", "rediss://": "async+rediss://"}


@dataclass(slots=True)
class _Batch:
    """Calls of one key counted together: one increment of ``size``, one reply."""

    reply: asyncio.Future[int]  # Redis's count after the increment
    size: int = 0


@dataclass(slots=True)
class _Slot:
    """One key's calls in this process: the batch being filled, and the task sending them."""

    open: _Batch | None = None
    sender: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """One call counted: whether it may go on, and the values of the RateLimit headers."""

    allowed: bool
    quota: int
    window_s: int
    remaining: int | None  # None: not known (the shared count was unavailable)
    reset_s: int  # whole seconds until the window ends, ≥ 1
    checked: bool = True  # False: let through without its own count (late reply, Redis down)

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
        # The highest count Redis has returned per counter key (key and window), with the
        # window's end: a fixed window's count only grows, so a key seen at its quota is over
        # it for the rest of the window, whatever Redis says next.
        self._seen: dict[str, tuple[int, float]] = {}
        self._prune_at = -math.inf
        self._slots: dict[str, _Slot] = {}
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
        ends = (number + 1) * window
        reset_s = max(1, math.ceil(ends - now))
        key = item.key_for("paid", key_id, str(number))
        if not self.shared:
            count = await self.storage.incr(key, window)
            return self._verdict(item, count, reset_s)
        if now >= self._prune_at:
            self._prune(now)
        if self.monotonic() < self._down_until:
            return self._unlimited(item, reset_s, "backoff")
        known = self._seen.get(key, _UNSEEN)[0]  # what Redis said before this call
        batch, place = self._join(key, window, ends)
        reply = batch.reply
        await asyncio.wait((reply,), timeout=self.timeout_s)
        # A busy event loop runs the timer in the same turn as it reads the reply, and resumes
        # the waiters only a turn or two later: give them those turns (any await costs them).
        for _ in range(GRACE_TURNS):
            if reply.done():
                break
            await asyncio.sleep(0)
        if not reply.done():
            # Late, which is not Redis failing: the call goes on (cancelling it would drop its
            # connection) and its count lands in Redis and in ``_seen``. If Redis had said the
            # quota was reached before this call, its own count is over it: refused for sure.
            if known >= item.amount:
                return Verdict(False, item.amount, window, 0, reset_s)
            return self._late(item, key, known, reset_s)
        if reply.exception() is not None:  # ``_send`` logged it and backed off
            return self._unlimited(item, reset_s, "error")
        # The batch's calls took the places just below Redis's count, in the order they came.
        return self._verdict(item, reply.result() - batch.size + place + 1, reset_s)

    def _join(self, key: str, window: int, ends: float) -> tuple[_Batch, int]:
        """This call's batch for ``key`` (the one not yet sent) and its place in it."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        if slot.open is None:
            slot.open = _Batch(asyncio.get_running_loop().create_future())
        batch = slot.open
        if slot.sender is None:
            slot.sender = asyncio.ensure_future(self._send(key, window, ends, slot))
        batch.size += 1
        return batch, batch.size - 1

    async def _send(self, key: str, window: int, ends: float, slot: _Slot) -> None:
        """Send ``key``'s batches one at a time, each one increment of its size, until none is
        waiting. An error (refused, reset, the 1 s socket timeout of a hung Redis) fails the
        batches and leaves Redis alone for ``backoff_s``."""
        try:
            while slot.open is not None:
                batch, slot.open = slot.open, None
                try:
                    count = await self.storage.incr(key, window, amount=batch.size)
                except Exception as exc:
                    self._trouble(exc)
                    for failed in (batch, slot.open):
                        if failed is not None:
                            failed.reply.set_exception(exc)
                            failed.reply.exception()  # retrieved: late waiters went on
                    slot.open = None
                    return
                batch.reply.set_result(count)
                if count > self._seen.get(key, _UNSEEN)[0]:
                    self._seen[key] = (count, ends)
                if self._down:
                    self._down = False
                    self._log("rate limits: Redis answers again; limits apply")
        finally:
            if self._slots.get(key) is slot:
                del self._slots[key]

    def _trouble(self, exc: BaseException) -> None:
        # A Redis that failed may come back empty: what it said before counts no more.
        self._seen.clear()
        self._down = True
        self._down_until = self.monotonic() + self.backoff_s
        self._log(
            f"rate limits: Redis unavailable ({type(exc).__name__}); paid requests go on unlimited"
        )

    def _prune(self, now: float) -> None:
        """Forget the counts of windows that have ended (at most once a second)."""
        self._seen = {key: seen for key, seen in self._seen.items() if seen[1] > now}
        self._prune_at = now + PRUNE_EVERY_S

    def _late(self, item: RateLimitItem, key: str, known: int, reset_s: int) -> Verdict:
        """Admitted without its own count. The headers say what Redis has said of this window
        (an upper bound of what is left), when it has said anything."""
        if self._unchecked is not None:
            self._unchecked.inc(reason="late")
        seen = self._seen.get(key)
        remaining = None if seen is None else max(0, item.amount - max(seen[0], known + 1))
        return Verdict(True, item.amount, item.get_expiry(), remaining, reset_s, checked=False)

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

    def _unlimited(self, item: RateLimitItem, reset_s: int, reason: str) -> Verdict:
        if self._unchecked is not None:
            self._unchecked.inc(reason=reason)
        return Verdict(True, item.amount, item.get_expiry(), None, reset_s, checked=False)

    def _log(self, message: str) -> None:
        now = self.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message)
