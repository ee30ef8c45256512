"""Rate limits on paid routes, in one process: counts per key, headers, 429s, overrides, and
failing open when Redis cannot answer."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import stripe
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse
from limits import RateLimitItem, parse
from pydantic import SecretStr
from sqlmodel import func, select

from meterapi import PaidCaller, Usage, create_app
from meterapi.errors import NotFound
from meterapi.metering.ratelimit import RateLimiter
from meterapi.metering.redis_counts import KEY_PREFIX
from meterapi.metrics import Metrics
from meterapi.models import Customer, UsageEvent
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import stripe_settings
from tests.integration import internals
from tests.integration.admin_support import ADMIN, ADMIN_TOKEN
from tests.integration.gateway_support import UpstreamProcess, gateway_file, paying_customer
from tests.integration.keys_support import Seeder, headers
from tests.integration.redis_support import PrivateRedis, shared_redis_url
from tests.integration.servers import free_port

POLICY = re.compile(r'^"default";q=(\d+);w=(\d+)$')
STATE = re.compile(r'^"default";r=(\d+);t=(\d+)$')
DAY = 86_400  # a day's window: no test runs across its end but by a freak of timing


def extra_router() -> APIRouter:
    router = APIRouter(prefix="/t")

    @router.get("/stream")
    async def stream(caller: PaidCaller, usage: Usage) -> StreamingResponse:
        usage.charge(2)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"one\n"
            yield b"two\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @router.get("/missing")
    async def missing(caller: PaidCaller, usage: Usage) -> None:
        usage.charge(1)
        raise NotFound("nothing here")

    return router


@asynccontextmanager
async def serving(settings: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, routers=[extra_router()])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


def limit_state(response: httpx.Response) -> tuple[int, int, int, int]:
    """(quota, window, remaining, seconds to reset) from the RateLimit headers."""
    policy = POLICY.match(response.headers["ratelimit-policy"])
    state = STATE.match(response.headers["ratelimit"])
    assert policy is not None and state is not None, response.headers
    quota, window = int(policy[1]), int(policy[2])
    remaining, reset = int(state[1]), int(state[2])
    assert 1 <= reset <= window
    return quota, window, remaining, reset


@pytest.fixture
def emulated(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Any:
    def settings(**overrides: Any) -> Any:
        return stripe_settings(db_url, stripe_emulator, stripe_price, **overrides)

    return settings


async def test_per_key_quota_headers_and_429_not_billed(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    async with serving(emulated(rate_limit="3/day")) as (app, client):
        seen = []
        for _ in range(3):
            response = await client.get("/v1/data", headers=headers(payer.key))
            assert response.status_code == 200
            seen.append(limit_state(response))
        assert [(q, w, r) for q, w, r, _ in seen] == [(3, DAY, 2), (3, DAY, 1), (3, DAY, 0)]

        refused = await client.get("/v1/data", headers=headers(payer.key))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        quota, _, remaining, reset = limit_state(refused)
        assert (quota, remaining) == (3, 0)
        assert int(refused.headers["retry-after"]) == reset

        # The count is the key's: another key of the same customer has its own.
        seed = Seeder(internals.sessionmaker(app), internals.pepper(app))
        _, second = await seed.key(await _customer_pk(app, payer.customer))
        again = await client.get("/v1/data", headers=headers(second))
        assert again.status_code == 200
        assert limit_state(again)[2] == 2

        # Streaming and refusals after admission carry the headers too; 429s charge nothing.
        streamed = await client.get("/t/stream", headers=headers(second))
        assert streamed.status_code == 200 and streamed.text == "one\ntwo\n"
        assert limit_state(streamed)[2] == 1
        missing = await client.get("/t/missing", headers=headers(second))
        assert missing.status_code == 404
        assert limit_state(missing)[2] == 0
        assert (await client.get("/t/stream", headers=headers(second))).status_code == 429
        assert await ledger_units(app) == 3 + 1 + 2  # the 2xx only


async def ledger_units(app: FastAPI) -> int:
    async with internals.sessionmaker(app)() as session:
        return int(await session.scalar(select(func.coalesce(func.sum(UsageEvent.units), 0))) or 0)


async def _customer_pk(app: FastAPI, stripe_customer_id: str) -> int:
    async with internals.sessionmaker(app)() as session:
        found = await session.scalar(
            select(Customer.id).where(Customer.stripe_customer_id == stripe_customer_id)
        )
    assert found is not None
    return int(found)


async def test_an_operator_override_applies_at_once(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    async with serving(emulated(rate_limit="2/day", admin_token=ADMIN_TOKEN)) as (_, client):
        calls = [await client.get("/v1/data", headers=headers(payer.key)) for _ in range(3)]
        assert [c.status_code for c in calls] == [200, 200, 429]

        async def override(rate: str | None) -> None:
            answer = await client.put(
                f"/admin/v1/customers/{payer.customer}/limits",
                headers=ADMIN,
                json={"rate_limit": rate},
            )
            assert answer.status_code == 200, answer.text

        await override("5/day")  # a new quota counts afresh
        response = await client.get("/v1/data", headers=headers(payer.key))
        assert response.status_code == 200
        assert limit_state(response)[:3] == (5, DAY, 4)

        await override(None)  # no rate limit at all: no headers
        for _ in range(10):
            free = await client.get("/v1/data", headers=headers(payer.key))
            assert free.status_code == 200
            assert "ratelimit" not in free.headers and "ratelimit-policy" not in free.headers

        await override("default")  # back to METERAPI_RATE_LIMIT, already spent
        assert (await client.get("/v1/data", headers=headers(payer.key))).status_code == 429


async def test_no_rate_limit_no_headers(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    async with serving(emulated()) as (_, client):
        response = await client.get("/v1/data", headers=headers(payer.key))
        assert response.status_code == 200
        assert "ratelimit" not in response.headers


async def test_two_processes_share_the_count_through_redis(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient
) -> None:
    url = shared_redis_url()
    payer = await paying_customer(db_url, stripe_sdk)
    # A loaded test machine may keep Redis waiting past the default: this is about sharing.
    settings = emulated(rate_limit="4/day", redis_url=url, redis_timeout_s=0.5)
    async with serving(settings) as (_, a), serving(settings) as (_, b):
        statuses = []
        for client in (a, b, a, b, a, b):
            statuses.append((await client.get("/v1/data", headers=headers(payer.key))).status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]


async def test_redis_unreachable_fails_open(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with serving(emulated(rate_limit="2/day", redis_url=nobody)) as (app, client):
        for _ in range(6):
            response = await client.get("/v1/data", headers=headers(payer.key))
            assert response.status_code == 200
            assert POLICY.match(response.headers["ratelimit-policy"])
            assert "ratelimit" not in response.headers  # not counted: no remaining to tell
        unchecked = internals.rate_limit_unchecked(app)
        assert unchecked.value(reason="error") >= 1
        assert unchecked.value(reason="error") + unchecked.value(reason="backoff") == 6
        metrics = (await client.get("/metrics")).text
        assert "meterapi_rate_limit_unchecked_total" in metrics
        assert await ledger_units(app) == 6


async def counted(limiter: RateLimiter, item: RateLimitItem) -> int:
    """The remaining count of the first call Redis answers in time (at most 30 s of tries: a
    loaded machine can keep even a private Redis waiting past the timeout now and then)."""
    async with asyncio.timeout(30):
        while True:
            verdict = await limiter.hit(item, "key_a")
            if verdict.checked:
                assert verdict.remaining is not None
                return verdict.remaining
            await asyncio.sleep(0.1)


async def test_a_hung_redis_is_given_up_on_then_limits_return(tmp_path: Path) -> None:
    with PrivateRedis(tmp_path / "redis.log") as server:
        unchecked = Metrics().rate_limit_unchecked
        limiter = RateLimiter(
            redis_url=SecretStr(server.url), unchecked=unchecked, timeout_s=0.05, backoff_s=0.05
        )
        await limiter.start()
        item = parse("100/day")
        before = await counted(limiter, item)
        assert 0 <= before < 100
        assert server.process is not None
        late = unchecked.value(reason="late")
        server.process.send_signal(signal.SIGSTOP)  # hung: connected, never answering
        try:
            assert not (await limiter.hit(item, "key_a")).checked  # gave up, went on
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert unchecked.value(reason="late") == late + 1
        await asyncio.sleep(0.1)  # the late call ends: it was late, not a failure
        assert await counted(limiter, item) <= before - 2  # the late call's count landed too
        assert unchecked.value(reason="backoff") == 0
        errors = unchecked.value(reason="error")
        server.kill()
        assert (await limiter.hit(item, "key_a")).remaining is None  # failed open
        assert unchecked.value(reason="error") == errors + 1
        server.start()  # empty: the count starts again
        await asyncio.sleep(0.1)  # past the backoff
        # Counted again, from a fresh count (a call given up on may have taken a place too).
        assert 90 <= await counted(limiter, item) < 100
        await limiter.close()


async def test_calls_sent_together_take_distinct_places_in_redis() -> None:
    url = shared_redis_url()
    limiter = RateLimiter(redis_url=SecretStr(url), timeout_s=1.0)  # about counting, not time
    await limiter.start()
    item = parse("6/day")
    keys = [f"batch-{uuid.uuid4().hex}" for _ in range(2)]
    try:
        verdicts = await asyncio.gather(*(limiter.hit(item, keys[i % 2]) for i in range(16)))
    finally:
        await limiter.close()
    assert all(v.checked for v in verdicts)
    server = redis.Redis.from_url(url)
    try:
        for j, key in enumerate(keys):
            mine = verdicts[j::2]
            allowed = sorted(v.remaining or 0 for v in mine if v.allowed)
            assert allowed == [0, 1, 2, 3, 4, 5]  # each place once
            assert [v.remaining for v in mine if not v.allowed] == [0, 0]
            name = f"{KEY_PREFIX}:{item.key_for('paid', key, str(int(time.time() // DAY)))}"
            assert int(server.get(name) or 0) == 8  # every call counted, refused ones too
            assert 0 < server.ttl(name) <= DAY  # the window's counter expires
    finally:
        server.close()


async def test_the_gateway_is_limited_like_any_paid_route(
    db_url: str, emulated: Any, stripe_sdk: stripe.StripeClient, tmp_path: Path
) -> None:
    payer = await paying_customer(db_url, stripe_sdk)
    with UpstreamProcess(tmp_path / "upstream.log") as upstream:
        settings = emulated(
            rate_limit="3/day",
            gateway_file=gateway_file(tmp_path),
            upstream_url=upstream.url,
        )
        async with serving(settings) as (app, client):
            answers = [await client.get("/echo/a", headers=headers(payer.key)) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429]
            assert [limit_state(a)[2] for a in answers] == [2, 1, 0, 0]
            assert answers[3].json()["error"]["code"] == "rate_limited"
            assert upstream.seen() == ["/echo/a"] * 3  # the refused call never went up
            assert await ledger_units(app) == 3 * 2  # the route's 2 units, for the 2xx only
