"""Each customer's limits in the process: one read per customer, dropped by every change to
them, here at once and in a second process through the invalidation feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.metering import limits
from meterapi.metering.limits_cache import CustomerLimits, LimitsCache
from tests.integration import internals
from tests.integration.keys_support import seed_customer
from tests.integration.test_keys_invalidation import running, settle


async def _set(db_url: str, customer_pk: int, **change: object) -> None:
    """A change made outside any app (as ``meterapi limits set`` makes it)."""
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            await limits.set_limits(session, customer_id=customer_pk, **change)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def test_defaults_overrides_and_one_read_per_customer(db_url: str) -> None:
    engine = make_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    try:
        plain = await seed_customer(sessionmaker, stripe_customer_id="cus_plain")
        capped = await seed_customer(sessionmaker, stripe_customer_id="cus_capped")
        unlimited = await seed_customer(sessionmaker, stripe_customer_id="cus_unlimited")
        await _set(db_url, capped, rate_limit="7/minute", monthly_spend_cap=5000)
        await _set(db_url, unlimited, rate_limit=None)
        cache = LimitsCache(sessionmaker, default_rate="100/second")

        found = await asyncio.gather(*(cache.get(plain) for _ in range(20)))
        assert cache.reads == 1  # twenty concurrent misses, one read
        assert {f.rate_limit for f in found} == {found[0].rate_limit}
        assert found[0].rate_limit is not None
        assert (found[0].rate_limit.amount, found[0].rate_limit.get_expiry()) == (100, 1)
        assert found[0].monthly_spend_cap is None

        own = await cache.get(capped)
        assert own.rate_limit is not None
        assert (own.rate_limit.amount, own.rate_limit.get_expiry()) == (7, 60)
        assert own.monthly_spend_cap == 5000
        assert await cache.get(unlimited) == CustomerLimits(None, None)
        await cache.get(plain)
        await cache.get(capped)
        assert cache.reads == 3  # warm: no more reads

        cache.forget([capped])
        assert (await cache.get(capped)).monthly_spend_cap == 5000
        assert cache.reads == 4
        cache.clear()
        await cache.get(plain)
        assert cache.reads == 5
    finally:
        await engine.dispose()


async def test_a_fill_that_raced_a_change_is_not_kept(db_url: str) -> None:
    engine = make_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    try:
        customer = await seed_customer(sessionmaker)
        reading, go_on = asyncio.Event(), asyncio.Event()

        @asynccontextmanager
        async def held_sessions() -> AsyncIterator[AsyncSession]:
            async with sessionmaker() as session:
                reading.set()
                await go_on.wait()
                yield session

        cache = LimitsCache(held_sessions, default_rate=None)  # type: ignore[arg-type]
        fill = asyncio.create_task(cache.get(customer))
        await reading.wait()
        cache.forget([customer])  # a change committed while the read was under way
        go_on.set()
        await fill
        await cache.get(customer)
        assert cache.reads == 2
    finally:
        await engine.dispose()


async def test_untrusted_means_read(db_url: str) -> None:
    engine = make_engine(db_url)
    sessionmaker = make_sessionmaker(engine)
    trusted = True
    try:
        customer = await seed_customer(sessionmaker)
        cache = LimitsCache(sessionmaker, default_rate=None, trusted=lambda: trusted)
        await cache.get(customer)
        await cache.get(customer)
        assert cache.reads == 1
        trusted = False  # the invalidation feed went quiet: the database answers
        await cache.get(customer)
        await cache.get(customer)
        assert cache.reads == 3
    finally:
        await engine.dispose()


async def test_a_change_reaches_this_process_and_another(db_url: str) -> None:
    async with running(db_url) as (app_a, _a), running(db_url) as (app_b, _b):
        customer = await seed_customer(internals.sessionmaker(app_a))
        cache_a, cache_b = internals.limits_cache(app_a), internals.limits_cache(app_b)
        assert (await cache_a.get(customer)).monthly_spend_cap is None
        assert (await cache_b.get(customer)).monthly_spend_cap is None

        # Through app A's own sessions: A drops it when the change commits, B within a check-in.
        generation_b = cache_b.generation
        async with session_scope(internals.sessionmaker(app_a)) as session:
            await limits.set_limits(session, customer_id=customer, monthly_spend_cap=900)
        assert (await cache_a.get(customer)).monthly_spend_cap == 900
        await settle(lambda: cache_b.generation > generation_b)
        assert (await cache_b.get(customer)).monthly_spend_cap == 900

        # From outside both (the CLI): both see it.
        generations = [cache_a.generation, cache_b.generation]
        await _set(db_url, customer, rate_limit="5/second", monthly_spend_cap=None)
        for cache, generation in zip((cache_a, cache_b), generations, strict=True):
            await settle(lambda c=cache, g=generation: c.generation > g)  # type: ignore[misc]
            found = await cache.get(customer)
            assert found.monthly_spend_cap is None
            assert found.rate_limit is not None and found.rate_limit.amount == 5


async def test_a_revision_jump_clears_the_limits_too(db_url: str) -> None:
    async with running(db_url) as (app, _client):
        limits_cache, key_cache = internals.limits_cache(app), internals.key_cache(app)
        customer = await seed_customer(internals.sessionmaker(app))
        await limits_cache.get(customer)
        reads = limits_cache.reads
        assert key_cache.revision is not None
        key_cache.observe_revision(key_cache.revision + 5)
        await limits_cache.get(customer)
        assert limits_cache.reads == reads + 1
