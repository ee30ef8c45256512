"""Fixtures: every test gets a real, empty database of the backend under test.

The backend is SQLite unless ``METERAPI_TEST_DATABASE_URL`` names a PostgreSQL database, which the
suite migrates and empties between tests (it must be a database for tests only).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from meterapi import migrations
from meterapi.app import create_app
from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DATABASE_URL = os.environ.get("METERAPI_TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")

# Settings come from what each test passes, never from the developer's shell or .env.
for _name in [n for n in os.environ if n.startswith("METERAPI_") and "TEST" not in n]:
    del os.environ[_name]


def pytest_report_header() -> str:
    backend = make_url(TEST_DATABASE_URL).render_as_string() if ON_POSTGRES else "sqlite"
    return f"meterapi test database: {backend}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ON_POSTGRES:
        return
    pg_only = [item for item in items if item.get_closest_marker("postgres_only")]
    if IN_CI:
        # CI runs the suite once per backend; these run in the PostgreSQL pass.
        config.hook.pytest_deselected(items=pg_only)
        items[:] = [item for item in items if item not in pg_only]
        return
    reason = "needs PostgreSQL: set METERAPI_TEST_DATABASE_URL=postgresql+asyncpg://…"
    for item in pg_only:
        item.add_marker(pytest.mark.skip(reason=reason))


async def _postgres_answers(url: str) -> str | None:
    engine = make_engine(url)
    try:
        async with asyncio.timeout(5), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()
    return None


@pytest.fixture(scope="session")
def _migrated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The migrated template: a SQLite file to copy, or the PostgreSQL test database."""
    if ON_POSTGRES:
        problem = asyncio.run(_postgres_answers(TEST_DATABASE_URL))
        if problem:
            message = f"PostgreSQL at METERAPI_TEST_DATABASE_URL does not answer ({problem})"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        migrations.upgrade(TEST_DATABASE_URL)
        return TEST_DATABASE_URL
    template = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{template}")
    return str(template)


async def _empty_postgres(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "TRUNCATE usage_event, usage_report, api_key, checkout_session, "
                    "stripe_event, subscription_signal, outbound_event, customer, "
                    "process_heartbeat "
                    "RESTART IDENTITY CASCADE"
                )
            )
            await connection.execute(text("UPDATE cache_revision SET revision = 0"))
    finally:
        await engine.dispose()


@pytest.fixture
def db_url(_migrated: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for this test alone."""
    if ON_POSTGRES:
        asyncio.run(_empty_postgres(_migrated))
        yield _migrated
        return
    target = tmp_path / "meterapi.db"
    shutil.copyfile(_migrated, target)
    yield f"sqlite+aiosqlite:///{target}"


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": db_url, "report_interval_s": 0.2}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(db_url: str, stripe_emulator: EmulatorServer, stripe_price: str) -> Settings:
    """A service wired to the emulator (its reporter sends there), reporting every 0.2 s."""
    return stripe_settings(db_url, stripe_emulator, stripe_price)


@pytest.fixture
async def sessionmaker(db_url: str) -> AsyncIterator[Sessionmaker]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


# -- Stripe, through the emulator on loopback and the real SDK ---------------------------------

EMULATOR_SECRET_KEY = "sk_test_meterapi_suite"
EMULATOR_WEBHOOK_SECRET = "whsec_meterapi_suite_0123456789"


@pytest.fixture(scope="session")
def stripe_emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(webhook_secret=EMULATOR_WEBHOOK_SECRET, webhook_retry_delays=(0.2, 0.5))
    with server:
        yield server


@pytest.fixture(scope="session")
def stripe_price(stripe_emulator: EmulatorServer) -> str:
    """The meter, product and metered price, made once through the service's own setup path."""

    async def setup() -> str:
        gateway = StripeGateway(
            make_settings("sqlite+aiosqlite://", stripe_api_base=stripe_emulator.url)
        )
        try:
            return (await gateway.ensure_metered_price(unit_amount_decimal="0.5"))[1]
        finally:
            await gateway.close()

    return asyncio.run(setup())


@pytest.fixture
def stripe_sdk(stripe_emulator: EmulatorServer) -> stripe.StripeClient:
    """The real SDK, as a test's own view of the Stripe account."""
    return stripe.StripeClient(
        EMULATOR_SECRET_KEY,
        http_client=stripe.HTTPXClient(),
        base_addresses={"api": stripe_emulator.url, "meter_events": stripe_emulator.url},
        max_network_retries=2,
    )


@pytest.fixture
async def emulator_control(stripe_emulator: EmulatorServer) -> AsyncIterator[EmulatorControl]:
    async with EmulatorControl(stripe_emulator.url) as control:
        yield control
        await control.clear_faults()


def stripe_settings(
    db_url: str, emulator: EmulatorServer, price_id: str, **overrides: Any
) -> Settings:
    """Settings for a service wired to the emulator, as ``meterapi serve`` does it."""
    values: dict[str, Any] = {
        "stripe_api_base": emulator.url,
        "stripe_price_id": price_id,
        "stripe_timeout_s": 1.0,
    }
    values.update(overrides)
    return make_settings(db_url, **values)
