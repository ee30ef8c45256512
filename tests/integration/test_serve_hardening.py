"""``meterapi serve`` as operators run it, in a real subprocess: metrics across workers,
forwarded headers, and an oversized body over a real socket (issue 13 items 10, 12, 21)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import stripe

from meterapi.stripe_emulator import EmulatorServer
from tests.conftest import EMULATOR_SECRET_KEY
from tests.integration.billing_support import WEBHOOK_SECRET, event, subscription
from tests.integration.servers import free_port, stop
from tests.metrics_support import sample


@contextmanager
def serving(
    tmp_path: Path,
    db_url: str,
    emulator: EmulatorServer,
    price: str,
    *,
    workers: int = 1,
    **env: str,
) -> Iterator[str]:
    """``meterapi serve`` on a free port with a Stripe test key (so no emulator of its own)."""
    port = free_port()
    environment = {
        **os.environ,
        "METERAPI_DATABASE_URL": db_url,
        "METERAPI_STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "METERAPI_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "METERAPI_KEY_PEPPER": "pepper-for-the-serve-tests-0123456789",
        "METERAPI_STRIPE_API_BASE": emulator.url,
        "METERAPI_STRIPE_PRICE_ID": price,
        "TMPDIR": str(tmp_path),
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        sys.executable, "-m", "meterapi.cli", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    log = (tmp_path / "serve.log").open("ab")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "meterapi serve did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        stop(process)
        log.close()


def _readyz_count(text: str) -> float:
    # /readyz, not /healthz: the start-up probe polls /healthz.
    count = "meterapi_request_duration_seconds_count"
    return sample(text, count, route="/readyz", status="2xx") or 0.0


async def test_metrics_add_up_every_worker(
    tmp_path: Path, db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    def run() -> None:
        with serving(tmp_path, db_url, stripe_emulator, stripe_price, workers=2) as url:
            (shared,) = tmp_path.glob("meterapi-metrics-*")  # made by serve, for its workers
            requests = 120
            for _ in range(requests):  # a new connection each: the workers share them out
                assert httpx.get(f"{url}/readyz").status_code == 200
            writers = {p.stem.rsplit("_", 1)[-1] for p in shared.glob("histogram_*.db")}
            assert len(writers) == 2, "both workers served"
            # Whichever worker answers the scrape, it counts every worker's requests.
            for _ in range(10):
                assert _readyz_count(httpx.get(f"{url}/metrics").text) == requests
        assert not shared.exists()  # removed when serve ends

    await asyncio.to_thread(run)


async def test_one_worker_counts_in_memory(
    tmp_path: Path, db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    def run() -> None:
        with serving(tmp_path, db_url, stripe_emulator, stripe_price) as url:
            for _ in range(5):
                httpx.get(f"{url}/readyz")
            assert _readyz_count(httpx.get(f"{url}/metrics").text) == 5
            assert list(tmp_path.glob("meterapi-metrics-*")) == []

    await asyncio.to_thread(run)


def _claim(url: str, forwarded_for: str) -> int:
    response = httpx.post(
        f"{url}/v1/keys/claim",
        json={"checkout_session_id": f"cs_test_{forwarded_for.replace('.', '_')}"},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return response.status_code


async def test_serve_believes_forwarded_headers_only_from_trusted_proxies(
    tmp_path: Path, db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    def run() -> None:
        # The client is 127.0.0.1, which uvicorn on its own would trust.
        limit = {"METERAPI_PUBLIC_RATE_LIMIT": "1/minute"}
        with serving(tmp_path, db_url, stripe_emulator, stripe_price, **limit) as url:
            assert [_claim(url, "6.6.6.6"), _claim(url, "7.7.7.7")] == [404, 429]
        trusted = {**limit, "METERAPI_TRUSTED_PROXIES": "127.0.0.1"}
        with serving(tmp_path, db_url, stripe_emulator, stripe_price, **trusted) as url:
            assert [_claim(url, "6.6.6.6"), _claim(url, "7.7.7.7")] == [404, 404]

    await asyncio.to_thread(run)


async def test_a_5mb_signed_webhook_is_answered_413_over_a_real_socket(
    tmp_path: Path, db_url: str, stripe_emulator: EmulatorServer, stripe_price: str
) -> None:
    evt = event("customer.subscription.created", subscription(), created=int(time.time()))
    evt["data"]["object"]["padding"] = "x" * 5_000_000
    body = json.dumps(evt)
    signature = stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET)

    async def chunked() -> object:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536].encode()

    def run() -> None:
        with serving(tmp_path, db_url, stripe_emulator, stripe_price) as url:
            headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
            for _ in range(3):  # and the connection stays usable
                response = httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers)
                assert response.status_code == 413
                assert response.json()["error"]["code"] == "payload_too_large"
            streamed = asyncio.run(_post_streamed(url, chunked(), headers))
            assert streamed == (413, "payload_too_large")
            assert httpx.get(f"{url}/healthz").status_code == 200

    await asyncio.to_thread(run)


async def _post_streamed(url: str, content: object, headers: dict[str, str]) -> tuple[int, str]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/webhooks/stripe",
            content=content,  # type: ignore[arg-type]
            headers=headers,
        )
        return response.status_code, response.json()["error"]["code"]
