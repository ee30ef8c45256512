"""Rate limits on paid routes: one count per API key, shared through Redis or kept in the process.

``RateLimiter.hit(item, key_id)`` counts one call of ``key_id`` against ``item`` (the customer's
rate limit, ``metering.limits_cache``) and returns a ``Verdict``: allowed or not, and what the
RateLimit headers say (CONTRACT §7).

The algorithm is the ``limits`` package's fixed window, with windows aligned to the clock: the
window's number is part of the counter's key, so a window ends for every worker and replica at
the same instant, and one increment answers everything: allowed (count ≤ quota), remaining
(quota - count), and the reset (the window's end, from the clock). The sliding-window counter
and the moving window need a second round trip for the remaining count, which measured about
twice the CPU per request (docs/limits.md). The price of the fixed window: up to twice the quota
can pass across a window's boundary; over any longer span the count holds.

Storage: without ``METERAPI_REDIS_URL``, a dict of the process's own (each process counts
alone; a plain increment with no await: ``hit`` measured 2.5 µs against 3.8 µs through the
``limits`` package's async memory storage, in a loop of calls on one process); with it,
one count per key in Redis, shared by every process. A Redis round trip costs the client
several times what the rest of a call's check does, so a process sends its
calls in batches, one round trip in flight at a time: the calls that arrive while one is under
way wait for the next, which carries, for every key, one increment of how many came. A batch of
``n`` calls of a key that brings its count to ``c`` takes the places ``c - n + 1 … c`` in the
order the calls came: the same answers as ``n`` increments one after the other. The round trip
is one script call over one connection (``metering.redis_counts``): one reply to parse per round
trip, not one per key (measured in docs/limits.md).

Redis failing never fails a request, and a request waits for it ``timeout_s`` at most from when
its batch opened (plus the few turns of the event loop a reply needs to be read; one timer per
batch):

- a *late* reply is not a failure (a saturated process's own event loop is slower than Redis):
  the call goes on and its count still lands in Redis. The call is let through (reason
  ``late`` in ``meterapi_rate_limit_unchecked_total``) unless Redis had already put the key at
  its quota in this window before the call was sent: its own count is then surely over the
  quota (a fixed window's count only grows), and it is refused. Each process keeps, per
  counter key, the highest count Redis has returned, for that and for the headers of a late
  call (an upper bound of what is left); forgotten when the window ends or Redis fails;
- an error (refused, reset, or the 1 s socket timeout of a hung Redis) lets the calls of that
  round trip through unlimited (reason ``error``) and leaves Redis alone for ``backoff_s``
  (reason ``backoff``); then the next call tries again: the client reconnects by itself;
- the log says so at most once a minute, and says when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from limits import RateLimitItem
from pydantic import SecretStr

from meterapi.metering.redis_counts import RedisCounts
from meterapi.metrics import Counter

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.005
DEFAULT_BACKOFF_S = 1.0
LOG_EVERY_S = 60.0
BACKGROUND_TIMEOUT_S = 1.0  # a round trip no request waits for any more: Redis is hung
GRACE_TURNS = 3
PRUNE_EVERY_S = 1.0

_UNSEEN = (0, 0.0)


class SharedCounts(Protocol):
    """Where the shared counts live: ``add`` applies increments ``(key, window s, amount)``
    and returns each key's count after its own."""

    async def add(self, increments: Sequence[tuple[str, int, int]]) -> list[int]: ...

    async def close(self) -> None: ...


LATE = -1  # a batch's outcome when Redis's reply did not come in time
FAILED = -2  # ... when the round trip failed


@dataclass(slots=True)
class _Batch:
    """Calls of one key counted together: one increment of ``size``, one outcome: Redis's count
    after the increment, or ``LATE`` ``timeout_s`` (and a few turns) after the batch opened, or
    ``FAILED``. One timer per batch, not one per call; a future per waiting call, so that a call
    cancelled (its client gone) cancels nothing but its own wait."""

    window: int
    ends: float
    loop: asyncio.AbstractEventLoop
    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    outcome: int | None = None
    timer: asyncio.TimerHandle | None = None
    size: int = 0

    def wait(self) -> asyncio.Future[int]:
        waiter = self.loop.create_future()
        if self.outcome is None:
            self.waiters.append(waiter)
        else:  # already late, and not sent yet: so is this call
            waiter.set_result(self.outcome)
        return waiter

    def decide(self, outcome: int) -> None:
        if self.outcome is None:
            self.outcome = outcome
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(outcome)
        if self.timer is not None:
            self.timer.cancel()


