"""Helpers for the gateway's tests: the upstream in its own process, a paying customer, the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import stripe

from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service as key_service
from meterapi.keys.policy import KeyPolicy
from meterapi.models import Customer
from tests.conftest import make_settings
from tests.integration.servers import free_port

ROOT = Path(__file__).resolve().parents[2]

GATEWAY_TOML = """\
upstream = "http://127.0.0.1:9"   # replaced by METERAPI_UPSTREAM_URL
timeout_s = {timeout_s}

[[route]]
path = "/echo/{{rest:path}}"
methods = ["GET", "POST", "PUT"]
units = 2

[[route]]
path = "/sse"
methods = ["GET"]

[[route]]
path = "/slow"

[[route]]
path = "/big"
units = 0
"""


class UpstreamProcess:
    """An upstream API in a process of its own: by default ``gateway_upstream.py`` under
    uvicorn; ``command`` runs another (``{port}`` in it is replaced by a free port)."""

    def __init__(
        self,
        log_path: Path,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = command or [
            sys.executable, "-m", "uvicorn", "tests.integration.gateway_upstream:app",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UpstreamProcess:
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"upstream exited: {self.log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/", timeout=0.5)  # any answer: it is listening
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the upstream did not start")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def seen(self, *, forget: bool = False) -> list[str]:
        method = "DELETE" if forget else "GET"
        paths: list[str] = httpx.request(method, f"{self.url}/_seen").json()
        return paths


@dataclass(frozen=True)
class Payer:
    customer: str  # cus_…
    key_id: str
    key: str


async def paying_customer(
    db_url: str,
    sdk: stripe.StripeClient,
    *,
    email: str = "gw@example.com",
    pepper: str | None = None,
) -> Payer:
    """A Stripe customer with an active subscription in our database, and one key (hashed
    under ``pepper``, or the test settings' pepper)."""
    stripe_customer = await sdk.v1.customers.create_async(params={"email": email})
    engine = make_engine(db_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(stripe_customer_id=stripe_customer.id, subscription_status="active")
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            key, plaintext = await key_service.issue(
                session,
                customer_id=customer.id,
                policy=KeyPolicy(
                    pepper=make_settings(db_url, key_pepper=pepper).pepper_bytes(), live=False
                ),
            )
    finally:
        await engine.dispose()
    return Payer(stripe_customer.id, key.id, plaintext)


def gateway_file(tmp_path: Path, *, timeout_s: float = 3.0) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_TOML.format(timeout_s=timeout_s))
    return path
