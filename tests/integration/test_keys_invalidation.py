"""Revocation and access changes reach every process: a second app on the same database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlmodel import select

from meterapi.app import create_app
from meterapi.db import is_postgres, make_engine, make_sessionmaker, session_scope
from meterapi.keys import invalidation
from meterapi.keys.cache import KeyCache
from meterapi.models import CacheRevision, Customer, ProcessHeartbeat
from tests.conftest import make_settings
from tests.integration import internals
from tests.integration.keys_support import Seeder, headers

# Bounds on staleness (see keys.invalidation): NOTIFY delivery on PostgreSQL, the 0.5 s poll
# on SQLite. Generous here so a loaded machine does not make the suite flaky.
SETTLE_S = 3.0


@asynccontextmanager
async def running(db_url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(make_settings(db_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


async def settle(condition: Callable[[], bool]) -> float:
    """Wait until ``condition`` holds (at most SETTLE_S); returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < SETTLE_S, "the other process was not told"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_revocation_reaches_a_second_process(db_url: str, seed: Seeder) -> None:
    async with running(db_url) as (_app_a, a), running(db_url) as (app_b, b):
        _, key = await seed.customer_with_key()
        created = (await a.post("/v1/keys", headers=headers(key))).json()
        doomed = created["api_key"]
        assert (await b.get("/v1/data", headers=headers(doomed))).status_code == 200
        assert (await b.get("/v1/data", headers=headers(key))).status_code == 200
        cache_b = internals.key_cache(app_b)
        generation = cache_b.generation

        revoked = await a.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
        assert revoked.status_code == 204
        assert (await a.get("/v1/data", headers=headers(doomed))).status_code == 401  # at once
        await settle(lambda: cache_b.generation > generation)
        refused = await b.get("/v1/data", headers=headers(doomed))
        assert refused.status_code == 401
        assert (await b.get("/v1/data", headers=headers(key))).status_code == 200


@pytest.mark.postgres_only
async def test_postgres_notify_reaches_the_listener_quickly(db_url: str, seed: Seeder) -> None:
    async with running(db_url) as (_app_a, a), running(db_url) as (app_b, b):
        assert internals.invalidator(app_b).listening.is_set()
        _, key = await seed.customer_with_key()
        created = (await a.post("/v1/keys", headers=headers(key))).json()
        assert (await b.get("/v1/data", headers=headers(created["api_key"]))).status_code == 200
        assert (await b.get("/v1/data", headers=headers(key))).status_code == 200
        cache_b = internals.key_cache(app_b)
        generation = cache_b.generation

        # Stop B's poller: from here on only NOTIFY can tell B (the backstop poll cannot).
        invalidator = internals.invalidator(app_b)
        for task in invalidator._tasks:
            if task.get_name() == "key-cache-poller":
                task.cancel()
        await a.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
        await settle(lambda: cache_b.generation > generation)
        # Delivered by NOTIFY, and targeted: the other key stays.
        assert internals.key_cache(app_b).revision is not None
        assert (await b.get("/v1/data", headers=headers(created["api_key"]))).status_code == 401
        ok = await b.get("/v1/data", headers=headers(key))
        assert ok.status_code == 200


async def _cancel_outside_the_app(db_url: str, stripe_customer_id: str) -> None:
    """What billing does on customer.subscription.deleted: change state, bump, commit."""
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = (
                await session.exec(
                    select(Customer).where(Customer.stripe_customer_id == stripe_customer_id)
                )
            ).one()
            customer.subscription_status = "canceled"
            session.add(customer)
            assert customer.id is not None
            await invalidation.bump(session, customer_id=customer.id)
    finally:
        await engine.dispose()


async def test_an_access_change_reaches_every_process(db_url: str, seed: Seeder) -> None:
    async with running(db_url) as (app_a, a), running(db_url) as (app_b, b):
        _, key = await seed.customer_with_key()
        for client in (a, b):
            assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
        caches = [internals.key_cache(app) for app in (app_a, app_b)]
        generations = [cache.generation for cache in caches]
        await _cancel_outside_the_app(db_url, "cus_alpha")
        for cache, generation in zip(caches, generations, strict=True):
            await settle(lambda c=cache, g=generation: c.generation > g)
        for client in (a, b):
            response = await client.get("/v1/data", headers=headers(key))
            assert response.status_code == 402
            assert response.json()["error"]["code"] == "subscription_inactive"


