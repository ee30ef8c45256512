"""The cache, measured in SQL statements (a ``before_cursor_execute`` hook on the app engine)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from meterapi.config import Settings
from meterapi.keys import format as key_format
from meterapi.keys import hashing
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import stripe_settings
from tests.integration import internals
from tests.integration.keys_support import Seeder, count_statements, headers

CALLS = 1000


@pytest.fixture
def settings(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Settings:
    """The reporter's background reads of `customer` would blur the count: keep it asleep."""
    return stripe_settings(db_url, stripe_emulator, stripe_price, report_interval_s=3600)


async def test_a_warm_key_costs_no_key_query(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    with count_statements(app) as cold:
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    assert len(cold.touching_keys()) == 1  # one joined read of the key and its customer
    await internals.flush_last_used(app)
    with count_statements(app) as warm:
        for _ in range(CALLS):
            response = await client.get("/v1/data", headers=headers(key))
            assert response.status_code == 200
    assert warm.touching_keys() == []


class CountingHmac:
    """Stands in for the ``hmac`` module in ``keys.hashing``: counts the keyed hashes."""

    compare_digest = staticmethod(hmac.compare_digest)

    def __init__(self) -> None:
        self.computed = 0

    def new(self, *args: Any, **kwargs: Any) -> Any:
        self.computed += 1
        return hmac.new(*args, **kwargs)


async def test_a_key_is_hashed_once_per_request(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold (read from the database, then cached) or warm, known or not: one HMAC."""
    _, key = await seed.customer_with_key()
    hmacs = CountingHmac()
    monkeypatch.setattr(hashing, "hmac", hmacs)
    with count_statements(app) as cold:
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    assert hmacs.computed == 1 and len(cold.touching_keys()) == 1
    for _ in range(10):
        assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    assert hmacs.computed == 1 + 10
    unknown = key_format.generate(live=False)
    typo = key[:-1] + ("0" if key[-1] != "0" else "1")
    for presented in (unknown, unknown, typo):
        assert (await client.get("/v1/data", headers=headers(presented))).status_code == 401
    assert hmacs.computed == 11 + 3


async def test_concurrent_misses_on_one_key_share_one_read(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder
) -> None:
    """A cold start under load (or a hot key's entry expiring) sends one read, not one per
    request in flight; the same for an unknown key."""
    _, key = await seed.customer_with_key()
    unknown = key_format.generate(live=False)
    with count_statements(app) as log:
        responses = await asyncio.gather(
            *(client.get("/v1/data", headers=headers(key)) for _ in range(50)),
            *(client.get("/v1/data", headers=headers(unknown)) for _ in range(50)),
        )
    assert [r.status_code for r in responses] == [200] * 50 + [401] * 50
    assert len(log.touching_keys()) == 2


async def test_an_inactive_customer_is_refused_from_the_cache(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key(status="canceled")
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 402
    with count_statements(app) as warm:
        for _ in range(100):
            assert (await client.get("/v1/data", headers=headers(key))).status_code == 402
    assert warm.touching_keys() == []


async def test_the_same_unknown_key_is_read_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    unknown = key_format.generate(live=False)
    with count_statements(app) as log:
        for _ in range(CALLS):
            assert (await client.get("/v1/data", headers=headers(unknown))).status_code == 401
    assert len(log.touching_keys()) == 1


async def test_random_keys_cost_one_read_each_then_none(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    randoms = [key_format.generate(live=False) for _ in range(CALLS)]
    with count_statements(app) as first:
        for key in randoms:
            assert (await client.get("/v1/data", headers=headers(key))).status_code == 401
    assert len(first.touching_keys()) == CALLS
    with count_statements(app) as again:
        for key in randoms:
            assert (await client.get("/v1/data", headers=headers(key))).status_code == 401
    assert again.touching_keys() == []


async def test_bad_checksums_cost_no_statement_at_all(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    typos = []
    for _ in range(CALLS):
        key = key_format.generate(live=False)
        typos.append(key[:-1] + ("0" if key[-1] != "0" else "1"))
    with count_statements(app) as log:
        for key in typos:
            assert (await client.get("/v1/data", headers=headers(key))).status_code == 401
    assert log.touching_keys() == []
    # Only background work may run meanwhile: the cache poller's revision read, the usage
    # reporter's cycle (metering) and the outbound deliverer's poll, none of which touches keys.
    assert all(
        "cache_revision" in statement
        or statement == "BEGIN IMMEDIATE"
        or "FROM usage_event" in statement
        or "FROM usage_report" in statement
        or "outbound_event" in statement
        for statement in log.statements
    )
