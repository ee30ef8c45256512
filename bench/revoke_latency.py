"""How long ``DELETE /v1/keys/{id}`` takes, end to end, against a real service with N workers.

Since a revocation waits until every live process has acknowledged it (``keys.heartbeat``), its
latency depends on the backend and the worker count. This seeds one customer with ``--revokes``
+ 1 keys, warms every key in the workers' caches, then revokes them one by one and prints p50,
p95 and max in milliseconds. The database must already be migrated.

    .venv/bin/python -m bench.revoke_latency --database-url URL --workers 2 [--port 18600]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httpx

from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer


async def seed(database_url: str, keys: int) -> list[tuple[str, str]]:
    pepper = Settings(_env_file=None, database_url=database_url).pepper_bytes()  # type: ignore[call-arg]
    engine = make_engine(database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(
                stripe_customer_id=f"cus_revoke{time.time_ns()}", subscription_status="active"
            )
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            issued = []
            for _ in range(keys):
                key, plaintext = await service.issue(
                    session, customer_id=customer.id, policy=KeyPolicy(pepper=pepper, live=False)
                )
                issued.append((key.id, plaintext))
            return issued
    finally:
        await engine.dispose()


async def measure(url: str, keys: list[tuple[str, str]]) -> list[float]:
    keeper, *doomed = keys
    fresh = httpx.Limits(max_keepalive_connections=0)  # spread the warm-up over the workers
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=fresh) as warm:
        for _, key in doomed:
            for _ in range(4):
                assert (await warm.get("/v1/data", headers={"X-API-Key": key})).status_code == 200
    took = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        for key_id, _ in doomed:
            started = time.perf_counter()
            response = await api.delete(f"/v1/keys/{key_id}", headers={"X-API-Key": keeper[1]})
            took.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 204, response.text
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--revokes", type=int, default=50)
    parser.add_argument("--port", type=int, default=18600)
    args = parser.parse_args()
    keys = asyncio.run(seed(args.database_url, args.revokes + 1))
    command = [
        sys.executable, "-m", "uvicorn", "meterapi.app:create_app", "--factory",
        "--port", str(args.port), "--workers", str(args.workers), "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "METERAPI_DATABASE_URL": args.database_url}
    server = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(3)  # every worker up and checked in
        took = asyncio.run(measure(url, keys))
    finally:
        server.terminate()
        server.wait(timeout=60)
    backend = "postgresql" if args.database_url.startswith("postgresql") else "sqlite"
    quantiles = statistics.quantiles(took, n=20)
    print(
        f"{backend} workers={args.workers} revokes={len(took)}: "
        f"p50 {statistics.median(took):.1f} ms, p95 {quantiles[18]:.1f} ms, max {max(took):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
