"""The rate limiter's pieces that need no server: header syntax, clock-aligned windows, the
Redis URL kept secret, and what a shared count does when Redis's replies come late
or fail (counts in memory stand in for Redis, its replies held back or failed at will)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from limits import parse
from pydantic import SecretStr, ValidationError

from meterapi.config import Settings
from meterapi.metering.ratelimit import RateLimiter, Verdict
from meterapi.metrics import Metrics


def test_headers_follow_the_ietf_syntax() -> None:
    counted = Verdict(allowed=True, quota=100, window_s=60, remaining=57, reset_s=12)
    assert counted.headers() == [
        (b"ratelimit-policy", b'"default";q=100;w=60'),
        (b"ratelimit", b'"default";r=57;t=12'),
    ]
    unchecked = Verdict(allowed=True, quota=100, window_s=60, remaining=None, reset_s=12)
    assert unchecked.headers() == [(b"ratelimit-policy", b'"default";q=100;w=60')]


async def test_windows_are_aligned_to_the_clock() -> None:
    now = [1_000_000_000.25]  # a quarter of a second into a second, 40 s into a minute
    limiter = RateLimiter(redis_url=None, clock=lambda: now[0])
    per_minute = parse("2/minute")
    first = await limiter.hit(per_minute, "key_a")
    assert (first.allowed, first.remaining, first.reset_s) == (True, 1, 20)
    assert (await limiter.hit(per_minute, "key_a")).remaining == 0
    over = await limiter.hit(per_minute, "key_a")
    assert (over.allowed, over.remaining, over.reset_s) == (False, 0, 20)
    assert (await limiter.hit(per_minute, "key_b")).allowed  # per key
    now[0] += 20  # the next minute: a fresh count
    again = await limiter.hit(per_minute, "key_a")
    assert (again.allowed, again.remaining, again.reset_s) == (True, 1, 60)


def test_the_redis_url_is_a_secret() -> None:
    settings = Settings(_env_file=None, redis_url="redis://:hunter2@db:6379/0")  # type: ignore[call-arg]
    assert isinstance(settings.redis_url, SecretStr)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(RateLimiter(redis_url=settings.redis_url))
    assert Settings(_env_file=None, redis_url="").redis_url is None  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, redis_url="http://:hunter2@db")  # type: ignore[call-arg]
    assert "hunter2" not in str(raised.value)


class Scripted:
    """Shared counts in memory whose replies the test holds back or turns into errors: Redis,
    with its timing in the test's hands. Like Redis, a count moves when the round trip arrives,
    whether or not its reply is read in time."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls = 0  # round trips
        self.held = asyncio.Event()
        self.held.set()  # replies go out at once
        self.error: Exception | None = None

    async def add(self, increments: Sequence[tuple[str, int, int]]) -> list[int]:
        self.calls += 1
        error = self.error
        totals = []
        if error is None:
            for key, _, amount in increments:
                self.counts[key] = self.counts.get(key, 0) + amount
                totals.append(self.counts[key])
        await self.held.wait()
        if error is not None:
            raise error
        return totals

    async def close(self) -> None:
        pass


NOW = 1_000_000_000.25


def shared(now: list[float], clock: list[float] | None = None) -> tuple[RateLimiter, Scripted]:
    """A limiter counting in a ``Scripted`` storage, its clocks in ``now`` (and ``clock``)."""
    monotonic = clock if clock is not None else [0.0]
    limiter = RateLimiter(
        redis_url=SecretStr("redis://127.0.0.1:1/0"),  # never dialled: the storage is replaced
        unchecked=Metrics().rate_limit_unchecked,
        timeout_s=0.005,
        backoff_s=1.0,
        clock=lambda: now[0],
        monotonic=lambda: monotonic[0],
    )
    storage = Scripted()
    limiter.counts = storage
    return limiter, storage


def unchecked(limiter: RateLimiter, reason: str) -> float:
    assert limiter._unchecked is not None
    return limiter._unchecked.value(reason=reason)


