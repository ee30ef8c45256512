"""require_api_key through the HTTP API: every error code of CONTRACT §3 that keys own."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from meterapi.app import create_app
from meterapi.db import Sessionmaker
from meterapi.keys import format as key_format
from meterapi.models import ApiKey, utcnow
from tests.conftest import make_settings
from tests.integration.keys_support import Seeder, headers


def _code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def test_a_valid_key_reads_data(client: httpx.AsyncClient, seed: Seeder) -> None:
    _, key = await seed.customer_with_key()
    response = await client.get("/v1/data", headers=headers(key))
    assert response.status_code == 200
    assert response.json() == {"object": "data", "customer_id": "cus_alpha", "items": [1, 2, 3]}
    bearer = await client.get("/v1/data", headers={"Authorization": f"Bearer {key}"})
    assert bearer.status_code == 200
    both = await client.get(
        "/v1/data", headers={"X-API-Key": key, "Authorization": f"Bearer {key}"}
    )
    assert both.status_code == 200


async def test_missing_key_is_401_with_www_authenticate(client: httpx.AsyncClient) -> None:
    for extra in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"X-API-Key": ""}):
        response = await client.get("/v1/data", headers=extra)
        assert response.status_code == 401
        assert _code(response) == "missing_api_key"
        assert "X-API-Key" in response.headers["www-authenticate"]


@pytest.mark.parametrize("name", ["apiKey", "api_key"])
async def test_key_in_query_is_400_even_with_a_header(
    client: httpx.AsyncClient, name: str, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    alone = await client.get("/v1/data", params={name: key})
    with_header = await client.get("/v1/data", params={name: key}, headers=headers(key))
    for response in (alone, with_header):
        assert response.status_code == 400
        assert _code(response) == "api_key_in_query"
        assert key not in response.text


async def test_two_different_keys_are_ambiguous(client: httpx.AsyncClient, seed: Seeder) -> None:
    customer_id, key = await seed.customer_with_key()
    _, other = await seed.key(customer_id)
    response = await client.get(
        "/v1/data", headers={"X-API-Key": key, "Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 400
    assert _code(response) == "ambiguous_api_key"


@pytest.mark.parametrize(
    "shape",
    ["x-api-key twice", "bearer twice", "bearer then x-api-key", "x-api-key, bearer, x-api-key"],
)
async def test_a_repeated_header_with_another_key_is_ambiguous(
    client: httpx.AsyncClient, shape: str, seed: Seeder
) -> None:
    customer_id, key = await seed.customer_with_key()
    _, other = await seed.key(customer_id)
    sent = {
        "x-api-key twice": [("X-API-Key", key), ("X-API-Key", other)],
        "bearer twice": [("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {other}")],
        "bearer then x-api-key": [("Authorization", f"Bearer {key}"), ("X-API-Key", other)],
        "x-api-key, bearer, x-api-key": [
            ("X-API-Key", key),
            ("Authorization", f"Bearer {key}"),
            ("X-API-Key", other),
        ],
    }[shape]
    for path in ("/v1/data", "/v1/keys"):
        response = await client.get(path, headers=sent)
        assert response.status_code == 400, (shape, path)
        assert _code(response) == "ambiguous_api_key"
        assert key not in response.text and other not in response.text


async def test_the_same_key_repeated_is_not_ambiguous(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    sent = [("X-API-Key", key), ("X-API-Key", key), ("Authorization", f"Bearer {key}")]
    assert (await client.get("/v1/data", headers=sent)).status_code == 200
    # An empty repeat, or a non-Bearer Authorization beside the key, adds no second key.
    sent = [("X-API-Key", key), ("X-API-Key", ""), ("Authorization", "Basic dXNlcjpwYXNz")]
    assert (await client.get("/v1/data", headers=sent)).status_code == 200


async def test_every_bad_key_gets_the_same_401(
    client: httpx.AsyncClient, seed: Seeder, sessionmaker: Sessionmaker
) -> None:
    customer_id, good = await seed.customer_with_key()
    revoked, revoked_key = await seed.key(customer_id)
    expired, expired_key = await seed.key(customer_id)
    # Changed straight in the database, as if long ago (no cache entry exists for these yet).
    async with sessionmaker() as session:
        for row_id, field in ((revoked.id, "revoked_at"), (expired.id, "expires_at")):
            row = await session.get(ApiKey, row_id)
            assert row is not None
            setattr(row, field, utcnow() - timedelta(seconds=1))
            session.add(row)
        await session.commit()
    candidates = {
        "malformed": "hello",
        "bad checksum": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "unknown": key_format.generate(live=False),
        "live prefix on a test key": "mk_live_" + good[8:],
        "revoked": revoked_key,
        "expired": expired_key,
        "very long": "mk_test_" + "a" * 5000,
    }
    bodies = set()
    for label, candidate in candidates.items():
        response = await client.get("/v1/data", headers=headers(candidate))
        assert response.status_code == 401, label
        assert _code(response) == "invalid_api_key", label
        assert "www-authenticate" in response.headers
        bodies.add(response.text)
    assert len(bodies) == 1  # nothing tells which check failed
    assert (await client.get("/v1/data", headers=headers(good))).status_code == 200


@pytest.mark.parametrize(
    "status", ["canceled", "unpaid", "paused", "incomplete", "incomplete_expired", "past_due", None]
)
async def test_inactive_subscriptions_are_402(
    client: httpx.AsyncClient, status: str | None, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key(status=status, past_due_since=utcnow())
    response = await client.get("/v1/data", headers=headers(key))
    assert response.status_code == 402
    assert _code(response) == "subscription_inactive"


@pytest.mark.parametrize("status", ["active", "trialing"])
async def test_active_and_trialing_are_allowed(
    client: httpx.AsyncClient, status: str, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key(status=status)
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 200


async def test_past_due_is_allowed_within_the_grace_only(db_url: str, seed: Seeder) -> None:
    app = create_app(make_settings(db_url, past_due_grace_s=3600))
    async with app.router.lifespan_context(app):
        _, recent = await seed.customer_with_key(
            stripe_customer_id="cus_recent", status="past_due", past_due_since=utcnow()
        )
        _, late = await seed.customer_with_key(
            stripe_customer_id="cus_late",
            status="past_due",
            past_due_since=utcnow() - timedelta(hours=2),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/v1/data", headers=headers(recent))).status_code == 200
            late_response = await client.get("/v1/data", headers=headers(late))
    assert late_response.status_code == 402
    assert _code(late_response) == "subscription_inactive"


async def test_openapi_declares_the_api_key_scheme(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["ApiKey"]["description"],
    }
    assert {"ApiKey": []} in schema["paths"]["/v1/data"]["get"]["security"]
    assert {"ApiKey": []} in schema["paths"]["/v1/keys"]["get"]["security"]
