"""The operator API's outbound webhooks (CONTRACT §8) in process, on the backend under test.

Events come from the real flow: keys issued for customers write ``key.created`` into the outbox,
and the service's own deliverer tries them against a closed port (undelivered) or a real
receiver process (delivered).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from fastapi import FastAPI

from meterapi.app import create_app
from meterapi.config import Settings
from meterapi.db import Sessionmaker, session_scope
from meterapi.models import utcnow
from meterapi.outbound import outbox
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.admin_support import ADMIN, ADMIN_TOKEN, eventually, seed_customer
from tests.integration.outbound_support import OUTBOUND_SECRET, ReceiverProcess

PATH = "/admin/v1/webhooks/outbound"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but never listening: every delivery there is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _settings(db_url: str, emulator: EmulatorServer, price: str, webhook_url: str) -> Settings:
    return stripe_settings(
        db_url,
        emulator,
        price,
        admin_token=ADMIN_TOKEN,
        webhook_url=webhook_url,
        webhook_secret=OUTBOUND_SECRET,
        webhook_timeout_s=2.0,
        webhook_first_retry_s=10.0,
    )


@asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


@pytest.fixture
def settings_closed(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str, refusing_port: int
) -> Settings:
    url = f"http://127.0.0.1:{refusing_port}/hooks"
    return _settings(db_url, stripe_emulator, stripe_price, url)


@pytest.fixture
async def http(settings_closed: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _serve(settings_closed) as client:
        yield client


async def _seed(
    sessionmaker: Sessionmaker, sdk: stripe.StripeClient, settings: Settings, n: int
) -> list[str]:
    return [
        (
            await seed_customer(
                sessionmaker, sdk, email=f"o{i}@example.com", pepper=settings.pepper_bytes()
            )
        )[0]
        for i in range(n)
    ]


async def _list(http: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await http.get(PATH, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def _all_tried(http: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    async def tried() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = (await _list(http, limit=100))["data"]
        done = len(rows) == n and all(r["attempts"] >= 1 and r["last_error"] for r in rows)
        return rows if done else None

    rows: list[dict[str, Any]] = await eventually(tried, what="a refused delivery of each event")
    return rows


async def test_the_outbox_needs_the_operator_token(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-the-same-length-0123456789ab"}):
        for method, path in (("GET", PATH), ("POST", f"{PATH}/msg_0/retry")):
            response = await http.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json()["error"]["code"] == "invalid_admin_token"
    assert (await http.get(PATH, headers=ADMIN)).json() == {"data": [], "has_more": False}


async def test_undelivered_events_page_and_filter(
    http: httpx.AsyncClient,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    settings_closed: Settings,
) -> None:
    customers = await _seed(sessionmaker, stripe_sdk, settings_closed, 3)
    rows = await _all_tried(http, 3)
    # Newest first: the last customer's key.created leads.
    assert [r["customer_id"] for r in rows] == customers[::-1]
    first = rows[0]
    assert set(first) == {
        "id", "type", "customer_id", "status", "attempts", "next_attempt_at", "last_error",
        "created_at", "delivered_at",
    }  # fmt: skip
    assert first["id"].startswith("msg_") and first["type"] == "key.created"
    assert first["status"] == "pending" and first["delivered_at"] is None
    assert first["next_attempt_at"] is not None

    page = await _list(http, limit=2)
    assert [r["id"] for r in page["data"]] == [rows[0]["id"], rows[1]["id"]] and page["has_more"]
    page = await _list(http, limit=2, starting_after=rows[1]["id"])
    assert [r["id"] for r in page["data"]] == [rows[2]["id"]] and not page["has_more"]

    mine = await _list(http, customer_id=customers[1])
    assert [r["id"] for r in mine["data"]] == [rows[1]["id"]]
    assert (await _list(http, customer_id="cus_nobody"))["data"] == []
    assert len((await _list(http, status="pending"))["data"]) == 3
    for status in ("delivered", "failed", "gone"):
        assert (await _list(http, status=status))["data"] == [], status

    for params, code in (
        ({"limit": "101"}, 422),
        ({"limit": "0"}, 422),
        ({"status": "lost"}, 422),
        ({"starting_afer": rows[0]["id"]}, 422),  # a typo is refused, not ignored
        ({"starting_after": "msg_nope"}, 404),
    ):
        response = await http.get(PATH, params=params, headers=ADMIN)
        assert response.status_code == code, (params, response.text)
        assert set(response.json()["error"]) == {"code", "message"}


async def test_retry_puts_a_failed_event_back_to_pending_under_its_id(
    http: httpx.AsyncClient,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    settings_closed: Settings,
) -> None:
    [customer] = await _seed(sessionmaker, stripe_sdk, settings_closed, 1)
    [row] = await _all_tried(http, 1)
    # The retry window runs out (as the deliverer's housekeeping does it, three days on).
    async with session_scope(sessionmaker) as session:
        failed, _ = await outbox.expire_and_prune(session, now=utcnow() + timedelta(days=4))
    assert failed == 1
    [gave_up] = (await _list(http, status="failed"))["data"]
    assert gave_up["id"] == row["id"] and gave_up["next_attempt_at"] is None

    response = await http.post(f"{PATH}/{row['id']}/retry", headers=ADMIN)
    assert response.status_code == 200, response.text
    again = response.json()
    assert again["id"] == row["id"] and again["customer_id"] == customer
    assert again["status"] == "pending" and again["attempts"] == 0
    assert (await _list(http, status="failed"))["data"] == []

    async def tried_again() -> bool:
        [now] = (await _list(http, limit=100))["data"]  # still one event: never a new one
        return bool(now["id"] == row["id"] and now["status"] == "pending" and now["attempts"] >= 1)

    await eventually(tried_again, what="the deliverer to send the retried event again")

    response = await http.post(f"{PATH}/msg_unknown/retry", headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_a_delivered_event_is_not_retried(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    tmp_path: Path,
) -> None:
    with ReceiverProcess(tmp_path) as receiver:
        settings = _settings(db_url, stripe_emulator, stripe_price, receiver.url)
        async with _serve(settings) as http:
            [customer] = await _seed(sessionmaker, stripe_sdk, settings, 1)

            async def delivered() -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = (await _list(http, status="delivered"))["data"]
                return rows

            [row] = await eventually(delivered, what="the event to be delivered")
            assert row["customer_id"] == customer and row["delivered_at"] is not None
            assert row["next_attempt_at"] is None
            assert (await _list(http))["data"] == []  # nothing undelivered
            response = await http.post(f"{PATH}/{row['id']}/retry", headers=ADMIN)
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "already_delivered"
    assert [r["id"] for r in receiver.records()] == [row["id"]]
