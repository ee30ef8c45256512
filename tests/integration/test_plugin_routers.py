"""``meterapi serve`` with METERAPI_ROUTERS: the Python example (examples/python-router) served
by the real command, billed exactly into Stripe under faults, and bad router names refused."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from tests.integration.conftest import Stack
from tests.integration.servers import ServeCommand, flush_usage

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python-router"
PEPPER = "a-pepper-for-the-plugin-router-tests"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def serve_env(stack: Stack) -> dict[str, str]:
    """A Stripe-keyed service (pointed at the suite's emulator) serving the example router."""
    return stack.env(
        METERAPI_STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        METERAPI_STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        METERAPI_KEY_PEPPER=PEPPER,
        METERAPI_ROUTERS="words_api.api:router",
        METERAPI_EXAMPLE_ROUTES="false",
    )


class WordLoad:
    """Clients posting texts of random lengths; sums the units that 2xx responses charged."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.charged = 0
        self.ok = 0
        self.refused = 0

    async def client(self, calls: int, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            for i in range(calls):
                text = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))
                key = self.key if i % 7 else self.key[:-2] + "xx"  # some refused: not billed
                path = "/v1/words/stream" if i % 5 == 0 else "/v1/words"
                response = await client.post(path, json={"text": text}, headers={"X-API-Key": key})
                if response.status_code != 200:
                    assert response.status_code == 401
                    self.refused += 1
                    continue
                self.ok += 1
                if path == "/v1/words":
                    body = response.json()
                    assert body["words"] == len(text.split()) == body["units_charged"]
                    assert response.headers["x-served-by"] == "words-api"  # the router's own
                else:
                    assert response.text.split() == text.split()
                self.charged += len(text.split())


async def test_the_example_router_bills_stripe_exactly_under_faults(
    stack: Stack,
    tmp_path: Path,
) -> None:
    payer = await stack.payer(email="words@example.com", pepper=PEPPER)
    customer, key = payer.customer, payer.key
    env = serve_env(stack)
    service = ServeCommand(env, log_path=tmp_path / "serve.log", cwd=EXAMPLE, workers=2)
    await asyncio.to_thread(service.start)
    try:
        events = "/v1/billing/meter_events"
        await stack.control.inject_fault("error", events, status=500, count=3)
        await stack.control.inject_fault("lost_response", events, count=2)
        await stack.control.inject_fault("rate_limit", events, count=2)
        load = WordLoad(service.url, key)
        await asyncio.gather(*(load.client(40, seed) for seed in range(6)))
        async with httpx.AsyncClient(base_url=service.url) as client:
            schema = (await client.get("/openapi.json")).json()
            unbilled = [
                await client.post("/v1/words", json={"text": "a b"}),  # no key
                await client.post("/v1/words", json={"txt": "a"}, headers={"X-API-Key": key}),
                await client.get("/v1/data", headers={"X-API-Key": key}),  # example routes off
            ]
        assert [r.status_code for r in unbilled] == [401, 422, 404]
        assert await asyncio.to_thread(service.terminate)
    finally:
        service.kill()
    await flush_usage(env)

    # Every fault was met (a spent fault leaves the list), and billing came out exact all the same.
    async with httpx.AsyncClient(base_url=stack.emulator.url) as emulator:
        assert (await emulator.get("/_emulator/faults")).json()["data"] == []
    assert load.ok > 150 and load.refused > 20 and load.charged > 500
    assert await stack.ledger_total() == load.charged
    assert await stack.stripe_total(customer) == load.charged
    words = schema["paths"]["/v1/words"]["post"]
    assert words["security"] == [{"ApiKey": []}]
    assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert "/v1/data" not in schema["paths"]


@pytest.mark.parametrize(
    ("routers", "says"),
    [
        ("words_api.nope:router", "cannot import 'words_api.nope:router'"),
        ("words_api.api:missing", "'words_api.api:missing': module 'words_api.api' has no"),
        ("words_api.api:Text", "'words_api.api:Text' is a ModelMetaclass, not a fastapi.APIRouter"),
        ("words_api.api", "'words_api.api' is not of the form"),
        ("clashing:router", "GET /healthz collides with a route meterapi already serves"),
    ],
)
def test_a_bad_router_stops_serve_with_one_line(
    tmp_path: Path, db_url: str, routers: str, says: str
) -> None:
    # The example's package and a module of clashing routes, both importable from the cwd.
    (tmp_path / "words_api").symlink_to(EXAMPLE / "words_api")
    (tmp_path / "clashing.py").write_text(
        "from fastapi import APIRouter\n"
        "router = APIRouter()\n"
        "@router.get('/healthz')\n"
        "async def mine() -> str:\n"
        "    return 'mine'\n"
    )
    env = {"METERAPI_DATABASE_URL": db_url, "METERAPI_ROUTERS": routers}
    service = ServeCommand(env, log_path=tmp_path / "serve.log", cwd=tmp_path)
    done = service.run_to_exit()
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert lines[0].startswith("meterapi: configuration error: ")