async def settle() -> None:
    """Let calls whose replies were released finish (a few turns of the loop)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_late_reply_lets_the_call_through_and_still_counts() -> None:
    limiter, storage = shared([NOW])
    item = parse("5/second")
    assert (await limiter.hit(item, "k")).remaining == 4
    storage.held.clear()
    late = await limiter.hit(item, "k")
    assert late.allowed and not late.checked
    assert late.remaining == 3  # at most: Redis had said 1, this call made it 2 or more
    assert unchecked(limiter, "late") == 1
    storage.held.set()
    await settle()
    # Not a failure: the next call asks Redis at once, and its count follows the late one's.
    after = await limiter.hit(item, "k")
    assert after.checked and after.remaining == 2
    assert storage.calls == 3 and unchecked(limiter, "backoff") == 0


async def test_a_late_call_of_a_key_seen_at_its_quota_is_refused() -> None:
    now = [NOW]
    limiter, storage = shared(now)
    item = parse("3/second")
    assert (await limiter.hit(item, "k")).allowed
    storage.held.clear()
    # Count 2, its reply held; then two calls wait for their turn (one call of a key at a
    # time): Redis has not said 3 or 4 yet, so they go on.
    late = [await limiter.hit(item, "k") for _ in range(3)]
    assert all(v.allowed and not v.checked for v in late)
    assert storage.calls == 2
    storage.held.set()
    await settle()  # the held reply lands, then the two waiting calls go as one: Redis says 4
    assert storage.calls == 3
    storage.held.clear()
    # Late again, but Redis said 4 before this call: its count is 5 or more.
    refused = await limiter.hit(item, "k")
    assert (refused.allowed, refused.checked, refused.remaining) == (False, True, 0)
    assert storage.calls == 4 and unchecked(limiter, "late") == 3
    assert (await limiter.hit(item, "other")).allowed  # another key: nothing known, let through
    now[0] += 1  # the next window: nothing known either
    assert (await limiter.hit(item, "k")).allowed
    storage.held.set()
    await settle()
    assert (await limiter.hit(item, "k")).remaining == 1  # counted from a fresh count


async def test_calls_that_come_together_are_counted_in_one_round_trip() -> None:
    limiter, storage = shared([NOW])
    item = parse("4/second")
    verdicts = await asyncio.gather(*(limiter.hit(item, "k") for _ in range(6)))
    assert storage.calls == 1  # one increment of 6
    assert [(v.allowed, v.remaining) for v in verdicts] == [
        (True, 3), (True, 2), (True, 1), (True, 0), (False, 0), (False, 0)
    ]  # fmt: skip
    assert all(v.checked for v in verdicts)
    others = await asyncio.gather(*(limiter.hit(item, f"k{i}") for i in range(5)))
    assert storage.calls == 2  # every key's calls in one round trip
    assert [v.remaining for v in others] == [3] * 5


async def test_a_refusal_from_redis_is_remembered_for_the_window() -> None:
    limiter, storage = shared([NOW])
    item = parse("1/minute")
    storage.counts[item.key_for("paid", "k", str(int(NOW // 60)))] = 7  # other workers' calls
    assert not (await limiter.hit(item, "k")).allowed  # Redis says 8
    storage.held.clear()
    assert not (await limiter.hit(item, "k")).allowed  # late, refused all the same
    assert unchecked(limiter, "late") == 0


async def test_an_error_forgets_what_redis_said() -> None:
    clock = [0.0]
    limiter, storage = shared([NOW], clock)
    item = parse("1/second")
    await limiter.hit(item, "k")
    assert not (await limiter.hit(item, "k")).allowed
    storage.error = ConnectionError("reset")
    assert (await limiter.hit(item, "k")).allowed  # failed open
    storage.counts.clear()  # Redis comes back empty
    storage.error = None
    clock[0] += 1.0
    storage.held.clear()
    assert (await limiter.hit(item, "k")).allowed  # late: what was known went with the error


async def test_an_error_backs_off_and_redis_is_asked_again_after() -> None:
    clock = [0.0]
    limiter, storage = shared([NOW], clock)
    item = parse("5/second")
    storage.error = ConnectionError("refused")
    failed = await limiter.hit(item, "k")
    assert (failed.allowed, failed.checked, failed.remaining) == (True, False, None)
    assert unchecked(limiter, "error") == 1
    storage.error = None
    skipped = await limiter.hit(item, "k")
    assert skipped.allowed and skipped.remaining is None
    assert unchecked(limiter, "backoff") == 1 and storage.calls == 1
    clock[0] += 1.0  # the backoff is over
    assert (await limiter.hit(item, "k")).remaining == 4
    assert storage.calls == 2


async def test_the_error_of_a_late_call_backs_off_too() -> None:
    clock = [0.0]
    limiter, storage = shared([NOW], clock)
    item = parse("5/second")
    storage.held.clear()
    storage.error = TimeoutError("no reply in 1 s")  # the socket timeout of a hung Redis
    assert not (await limiter.hit(item, "k")).checked
    assert unchecked(limiter, "late") == 1 and unchecked(limiter, "error") == 0
    storage.error = None
    storage.held.set()
    await settle()
    assert (await limiter.hit(item, "k")).remaining is None
    assert unchecked(limiter, "backoff") == 1 and storage.calls == 1
    clock[0] += 1.0
    assert (await limiter.hit(item, "k")).checked


async def test_ended_windows_are_forgotten() -> None:
    now = [NOW]
    limiter, _ = shared(now)
    for i in range(3):
        await limiter.hit(parse("1/second"), f"k{i}")
    await limiter.hit(parse("1/day"), "k0")
    await settle()
    assert len(limiter._seen) == 4
    now[0] += 1.0
    await limiter.hit(parse("1/second"), "k0")
    await settle()
    assert len(limiter._seen) == 2  # the day's count, and the new second's


async def test_a_call_given_up_by_its_client_leaves_its_batch_alone() -> None:
    limiter, storage = shared([NOW])
    limiter.timeout_s = 1.0
    item = parse("5/second")
    storage.held.clear()
    calls = [asyncio.ensure_future(limiter.hit(item, "k")) for _ in range(3)]
    await settle()
    calls[1].cancel()  # the client went away
    storage.held.set()
    first, _, third = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(first, Verdict) and isinstance(third, Verdict)
    assert (first.remaining, third.remaining) == (4, 2)  # the cancelled call kept its place


async def test_the_process_own_counts_of_ended_windows_are_forgotten() -> None:
    now = [NOW]
    limiter = RateLimiter(redis_url=None, clock=lambda: now[0])
    for i in range(3):
        assert (await limiter.hit(parse("1/second"), f"k{i}")).allowed
    assert not (await limiter.hit(parse("1/second"), "k0")).allowed
    await limiter.hit(parse("1/day"), "k0")
    assert len(limiter._local) == 4
    now[0] += 1.0
    assert (await limiter.hit(parse("1/second"), "k0")).allowed  # a new window, a new count
    assert len(limiter._local) == 2  # the day's count, and the new second's
