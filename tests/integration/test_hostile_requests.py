"""Requests an attacker (or a careless client) sends: oversized bodies, dates at the edge of a
datetime, forged Host and X-Forwarded-For headers, framing, and floods of the public routes
that cost a Stripe call (issue 13 items 9-13)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from meterapi.app import create_app
from meterapi.billing.claim import claim_token
from meterapi.db import Sessionmaker, make_engine
from meterapi.models import ApiKey, UTCDateTime
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import make_settings, stripe_settings
from tests.integration.keys_support import Seeder, headers


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


def client_from(app: FastAPI, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# -- 9: dates at the edge of a datetime, and SQL parameters out of error texts -----------------


@pytest.mark.parametrize(
    "expires_at", ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999999-00:01"]
)
async def test_an_expiry_past_year_9999_in_utc_is_422(
    db_url: str, expires_at: str, caplog: pytest.LogCaptureFixture, seed: Seeder
) -> None:
    async with served(create_app(make_settings(db_url))) as app, client_from(app) as client:
        _, key = await seed.customer_with_key()
        response = await client.post(
            "/v1/keys", headers=headers(key), json={"name": "edge", "expires_at": expires_at}
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        # The latest time a datetime holds is a valid expiry.
        latest = await client.post(
            "/v1/keys", headers=headers(key), json={"expires_at": "9999-12-31T23:59:59+00:00"}
        )
        assert latest.status_code == 201
        assert latest.json()["key"]["expires_at"].startswith("9999-12-31T23:59:59")
        assert (await client.get("/v1/data", headers=headers(latest.json()["api_key"]))).is_success
    assert "Traceback" not in caplog.text


async def test_database_errors_do_not_carry_bound_parameters(db_url: str) -> None:
    engine = make_engine(db_url)
    marker = "cus_" + secrets.token_hex(8)
    statement = sa.text(
        "INSERT INTO customer (stripe_customer_id, email, cancel_at_period_end, created_at,"
        " updated_at) VALUES (:cus, :email, false, :now, :now)"
    ).bindparams(sa.bindparam("now", type_=UTCDateTime()))
    values = {"cus": marker, "email": f"{marker}@example.com", "now": datetime.now(UTC)}
    try:
        async with engine.begin() as connection:
            await connection.execute(statement, values)
        with pytest.raises(sa_exc.IntegrityError) as caught:
            async with engine.begin() as connection:
                await connection.execute(statement, values)
    finally:
        await engine.dispose()
    assert marker not in str(caught.value)
    assert "hide_parameters" in str(caught.value)


async def test_an_unhandled_error_is_logged_without_its_text_or_parameters(
    db_url: str, sessionmaker: Sessionmaker, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(db_url))
    marker = "secret_" + secrets.token_hex(8)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"parameters: {marker}")

    @app.get("/boom-sql")
    async def boom_sql() -> None:
        # A naive datetime is refused while binding: a StatementError that, shown in full,
        # would quote the other parameters too (the service's engine settings, make_engine's).
        async with sessionmaker() as session:
            session.add(
                ApiKey(
                    id="key_x",
                    customer_id=1,
                    name=marker,
                    digest=marker,
                    prefix="mk",
                    last4="abcd",
                    created_at=datetime(2030, 1, 1),
                )
            )
            await session.flush()

    async with served(app), client_from(app) as client:  # app exceptions would raise here
        with caplog.at_level(logging.DEBUG):
            for path in ("/boom", "/boom-sql"):
                response = await client.get(path)
                assert response.status_code == 500
                assert response.json()["error"]["code"] == "internal_error"
    logged = caplog.text + "".join(repr(r.args) + str(r.exc_info) for r in caplog.records)
    assert marker not in logged
    assert "unhandled RuntimeError on GET /boom at" in caplog.text
    assert "unhandled StatementError on GET /boom-sql at" in caplog.text


# -- 10: bodies over METERAPI_MAX_BODY_BYTES -------------------------------------------------


async def _chunks(size: int, chunk: int = 1000) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        yield b"x" * min(chunk, size - sent)
        sent += chunk


@pytest.mark.parametrize("path", ["/v1/checkout", "/webhooks/stripe", "/v1/keys/claim"])
async def test_a_chunked_body_over_the_limit_is_413(db_url: str, path: str) -> None:
    app = create_app(make_settings(db_url, max_body_bytes=4096))
    async with served(app), client_from(app) as client:
        response = await client.post(
            path, content=_chunks(10_000), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        declared = await client.post(path, content=b"{" * 5000)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        # Under the limit, the same route parses the body as usual.
        small = await client.post(
            path, content=_chunks(100), headers={"Content-Type": "application/json"}
        )
        assert small.status_code in (400, 422)


# -- 11: the public routes that cost a Stripe call, limited per client ------------------------


async def test_public_routes_are_limited_per_client_with_retry_after(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    settings = stripe_settings(db_url, stripe_emulator, stripe_price, public_rate_limit="3/minute")
    async with served(create_app(settings)) as app, client_from(app, "10.1.1.1") as client:
        answers = [(await client.post("/v1/checkout")).status_code for _ in range(2)]
        answers.append(
            (
                await client.post("/v1/keys/claim", json={"checkout_session_id": "cs_test_nope"})
            ).status_code
        )
        assert answers == [201, 201, 404]
        for refused in (
            await client.post("/v1/checkout"),
            await client.post("/v1/keys/claim", json={"checkout_session_id": "cs_test_nope"}),
        ):
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            retry_after = refused.headers["Retry-After"]
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
        # Another address has its own allowance; keyed routes are not counted.
        async with client_from(app, "10.2.2.2") as other:
            assert (await other.post("/v1/checkout")).status_code == 201
        assert (await client.get("/healthz")).status_code == 200


async def test_the_public_limit_setting_is_checked(db_url: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="public_rate_limit"):
        make_settings(db_url, public_rate_limit="lots")
    assert make_settings(db_url, public_rate_limit="100/second").public_rate_limit


async def test_an_unknown_session_is_answered_from_memory_for_a_while(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    emulator_control: EmulatorControl,
) -> None:
    # A zero-second latency rule counts the calls that reach Stripe without changing them.
    fault = await emulator_control.inject_fault(
        "latency", "/v1/checkout/sessions/*", method="GET", seconds=0, count=None
    )
    settings = stripe_settings(db_url, stripe_emulator, stripe_price)
    guessed = "cs_test_guessed_123"
    # A claim whose token does not match never reaches Stripe; one whose token matches (as if
    # the pepper had leaked) reaches it once, then the unknown id is answered from memory.
    token = claim_token(guessed, pepper=settings.pepper_bytes())
    async with served(create_app(settings)) as app, client_from(app) as client:
        for body in [{"checkout_session_id": guessed}] * 2 + [
            {"checkout_session_id": guessed, "claim_token": token}
        ] * 3:
            response = await client.post("/v1/keys/claim", json=body)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
    rules = (await emulator_control._call("GET", "/faults"))["data"]
    assert [r["hits"] for r in rules if r["id"] == fault["id"]] == [1]


# -- 12: Host and X-Forwarded-* are not taken from anyone ------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard", "/docs/", "/v1/keys/", "/healthz/"])
async def test_no_redirect_follows_the_host_header(db_url: str, path: str) -> None:
    async with served(create_app(make_settings(db_url))) as app, client_from(app) as client:
        response = await client.get(path, headers={"Host": "evil.example"})
    assert "evil.example" not in response.headers.get("location", "")
    assert response.status_code in (200, 401, 404)
    if path.startswith("/dashboard"):
        assert response.status_code == 200
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def _claims(app: FastAPI, address: str, forwarded: list[str]) -> list[int]:
    statuses = []
    async with client_from(app, address) as client:
        for origin in forwarded:
            response = await client.post(
                "/v1/keys/claim",
                json={"checkout_session_id": "cs_test_" + secrets.token_hex(4)},
                headers={"X-Forwarded-For": origin, "X-Forwarded-Proto": "https"},
            )
            statuses.append(response.status_code)
    return statuses


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    settings = stripe_settings(
        db_url,
        stripe_emulator,
        stripe_price,
        public_rate_limit="1/minute",
        trusted_proxies="10.0.0.1, 10.0.0.2",
    )
    async with served(create_app(settings)) as app:
        # An untrusted client cannot pose as many clients: its forged headers are ignored.
        assert await _claims(app, "203.0.113.9", ["6.6.6.6", "7.7.7.7"]) == [404, 429]
        # The trusted proxy's word is taken: two different clients behind it, each counted.
        assert await _claims(app, "10.0.0.1", ["6.6.6.6", "7.7.7.7", "6.6.6.6"]) == [
            404,
            404,
            429,
        ]

    settings = stripe_settings(db_url, stripe_emulator, stripe_price, public_rate_limit="1/minute")
    async with served(create_app(settings)) as app:  # no trusted proxies: nobody's
        assert await _claims(app, "127.0.0.1", ["6.6.6.6", "7.7.7.7"]) == [404, 429]


# -- 13: /docs cannot be framed --------------------------------------------------------------


async def test_docs_may_not_be_framed(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
