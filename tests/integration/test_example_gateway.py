"""examples/gateway: the standard-library upstream behind a real service process, as its README
runs it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

from tests.integration.conftest import Stack
from tests.integration.gateway_support import ROOT, UpstreamProcess
from tests.integration.servers import ServiceProcess

EXAMPLE = ROOT / "examples" / "gateway"
SECRET = "change-me"


async def test_the_gateway_example(stack: Stack, tmp_path: Path) -> None:
    payer = await stack.payer()
    command = [sys.executable, str(EXAMPLE / "upstream.py"), "--port", "{port}"]
    upstream = UpstreamProcess(
        tmp_path / "upstream.log", command=command, env={"UPSTREAM_SECRET": SECRET}
    )
    env = stack.env(
        METERAPI_GATEWAY_FILE=str(EXAMPLE / "gateway.toml"), METERAPI_UPSTREAM_SECRET=SECRET
    )
    with upstream:
        env["METERAPI_UPSTREAM_URL"] = upstream.url
        service = ServiceProcess(env, log_path=tmp_path / "service.log")
        await asyncio.to_thread(service.start)
        try:
            headers = {"X-API-Key": payer.key}
            async with httpx.AsyncClient(base_url=service.url, headers=headers) as client:
                forecast = await client.get("/v1/forecast/lisbon")
                assert forecast.status_code == 200, forecast.text
                assert forecast.json()["for"] == payer.customer  # the signature was accepted

                events = []
                async with client.stream("GET", "/v1/stream/lisbon?hours=4") as response:
                    assert response.headers["content-type"] == "text/event-stream"
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line.removeprefix("data: ")))
                assert [e.get("hour") for e in events] == [0, 1, 2, 3, None]

                # Straight to the upstream, unsigned: refused, so only the gateway gets in.
                direct = await client.get(f"{upstream.url}/v1/forecast/lisbon")
                assert direct.status_code == 401
        finally:
            assert await asyncio.to_thread(service.terminate)
    assert await stack.ledger_total() == 1 + 4