def _give_up(batch: _Batch, turns: int) -> None:
    """A busy event loop runs a timer in the same turn as it reads the reply, and sets the
    outcome a turn or two later: give it those turns before calling the batch late."""
    if batch.outcome is not None:
        return
    if turns > 0:
        batch.loop.call_soon(_give_up, batch, turns - 1)
    else:
        batch.decide(LATE)


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
        """``RateLimit-Policy`` and ``RateLimit`` (the latter only when known)."""
        policy = f'"default";q={self.quota};w={self.window_s}'.encode()
        found = [(b"ratelimit-policy", policy)]
        if self.remaining is not None:
            state = f'"default";r={self.remaining};t={self.reset_s}'.encode()
            found.append((b"ratelimit", state))
        return found


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
        # Without Redis: the count per counter key (key and window), with the window's end.
        self._local: dict[str, tuple[int, float]] = {}
        self.counts: SharedCounts | None = (
            None if redis_url is None else RedisCounts(redis_url, timeout_s=BACKGROUND_TIMEOUT_S)
        )
        # The highest count Redis has returned per counter key (key and window), with the
        # window's end: a fixed window's count only grows.
        self._seen: dict[str, tuple[int, float]] = {}
        self._prune_at = -math.inf
        self._open: dict[str, _Batch] = {}  # the batches the next round trip carries
        self._sender: asyncio.Future[None] | None = None

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
        if now >= self._prune_at:
            self._prune(now)
        if self.counts is None:  # a counter of this process's own: no await, no lock
            count = self._local.get(key, _UNSEEN)[0] + 1
            self._local[key] = (count, ends)
            return self._verdict(item, count, reset_s)
        if self.monotonic() < self._down_until:
            return self._unlimited(item, reset_s, "backoff")
        known = self._seen.get(key, _UNSEEN)[0]  # what Redis said before this call
        batch = self._open.get(key)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open[key] = _Batch(window, ends, loop)
            batch.timer = loop.call_later(self.timeout_s, _give_up, batch, GRACE_TURNS)
        place = batch.size
        batch.size += 1
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send(self.counts))
        count = await batch.wait()
        if count == LATE:
            # Late, which is not Redis failing: its count lands in Redis all the same. If Redis
            # had put the key at its quota before this call, its count is over: refused.
            if known >= item.amount:
                return Verdict(False, item.amount, window, 0, reset_s)
            return self._late(item, key, known, reset_s)
        if count == FAILED:  # ``_send`` logged it and backed off
            return self._unlimited(item, reset_s, "error")
        # The batch's calls took the places just below Redis's count, in the order they came.
        return self._verdict(item, count - batch.size + place + 1, reset_s)

    async def _send(self, counts: SharedCounts) -> None:
        """Round trips one at a time, each carrying every batch opened since the last, until
        none is waiting. An error fails every batch, and Redis is left alone for a while."""
        try:
            while self._open:
                sent, self._open = self._open, {}
                try:
                    totals = await counts.add([(k, b.window, b.size) for k, b in sent.items()])
                except Exception as exc:  # refused, reset, hung (socket timeout), …
                    self._trouble(exc)
                    failed, self._open = [*sent.values(), *self._open.values()], {}
                    for batch in failed:
                        batch.decide(FAILED)
                    return
                for (key, batch), count in zip(sent.items(), totals, strict=True):
                    batch.decide(count)
                    if count > self._seen.get(key, _UNSEEN)[0]:
                        self._seen[key] = (count, batch.ends)
                if self._down:
                    self._down = False
                    self._log("rate limits: Redis answers again; limits apply")
        finally:
            self._sender = None

    def _trouble(self, exc: BaseException) -> None:
        self._seen.clear()  # a Redis that failed may come back empty: its word is stale
        self._down = True
        self._down_until = self.monotonic() + self.backoff_s
        self._log(
            f"rate limits: Redis unavailable ({type(exc).__name__}); paid requests go on unlimited"
        )

    def _prune(self, now: float) -> None:
        """Forget the counts of windows that have ended (at most once a second)."""
        self._seen = {key: seen for key, seen in self._seen.items() if seen[1] > now}
        self._local = {key: seen for key, seen in self._local.items() if seen[1] > now}
        self._prune_at = now + PRUNE_EVERY_S

    def _late(self, item: RateLimitItem, key: str, known: int, reset_s: int) -> Verdict:
        """Let through without its own count. The headers say what Redis has said of this
        window (an upper bound of what is left), when it has said anything."""
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

    def _unlimited(self, item: RateLimitItem, reset_s: int, reason: str) -> Verdict:
        if self._unchecked is not None:
            self._unchecked.inc(reason=reason)
        return Verdict(True, item.amount, item.get_expiry(), None, reset_s, checked=False)

    async def start(self, *, settle_s: float = 2.0) -> None:
        """Connect and load the script before the first request (bounded by ``settle_s``): that
        takes round trips a request's ``timeout_s`` is not meant for. Redis being down delays
        nothing."""
        if not isinstance(self.counts, RedisCounts):
            return
        try:
            async with asyncio.timeout(settle_s):
                await self.counts.warm()
        except Exception as exc:
            self._log(f"rate limits: Redis unavailable at start ({type(exc).__name__})")

    async def close(self) -> None:
        if self.counts is not None:
            await self.counts.close()

    def _log(self, message: str) -> None:
        now = self.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message)
