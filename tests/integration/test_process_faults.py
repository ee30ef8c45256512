"""A real service process killed during load: nothing that got a 2xx is lost, nothing doubled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.integration.gateway_support import Payer
from tests.integration.servers import ServiceProcess, flush_usage


class Load:
    """Concurrent clients calling /v1/data until stopped; counts what each call got."""

    def __init__(self, url: str, key: str, *, clients: int = 8) -> None:
        self.url, self.key, self.clients = url, key, clients
        self.ok = 0
        self.failed = 0  # errors and non-2xx: some may have been recorded as they died
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                try:
                    response = await client.get("/v1/data", headers={"X-API-Key": self.key})
                except httpx.HTTPError:
                    self.failed += 1
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code == 200:
                    self.ok += 1
                    self._progress.set()
                else:
                    self.failed += 1

    async def until_ok(self, count: int, *, within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s):
            while self.ok < count:
                self._progress.clear()
                await self._progress.wait()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
async def payer(stack: Stack) -> Payer:
    return await stack.payer(email="load@example.com")


async def test_sigkill_during_load_then_restart(stack: Stack, payer: Payer, tmp_path: Path) -> None:
    customer, key = payer.customer, payer.key
    env = stack.env()
    service = ServiceProcess(env, log_path=tmp_path / "service.log")
    await asyncio.to_thread(service.start)
    load = Load(service.url, key)
    load.start()
    await load.until_ok(150)
    service.kill()  # mid-load: no shutdown, no flush
    await load.stop()
    ok_before, failed_before = load.ok, load.failed
    assert ok_before >= 150

    # Restarted on the same database: what was pending goes out, and new calls add to it.
    restarted = ServiceProcess(env, log_path=tmp_path / "service.log")
    restarted.port, restarted.url = service.port, service.url
    await asyncio.to_thread(restarted.start)
    load = Load(service.url, key, clients=4)
    load.start()
    await asyncio.sleep(0.5)
    await load.stop()
    assert await asyncio.to_thread(restarted.terminate)
    await flush_usage(env)

    ok = ok_before + load.ok
    recorded = await stack.ledger_total()
    # Every 2xx is in the ledger; beyond those, only calls cut off by the kill after their
    # usage was committed (their response was produced but never arrived).
    assert ok <= recorded <= ok + failed_before + load.failed
    assert await stack.stripe_total(customer) == recorded


async def test_sigterm_flushes_before_exit(stack: Stack, payer: Payer, tmp_path: Path) -> None:
    customer, key = payer.customer, payer.key
    env = stack.env()
    env["METERAPI_REPORT_INTERVAL_S"] = "3600"  # only the shutdown flush can send it
    service = ServiceProcess(env, log_path=tmp_path / "service.log")
    await asyncio.to_thread(service.start)
    load = Load(service.url, key, clients=4)
    load.start()
    await load.until_ok(60)
    await load.stop()
    assert await stack.stripe_total(customer) == 0  # nothing sent yet
    assert await asyncio.to_thread(service.terminate)
    assert await stack.ledger_total() == load.ok
    assert await stack.stripe_total(customer) == load.ok
