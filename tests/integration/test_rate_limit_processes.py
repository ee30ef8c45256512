"""Rate limits through real ``meterapi serve --workers 2`` processes sharing a real Redis: one
quota per key across workers, an operator's override without a restart, 429s never billed, and
Redis stopped mid-run (requests go on, counted in /metrics; limits return with Redis)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import stripe

from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.integration.gateway_support import paying_customer
from tests.integration.redis_support import PrivateRedis, shared_redis_url
from tests.integration.servers import ServeCommand, flush_usage
from tests.integration.test_rate_limits import POLICY, STATE
from tests.integration.totals import ledger_total, stripe_total

PEPPER = "rate-limit-process-tests-pepper"
CLIENTS = 24  # connections at once: both workers take some


def serve_env(
    db_url: str, emulator: EmulatorServer, price: str, *, redis_url: str, rate: str
) -> dict[str, str]:
    return {
        "METERAPI_DATABASE_URL": db_url,
        "METERAPI_STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "METERAPI_STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
        "METERAPI_KEY_PEPPER": PEPPER,
        "METERAPI_STRIPE_API_BASE": emulator.url,
        "METERAPI_STRIPE_PRICE_ID": price,
        "METERAPI_REPORT_INTERVAL_S": "0.3",
        "METERAPI_RATE_LIMIT": rate,
        "METERAPI_REDIS_URL": redis_url,
        # A loaded test machine can keep a worker's Redis call waiting far past the 5 ms
        # default; these tests are about counting (the timeout has its own below).
        "METERAPI_REDIS_TIMEOUT_S": "1",
    }


async def burst(url: str, key: str, count: int) -> list[httpx.Response]:
    """``count`` calls of /v1/data, CLIENTS at a time, each client on its own connection."""
    queue = list(range(count))
    answers: list[httpx.Response] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            while queue:
                queue.pop()
                answers.append(await http.get("/v1/data", headers={"X-API-Key": key}))

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return answers


def policy_quota(response: httpx.Response) -> int:
    match = POLICY.match(response.headers["ratelimit-policy"])
    assert match is not None
    return int(match[1])


def remaining(response: httpx.Response) -> int:
    match = STATE.match(response.headers["ratelimit"])
    assert match is not None
    return int(match[1])


def limits_set(env: dict[str, str], customer: str, rate: str) -> None:
    """``meterapi limits set --customer <cus> --rate <rate>``, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "meterapi.cli", "limits", "set", "--customer", customer,
         "--rate", rate],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_two_workers_share_each_keys_quota(
    db_url: str,
    tmp_path: Path,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    payer = await paying_customer(db_url, stripe_sdk, pepper=PEPPER)
    env = serve_env(
        db_url, stripe_emulator, stripe_price, redis_url=shared_redis_url(), rate="20/day"
    )
    service = ServeCommand(env, log_path=tmp_path / "serve.log", cwd=tmp_path, workers=2)
    await asyncio.to_thread(service.start)
    try:
        answers = await burst(service.url, payer.key, 60)
        ok = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(ok) + len(refused) == 60
        billed = len(ok)
        # One count for the key across both workers: each call took its own place in it.
        assert_one_count(ok, 20)
        for answer in refused:
            assert answer.json()["error"]["code"] == "rate_limited"
            assert remaining(answer) == 0
            state = STATE.match(answer.headers["ratelimit"])
            assert state is not None and answer.headers["retry-after"] == state[2]

        # The operator raises this customer's limit: every worker applies it, no restart.
        await asyncio.to_thread(limits_set, env, payer.customer, "30/day")
        raised: list[httpx.Response] = []
        async with asyncio.timeout(90):  # generous: a loaded machine, not the feed, is slow
            while not raised or policy_quota(raised[-1]) != 30:
                raised = await burst(service.url, payer.key, 1)
        await asyncio.sleep(1.0)  # the other worker's check-in (keys.invalidation: ≤ 0.5 s)
        more = raised + await burst(service.url, payer.key, 50)
        assert all(policy_quota(a) == 30 for a in more[1:])
        more_ok = [a for a in more if a.status_code == 200]
        assert_one_count(more_ok, 30)  # a new quota, counted afresh
        billed += len(more_ok)
        assert await asyncio.to_thread(service.terminate)
    finally:
        service.kill()

    # 429s are neither recorded nor billed: Stripe has exactly the 2xx.
    await flush_usage(env)
    assert await ledger_total(db_url) == billed
    assert await stripe_total(emulator_control, payer.customer) == billed


def assert_one_count(ok: list[httpx.Response], quota: int) -> None:
    """The 2xx took distinct places of one count shared by the workers: every place, when every
    call was counted. A 2xx without RateLimit went on unchecked (Redis did not answer in time,
    which an overloaded machine can cause); its place may or may not have been taken."""
    places = sorted(remaining(a) for a in ok if "ratelimit" in a.headers)
    assert len(set(places)) == len(places), places  # no place given twice
    if len(places) == len(ok):
        assert places == list(range(quota))
    else:
        assert len(places) <= quota and all(0 <= p < quota for p in places)


async def until_limited(url: str, key: str) -> list[httpx.Response]:
    """Bursts of calls until one is refused with 429 (at most 90 s)."""
    answers: list[httpx.Response] = []
    async with asyncio.timeout(90):
        while not any(a.status_code == 429 for a in answers):
            answers += await burst(url, key, 10)
            await asyncio.sleep(0.1)
    return answers


def _unchecked(metrics: str) -> float:
    found = re.findall(r"^meterapi_rate_limit_unchecked_total\{[^}]*\} (\S+)$", metrics, re.M)
    return sum(float(value) for value in found)


async def test_redis_stopped_mid_run_fails_open_then_limits_return(
    db_url: str,
    tmp_path: Path,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
) -> None:
    payer = await paying_customer(db_url, stripe_sdk, pepper=PEPPER)
    redis_server = PrivateRedis(tmp_path / "redis.log").start()
    env = serve_env(db_url, stripe_emulator, stripe_price, redis_url=redis_server.url, rate="5/day")
    service = ServeCommand(env, log_path=tmp_path / "serve.log", cwd=tmp_path, workers=2)
    await asyncio.to_thread(service.start)
    billed = 0
    try:
        # The limit holds (a call that met a slow first connection may have gone through).
        first = await until_limited(service.url, payer.key)
        counted = [a for a in first if "ratelimit" in a.headers]
        assert [a.status_code for a in counted].count(200) <= 5
        billed += sum(a.status_code == 200 for a in first)

        redis_server.kill()
        during = await burst(service.url, payer.key, 40)
        assert [a.status_code for a in during] == [200] * 40  # fail open, never a 5xx
        assert all("ratelimit" not in a.headers for a in during)
        assert all(policy_quota(a) == 5 for a in during)
        billed += 40
        async with httpx.AsyncClient(base_url=service.url) as http:
            assert _unchecked((await http.get("/metrics")).text) >= 40

        # Redis is back (empty: the counts start again); each worker reconnects by itself.
        redis_server.start()
        after = await until_limited(service.url, payer.key)
        assert all(a.status_code in (200, 429) for a in after)
        counted_ok = [a for a in after if a.status_code == 200 and "ratelimit" in a.headers]
        assert len(counted_ok) <= 5
        billed += sum(a.status_code == 200 for a in after)
        assert await asyncio.to_thread(service.terminate)
    finally:
        service.kill()
        redis_server.kill()

    log = (tmp_path / "serve.log").read_text()
    # Said, but not once per request: at most once a minute in each worker.
    assert 1 <= log.count("Redis unavailable") <= 2, log[-3000:]
    await flush_usage(env)
    assert await ledger_total(db_url) == billed
    assert await stripe_total(emulator_control, payer.customer) == billed
