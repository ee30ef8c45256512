"""Gateway mode against a real upstream process, with the service under uvicorn on loopback:
what goes up and what comes down, streaming, units, refusals and body limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import stripe

from meterapi.app import create_app
from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.billing_support import AppServer
from tests.integration.conftest import Stack
from tests.integration.gateway_support import (
    Payer,
    UpstreamProcess,
    gateway_file,
    paying_customer,
)
from tests.integration.servers import ServiceProcess, flush_usage, free_port
from tests.integration.totals import ledger_total

SECRET = "upstream-signing-secret-for-tests"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream") / "upstream.log") as process:
        yield process


def serve(
    db_url: str, emulator: EmulatorServer, price: str, tmp_path: Path, upstream_url: str
) -> AppServer:
    settings = stripe_settings(
        db_url,
        emulator,
        price,
        gateway_file=gateway_file(tmp_path, timeout_s=3.0),
        upstream_url=upstream_url,
        upstream_secret=SECRET,
        max_body_bytes=MAX_BODY,
    )
    return AppServer(lambda _url: create_app(settings))


@pytest.fixture
def gateway(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    tmp_path: Path,
    upstream: UpstreamProcess,
) -> Iterator[AppServer]:
    upstream.seen(forget=True)
    with serve(db_url, stripe_emulator, stripe_price, tmp_path, upstream.url) as server:
        yield server


@pytest.fixture
async def payer(db_url: str, stripe_sdk: stripe.StripeClient) -> Payer:
    return await paying_customer(db_url, stripe_sdk)


@pytest.fixture
async def client(gateway: AppServer, payer: Payer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"X-API-Key": payer.key}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as c:
        yield c


def verify(signature: str, *, method: str, target: str, customer: str) -> bool:
    parts = dict(part.split("=", 1) for part in signature.split(","))
    message = f"{parts['t']}.{method}.{target}.{customer}".encode()
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(parts["v1"], expected)


async def test_headers_in_and_out(
    client: httpx.AsyncClient, payer: Payer, upstream: UpstreamProcess, db_url: str
) -> None:
    response = await client.post(
        "/echo/a%20b/c?x=1&y=%C3%A9",
        content=b"hello",
        headers={
            "Authorization": f"Bearer {payer.key}",
            "X-Meterapi-Customer": "cus_forged",
            "X-Meterapi-Key-Id": "key_forged",
            "X-Meterapi-Signature": "t=1,v1=00",
            "Connection": "X-Hop-Up",
            "X-Hop-Up": "must not pass",
            "Keep-Alive": "timeout=1",
            "Proxy-Authorization": "Basic eDp5",
            "X-Custom": "kept",
        },
    )
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["target"] == "/echo/a%20b/c?x=1&y=%C3%A9"
    assert echo["body_bytes"] == 5
    seen: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        seen.setdefault(name, []).append(value)
    for gone in ("x-api-key", "authorization", "x-hop-up", "keep-alive", "proxy-authorization"):
        assert gone not in seen, gone
    assert seen["x-custom"] == ["kept"]
    assert seen["x-meterapi-customer"] == [payer.customer]
    assert seen["x-meterapi-key-id"] == [payer.key_id]
    assert "x-meterapi-units" not in seen
    [signature] = seen["x-meterapi-signature"]
    assert verify(signature, method="POST", target=echo["target"], customer=payer.customer)
    assert not verify(signature, method="GET", target=echo["target"], customer=payer.customer)

    # Down: the upstream's own headers pass, its hop-by-hop headers do not.
    assert response.headers["x-upstream"] == "echo"
    for gone in ("x-hop-down", "keep-alive", "proxy-authenticate", "x-meterapi-units"):
        assert gone not in response.headers, gone
    assert await ledger_total(db_url) == 2  # the route's units


async def test_a_non_bearer_authorization_reaches_the_upstream(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo/basic", headers={"Authorization": "Basic dXA6c3RyZWFt"})
    assert response.status_code == 200
    assert ["authorization", "Basic dXA6c3RyZWFt"] in response.json()["headers"]


async def test_cookies_pass_through_and_are_never_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo/login", params={"cookie": "alice"})
    assert response.headers["set-cookie"] == "session=alice; Path=/"
    client.cookies.clear()
    # The gateway's one client serves every customer: what the upstream set is not replayed.
    later = await client.get("/echo/other")
    assert "cookie" not in [name for name, _ in later.json()["headers"]]
    sent = await client.get("/echo/mine", headers={"Cookie": "session=bob"})
    assert ["cookie", "session=bob"] in sent.json()["headers"]


async def test_connections_to_the_upstream_are_reused(client: httpx.AsyncClient) -> None:
    ports = {(await client.get(f"/echo/{n}")).json()["client_port"] for n in range(5)}
    assert len(ports) == 1  # one pooled connection, kept alive between calls


async def test_units_from_the_upstream(
    client: httpx.AsyncClient, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/echo/u", params={"units": "7"})
    assert response.status_code == 200
    assert "x-meterapi-units" not in response.headers
    assert await ledger_total(db_url) == 7
    assert (await client.get("/echo/u", params={"units": "0"})).status_code == 200
    assert await ledger_total(db_url) == 7

    with caplog.at_level(logging.WARNING, logger="meterapi.gateway.proxy"):
        for bad in ("abc", "-1", "1.5", "1000000001", "1e3"):
            response = await client.get("/echo/u", params={"units": bad})
            assert response.status_code == 200
    assert await ledger_total(db_url) == 7 + 5 * 2  # the route's units for each
    warnings = [r for r in caplog.records if "X-Meterapi-Units" in r.getMessage()]
    assert len(warnings) == 5

    # Only a 2xx is billed, whatever the header says.
    for status in ("201", "404", "500"):
        response = await client.get("/echo/u", params={"units": "9", "status": status})
        assert response.status_code == int(status)
    assert await ledger_total(db_url) == 17 + 9


async def test_events_arrive_as_the_upstream_sends_them(
    client: httpx.AsyncClient, upstream: UpstreamProcess, db_url: str
) -> None:
    async with asyncio.timeout(60), client.stream("GET", "/sse") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "x-meterapi-units" not in response.headers
        lines = response.aiter_lines()
        assert [await anext(lines), await anext(lines)] == ["event: tick", "data: 1"]
        # The upstream holds the rest until released: this event came through on its own.
        assert await ledger_total(db_url) == 5  # billed once the headers arrived
        async with httpx.AsyncClient() as direct:
            await direct.post(f"{upstream.url}/_release")
        rest = [line async for line in lines if line]
    assert rest == ["event: tick", "data: 2", "event: done", "data: 3"]
    assert await ledger_total(db_url) == 5


async def test_a_client_that_leaves_mid_stream_is_still_billed(
    client: httpx.AsyncClient, db_url: str
) -> None:
    async with asyncio.timeout(60), client.stream("GET", "/sse") as response:
        lines = response.aiter_lines()
        assert await anext(lines) == "event: tick"
    # Gone before the stream ended; the 2xx had been produced.
    assert await ledger_total(db_url) == 5
    assert (await client.get("/echo/after")).status_code == 200  # and the gateway goes on


async def test_an_upstream_that_stalls_mid_stream_cuts_the_answer_short(
    client: httpx.AsyncClient, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Never released: after the first event the upstream says nothing for longer than timeout_s.
    with pytest.raises(httpx.RemoteProtocolError):  # an incomplete body, never a complete one
        async with asyncio.timeout(60), client.stream("GET", "/sse") as response:
            assert response.status_code == 200
            [line async for line in response.aiter_lines()]
    assert any("mid-body" in r.getMessage() for r in caplog.records)
    assert await ledger_total(db_url) == 5  # the 2xx went out: billed


async def test_refusals_reach_no_upstream_and_cost_nothing(
    client: httpx.AsyncClient, upstream: UpstreamProcess, db_url: str
) -> None:
    async with httpx.AsyncClient(base_url=str(client.base_url)) as anonymous:
        response = await anonymous.get("/echo/nokey")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_api_key"
        response = await anonymous.get("/echo/badkey", headers={"X-API-Key": "mk_test_nope"})
        assert response.status_code == 401
    response = await client.get("/not-listed")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    response = await client.delete("/echo/x")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
    assert upstream.seen() == []
    assert await ledger_total(db_url) == 0


async def test_an_upstream_too_slow_is_504_and_not_billed(
    client: httpx.AsyncClient, db_url: str
) -> None:
    response = await client.get("/slow", params={"s": "15"})  # timeout_s = 3
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert await ledger_total(db_url) == 0


async def test_an_unreachable_upstream_is_502_and_not_billed(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    tmp_path: Path,
    payer: Payer,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with serve(db_url, stripe_emulator, stripe_price, tmp_path, nobody) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/echo/x", headers={"X-API-Key": payer.key})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert await ledger_total(db_url) == 0


async def test_body_limits(
    client: httpx.AsyncClient, upstream: UpstreamProcess, db_url: str
) -> None:
    body = bytes(range(256)) * (MAX_BODY // 256)  # exactly the limit
    response = await client.put("/echo/up", content=body)
    assert response.status_code == 200
    assert response.json()["body_bytes"] == MAX_BODY
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

    async def chunks(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 4096):
            yield b"z" * 4096

    streamed = await client.post("/echo/streamed", content=chunks(MAX_BODY // 2))
    assert streamed.status_code == 200
    assert streamed.json()["body_bytes"] == MAX_BODY // 2
    assert "chunked" in [v for k, v in streamed.json()["headers"] if k == "transfer-encoding"]

    upstream.seen(forget=True)
    response = await client.post("/echo/declared", content=b"y" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert upstream.seen() == []  # refused from its Content-Length, before forwarding

    response = await client.post("/echo/endless", content=chunks(4 * MAX_BODY))
    assert response.status_code == 413
    assert await ledger_total(db_url) == 2 * 2  # the two that passed


async def test_openapi_lists_the_gateway_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    echo = document["paths"]["/echo/{rest}"]
    assert set(echo) == {"get", "post", "put"}
    assert echo["post"]["security"] == [{"ApiKey": []}]
    assert echo["post"]["description"].startswith("forwarded; costs 2 units")
    assert echo["post"]["parameters"][0]["name"] == "rest"
    assert document["paths"]["/sse"]["get"]["description"].startswith("forwarded; costs 1 unit")
    assert document["paths"]["/big"]["get"]["description"].startswith("forwarded; costs 0 units")
    assert "ApiKey" in document["components"]["securitySchemes"]


async def test_stripe_total_is_the_units_of_the_upstreams_2xx(
    stack: Stack, tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """Through a real service process, with Stripe failing some meter events on the way."""
    payer = await stack.payer()
    env = stack.env(
        METERAPI_GATEWAY_FILE=str(gateway_file(tmp_path, timeout_s=3.0)),
        METERAPI_UPSTREAM_URL=upstream.url,
    )
    meter_events = "/v1/billing/meter_events"
    await stack.control.inject_fault("error", path=meter_events, status=500, count=3)
    await stack.control.inject_fault("rate_limit", path=meter_events, count=2)
    service = ServiceProcess(env, log_path=tmp_path / "service.log")
    await asyncio.to_thread(service.start)
    # (path, query, the units a 2xx of it costs)
    calls = [
        ("/echo/plain", {}, 2),
        ("/echo/units", {"units": "11"}, 11),
        ("/echo/garbled", {"units": "eleven"}, 2),
        ("/echo/free", {"units": "0"}, 0),
        ("/echo/created", {"status": "201", "units": "3"}, 3),
        ("/echo/refused", {"status": "404", "units": "5"}, 0),
        ("/echo/broken", {"status": "503", "units": "5"}, 0),
        ("/slow", {"s": "15"}, 0),  # 504
        ("/big", {"mb": "1"}, 0),  # a route of 0 units
    ]
    expected = 0
    try:
        headers = {"X-API-Key": payer.key}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=30) as client:

            async def call(path: str, query: dict[str, str], units: int) -> int:
                response = await client.get(path, params=query)
                return units if 200 <= response.status_code < 300 else 0

            for _ in range(3):
                charged = await asyncio.gather(*(call(*c) for c in calls for _ in range(4)))
                expected += sum(charged)
            async with asyncio.timeout(60), client.stream("GET", "/sse") as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "event: tick"
                await client.post(f"{upstream.url}/_release")
                assert [line async for line in lines if line][-1] == "data: 3"
                expected += 5
    finally:
        assert await asyncio.to_thread(service.terminate)  # flushes what is pending
    assert expected == 3 * 4 * (2 + 11 + 2 + 3) + 5
    assert await stack.ledger_total() == expected
    await flush_usage(env)
    assert await stack.stripe_total(payer.customer) == expected
