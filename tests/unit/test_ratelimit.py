"""The rate limiter's pieces that need no server: header syntax, clock-aligned windows, the
Redis address, and the URL kept secret."""

from __future__ import annotations

import pytest
from limits import parse
from pydantic import SecretStr, ValidationError

from meterapi.config import Settings
from meterapi.metering.ratelimit import RateLimiter, Verdict, storage_uri


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


def test_redis_addresses() -> None:
    assert storage_uri("redis://:pw@h:6379/2") == "async+redis://:pw@h:6379/2"
    assert storage_uri("rediss://h:6380") == "async+rediss://h:6380"
    with pytest.raises(ValueError, match="redis://"):
        storage_uri("http://h")


def test_the_redis_url_is_a_secret() -> None:
    settings = Settings(_env_file=None, redis_url="redis://:hunter2@db:6379/0")  # type: ignore[call-arg]
    assert isinstance(settings.redis_url, SecretStr)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(RateLimiter(redis_url=settings.redis_url))
    assert Settings(_env_file=None, redis_url="").redis_url is None  # type: ignore[call-arg]
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, redis_url="http://:hunter2@db")  # type: ignore[call-arg]
    assert "hunter2" not in str(raised.value)
