"""The cost of verifying an API key on a cache hit (issue 4), in µs per call, in process.

``keys.service.authenticate`` in a loop with a warm ``KeyCache``: no SQL is issued in the loop, so
this is the keyed hash, the format check and the cache lookups. ``python -m bench`` prints it
beside the HTTP figures; on its own (SQLite in a temporary directory by default):

    .venv/bin/python -m bench.keys_bench [--database-url URL] [--rounds 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.stack import PEPPER
from meterapi import migrations
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.cache import KeyCache
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
                session, customer_id=customer.id, pepper=PEPPER.encode(), live=False
            )
        return plaintext
    finally:
        await engine.dispose()


async def verification_cost(database_url: str, key: str, rounds: int = 200_000) -> float:
    """µs per ``authenticate`` call on a warm cache (no SQL is issued in the loop)."""
    engine = make_engine(database_url)
    sessionmaker = make_sessionmaker(engine)
    cache = KeyCache()
    try:
        async with sessionmaker() as session:
            await service.authenticate(session, key, pepper=PEPPER.encode(), cache=cache)
            started = time.perf_counter()
            for _ in range(rounds):
                await service.authenticate(session, key, pepper=PEPPER.encode(), cache=cache)
            return (time.perf_counter() - started) / rounds * 1e6
    finally:
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