async def test_a_change_in_this_process_applies_on_commit_only(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder
) -> None:
    customer_id, key = await seed.customer_with_key()
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 200
    app_sessions = internals.sessionmaker(app)
    async with app_sessions() as session:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        customer.subscription_status = "unpaid"
        session.add(customer)
        await invalidation.bump(session, customer_id=customer_id)
        await session.rollback()  # nothing changed, so nothing to forget
    assert internals.key_cache(app).customer(customer_id) is not None
    async with session_scope(app_sessions) as session:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        customer.subscription_status = "unpaid"
        session.add(customer)
        await invalidation.bump(session, customer_id=customer_id)
    # Same process: no waiting at all, the commit itself dropped the entry.
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 402


async def test_delete_returns_once_the_other_process_has_applied_it(
    db_url: str, seed: Seeder
) -> None:
    async with running(db_url) as (_app_a, a), running(db_url) as (app_b, b):
        _, key = await seed.customer_with_key()
        created = (await a.post("/v1/keys", headers=headers(key))).json()
        doomed = created["api_key"]
        assert (await b.get("/v1/data", headers=headers(doomed))).status_code == 200

        revoked = await a.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
        assert revoked.status_code == 204
        # No waiting here: B has acknowledged the revision before A answered.
        invalidator_b = internals.invalidator(app_b)
        revision = await _revision(db_url)
        assert internals.key_cache(app_b).revision == revision
        async with invalidator_b.engine.connect() as connection:
            row = await connection.execute(
                select(ProcessHeartbeat.revision).where(
                    ProcessHeartbeat.id == invalidator_b.heartbeat.id
                )
            )
            assert row.scalar_one() == revision
        assert (await b.get("/v1/data", headers=headers(doomed))).status_code == 401
        assert (await b.get("/v1/data", headers=headers(key))).status_code == 200


async def test_a_process_that_cannot_hear_the_feed_stops_trusting_its_cache(
    db_url: str,
    seed: Seeder,
) -> None:
    """B is cut off from invalidations (no notification, no poll). A's DELETE still returns
    only when B cannot serve the key: B no longer trusts its cache and reads the database."""
    async with running(db_url) as (_app_a, a), running(db_url) as (app_b, b):
        _, key = await seed.customer_with_key()
        created = (await a.post("/v1/keys", headers=headers(key))).json()
        doomed = created["api_key"]
        assert (await b.get("/v1/data", headers=headers(doomed))).status_code == 200
        invalidator_b = internals.invalidator(app_b)

        async def unreachable() -> bool:
            raise ConnectionError("the feed is down")

        invalidator_b.check_in = unreachable  # type: ignore[method-assign]
        for task in invalidator_b._tasks:
            task.cancel()

        revoked = await a.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
        assert revoked.status_code == 204
        refused = await b.get("/v1/data", headers=headers(doomed))
        assert refused.status_code == 401
        # Still serving the keys that are valid, from the database.
        assert (await b.get("/v1/data", headers=headers(key))).status_code == 200


async def _revision(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(select(CacheRevision.revision))
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def test_a_sqlite_check_in_reads_without_the_write_lock(db_url: str) -> None:
    """Every process checks in every 50 ms on SQLite: the read must not take the file's write
    lock (transactions begin IMMEDIATE), which the ledger's writers need. With another writer
    holding it, a check-in with no heartbeat due still completes at once."""
    if is_postgres(db_url):
        pytest.skip("SQLite's polled check-in; PostgreSQL listens")
    invalidator = invalidation.Invalidator(KeyCache(), database_url=db_url, beat_s=60.0)
    await invalidator.check_in()  # the first one writes this process's heartbeat
    database = make_url(db_url).database
    assert database is not None
    writer = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
        async with asyncio.timeout(2):
            await invalidator.check_in()
            await invalidator.check_in()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await invalidator.stop()
