"""Fuzzing the HTTP API from its own OpenAPI document (schemathesis, in process over ASGI).

Every operation in ``/openapi.json`` is called with generated inputs, with a valid API key of a
customer with an active subscription (so authenticated operations get past the key check) and,
on the operator API (``/admin/v1``), the operator token: no
response may be a 5xx, every response must match the status codes and schemas the document
declares, and every 4xx must carry the error shape ``{"error": {"code", "message"}}``.

The service under test is one app on one database for the whole module (a fresh copy of the
migrated database on SQLite; the emptied test database on PostgreSQL), reporting to the
session's Stripe emulator. The emulator's own routes and the HTML dashboard are not in the
service's OpenAPI document, so they are not fuzzed.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
import stripe
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from meterapi.app import create_app
from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import (
    EMULATOR_SECRET_KEY,
    IN_CI,
    ON_POSTGRES,
    _empty_postgres,
    stripe_settings,
)

MAX_EXAMPLES = 30  # per operation: the whole module stays within a minute or two
ADMIN_TOKEN = "fuzz-operator-token-0123456789abcdefghij"  # so /admin/v1 is served and reachable


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is ``{"error": {"code": str, "message": str}}`` and nothing else."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, f"bad error: {error!r}"
    assert isinstance(error["code"], str) and error["code"], f"empty code: {error!r}"
    assert isinstance(error["message"], str) and error["message"], f"empty message: {error!r}"
    return True


async def _seed(database_url: str, pepper: bytes, stripe_customer_id: str) -> str:
    engine = make_engine(database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(
                stripe_customer_id=stripe_customer_id,
                subscription_id=f"sub_{stripe_customer_id}",
                subscription_status="active",
            )
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            _, plaintext = await service.issue(
                session, customer_id=customer.id, policy=KeyPolicy(pepper=pepper, live=False)
            )
        return plaintext
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Target:
    settings: Settings
    api_key: str


@pytest.fixture(scope="module")
def target(
    _migrated: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Target:
    """One database for the module, with a customer (in Stripe too) and a key."""
    if ON_POSTGRES:
        asyncio.run(_empty_postgres(_migrated))
        database_url = _migrated
    else:
        path = tmp_path_factory.mktemp("fuzz") / "meterapi.db"
        shutil.copyfile(_migrated, path)
        database_url = f"sqlite+aiosqlite:///{path}"
    app_settings = stripe_settings(
        database_url, stripe_emulator, stripe_price, admin_token=ADMIN_TOKEN
    )
    sdk = stripe.StripeClient(
        EMULATOR_SECRET_KEY,
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
        base_addresses={"api": stripe_emulator.url, "meter_events": stripe_emulator.url},
    )
    stripe_customer = sdk.v1.customers.create(params={"email": "fuzz@example.com"})
    key = asyncio.run(_seed(database_url, app_settings.pepper_bytes(), stripe_customer.id))
    return Target(app_settings, key)


@pytest.fixture
def api_schema(target: Target) -> Any:
    # A new app per test: schemathesis starts its lifespan on the first call and ends it when
    # the test ends (its pytest plugin does), and a lifespan cannot be started twice.
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(target.settings))
    # The credentials are always valid ones (added per call below); a generated or spoiled
    # credential would be replaced by them, so it is not generated at all.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def _cases() -> list[Any]:
    """Every operation of the service's OpenAPI document (built without I/O), with valid inputs,
    and with invalid ones where it has inputs to spoil."""
    app = create_app(
        Settings(_env_file=None, database_url="sqlite+aiosqlite://", admin_token=ADMIN_TOKEN)  # type: ignore[call-arg]
    )
    cases = []
    for path, item in sorted(app.openapi()["paths"].items()):
        for method, operation in item.items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            cases += [
                pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode}")
                for mode in modes
            ]
    return cases


# Schema-valid bodies the service refuses on purpose, for rules JSON Schema cannot state.
BUSINESS_RULES = {
    ("POST", "/v1/keys"): "an expires_at in the past is refused with 422 (CONTRACT §3)",
    ("POST", "/webhooks/stripe"): "a delivery needs a valid Stripe-Signature, which no generator "
    "can forge; it is refused with 400 (CONTRACT §3)",
    ("GET", "/admin/v1/reconciliation"): "start and end come together, end after start, both "
    "between 2000 and 2200; refused with 422",
    # JSON Schema counts 5000.0 as an integer; money is refused unless written as one.
    ("PUT", "/v1/limits"): "a spend cap's amount is a JSON integer (5000, not 5000.0); 422",
    ("PUT", "/admin/v1/customers/{customer_id}/limits"): "a spend cap's amount is a JSON "
    "integer (5000, not 5000.0); 422",
}


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_operation(
    method: str, path: str, mode: GenerationMode, api_schema: Any, target: Target
) -> None:
    operation = api_schema[path][method]
    excluded = [positive_data_acceptance] if (method, path) in BUSINESS_RULES else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # CI replays a fixed sample, so a landing never hinges on chance; local runs explore.
        derandomize=IN_CI,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        headers = {"X-API-Key": target.api_key}
        if path.startswith("/admin/"):
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    call()
