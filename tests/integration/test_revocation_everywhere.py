"""Revocation is immediate in every process (CONTRACT §3): a real service with two workers.

When ``DELETE /v1/keys/{id}``, the operator's ``DELETE /admin/v1/customers/{cus}/keys/{id}`` or
``meterapi keys revoke`` returns, neither worker serves the key, however warm its cache was: no
200, nothing billed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from meterapi import cli
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import ApiKey, ProcessHeartbeat
from tests.conftest import make_settings
from tests.integration.admin_support import ADMIN, ADMIN_TOKEN
from tests.integration.keys_support import seed_customer
from tests.integration.servers import ServiceProcess

ROUNDS = 3
CLIENTS = 8  # each on connections of its own, so both workers take a share
CALLS = 10  # per client after each revocation


async def _seed(db_url: str, keys: int) -> tuple[str, list[tuple[str, str]]]:
    """One customer (its Stripe id) with ``keys`` keys: (id, plaintext) each."""
    engine = make_engine(db_url)
    pepper = make_settings(db_url).pepper_bytes()
    try:
        sessionmaker = make_sessionmaker(engine)
        stripe_id = "cus_revoked"
        customer_id = await seed_customer(sessionmaker, stripe_customer_id=stripe_id)
        issued = []
        async with session_scope(sessionmaker) as session:
            for _ in range(keys):
                key, plaintext = await key_service.issue(
                    session, customer_id=customer_id, policy=KeyPolicy(pepper=pepper, live=False)
                )
                issued.append((key.id, plaintext))
        return stripe_id, issued
    finally:
        await engine.dispose()


async def _scalar(db_url: str, query: object) -> int:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())  # type: ignore[call-overload]
    finally:
        await engine.dispose()


async def _status(client: httpx.AsyncClient, key: str) -> int:
    """The status of one paid call; 0 if the connection failed (not served either)."""
    try:
        return (await client.get("/v1/data", headers={"X-API-Key": key})).status_code
    except httpx.TransportError:
        return 0


class Callers:
    """``CLIENTS`` clients, each with a connection of its own kept open (the workers share the
    listening socket, so both take a share), ready to call the moment a revocation returns."""

    def __init__(self, url: str) -> None:
        self.clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in range(CLIENTS)]

    async def call(self, key: str, calls: int = CALLS) -> list[int]:
        async def one(client: httpx.AsyncClient) -> list[int]:
            return [await _status(client, key) for _ in range(calls)]

        results = await asyncio.gather(*(one(client) for client in self.clients))
        return [status for statuses in results for status in statuses]

    async def hammer(self, key: str, stop: asyncio.Event) -> list[tuple[float, int]]:
        """Call without pause until ``stop``: (when each call was sent, its status)."""

        async def one(client: httpx.AsyncClient) -> list[tuple[float, int]]:
            seen = []
            while not stop.is_set():
                sent = time.monotonic()
                seen.append((sent, await _status(client, key)))
            return seen

        results = await asyncio.gather(*(one(client) for client in self.clients))
        return [call for calls in results for call in calls]

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> ServiceProcess:
    process = ServiceProcess(
        {"METERAPI_DATABASE_URL": db_url, "METERAPI_ADMIN_TOKEN": ADMIN_TOKEN},
        log_path=tmp_path / "service.log",
        workers=2,
    ).start()
    yield process  # type: ignore[misc]
    process.terminate()


async def _wait_for_both_workers(db_url: str) -> None:
    live = select(func.count()).select_from(ProcessHeartbeat)
    for _ in range(200):
        if await _scalar(db_url, live) >= 2:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("two workers never checked in")


@pytest.mark.parametrize("by", ["customer", "operator"])
async def test_after_delete_returns_no_worker_serves_the_key(
    db_url: str, service: ServiceProcess, by: str
) -> None:
    customer, (keeper, *doomed) = await _seed(db_url, ROUNDS + 1)
    await _wait_for_both_workers(db_url)
    callers = Callers(service.url)
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as api:
            for key_id, key in doomed:
                # Both workers busy serving the key (a busy worker is where a late
                # invalidation shows), then revoked in the middle of it.
                stop = asyncio.Event()
                load = asyncio.create_task(callers.hammer(key, stop))
                await asyncio.sleep(0.5)
                if by == "customer":
                    path, headers = f"/v1/keys/{key_id}", {"X-API-Key": keeper[1]}
                else:
                    path, headers = f"/admin/v1/customers/{customer}/keys/{key_id}", ADMIN
                revoked = await api.delete(path, headers=headers)
                returned = time.monotonic()
                assert revoked.status_code == 204
                after = await callers.call(key)
                stop.set()
                calls = await load
                assert any(status == 200 for _, status in calls)  # it was served before
                late = [status for sent, status in calls if sent > returned] + after
                print(by, len(late), late.count(200), late.count(401), [s for _, s in calls][-5:])
                assert late and 200 not in late, f"{late.count(200)} served after DELETE"
                assert late.count(401) >= len(late) // 2
        assert 200 in await callers.call(keeper[1], calls=1)
    finally:
        await callers.close()


async def test_after_the_cli_revoke_returns_no_worker_serves_the_key(
    db_url: str, service: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERAPI_DATABASE_URL", db_url)
    _, (keeper, *doomed) = await _seed(db_url, 3)
    await _wait_for_both_workers(db_url)
    callers = Callers(service.url)
    try:
        for key_id, key in doomed:
            assert 200 in await callers.call(key)
            assert await asyncio.to_thread(cli.main, ["keys", "revoke", key_id]) == 0
            statuses = await callers.call(key)
            assert 200 not in statuses, f"{statuses.count(200)} served after the CLI revoke"
            assert statuses.count(401) >= len(statuses) // 2
        assert 200 in await callers.call(keeper[1], calls=1)
    finally:
        await callers.close()
    revoked = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_not(None))  # type: ignore[union-attr]
    assert await _scalar(db_url, revoked) == 2
