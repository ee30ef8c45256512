"""The cost of verifying an API key on a cache hit (issue 4), in µs per call, in process.

``KeyGuard.authenticate`` in a loop with a warm cache: no SQL is issued in the loop, so this is
the keyed hash, the cache lookups, the access policy and the ``last_used_at`` note.
``python -m bench`` prints it beside the HTTP figures; on its own (SQLite in a temporary
directory by default):

    .venv/bin/python -m bench.keys_bench [--database-url URL] [--rounds 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path

from bench.stack import PEPPER
from meterapi import migrations
from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.guard import KeyGuard
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer


async def seed(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(stripe_customer_id=f"cus_bench{time.time_ns()}")
            customer.subscription_status = "active"
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            _, plaintext = await service.issue(
                session,
                customer_id=customer.id,
                policy=KeyPolicy(pepper=PEPPER.encode(), live=False),
            )
        return plaintext
    finally:
        await engine.dispose()


async def verification_cost(database_url: str, key: str, rounds: int = 200_000) -> float:
    """µs per ``authenticate`` call on a warm cache (no SQL is issued in the loop)."""
    engine = make_engine(database_url)
    settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
    guard = KeyGuard.build(
        settings,
        policy=KeyPolicy(pepper=PEPPER.encode(), live=False),
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
    )
    # Not started: no other process writes keys here, so the cache is trusted for the whole
    # loop (a started guard would stop trusting it while the loop starves its poller).
    guard.cache.trusted_until = math.inf
    try:
        await guard.authenticate(key)
        started = time.perf_counter()
        for _ in range(rounds):
            await guard.authenticate(key)
        return (time.perf_counter() - started) / rounds * 1e6
    finally:
        await guard.invalidator.engine.dispose()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrations.upgrade(database_url)
        key = asyncio.run(seed(database_url))
        micros = asyncio.run(verification_cost(database_url, key, args.rounds))
    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    print(f"verification on a cache hit: {micros:.2f} µs per call ({backend})")


if __name__ == "__main__":
    main()
