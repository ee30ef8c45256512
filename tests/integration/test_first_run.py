"""A new user's first run, with real ``meterapi serve`` processes: in emulator mode any --port
works end to end (Checkout returns to it), the start says EMULATOR MODE without burying it under
library lines or failed webhooks, the container's command gives the same demo reachable from the
host, and a real Stripe key without a public URL is warned about."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.first_run import (
    Served,
    check_start_output,
    clean_env,
    subscribe_and_call,
    wait_for_webhooks,
)
from tests.integration.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
METERAPI = str(Path(sys.executable).with_name("meterapi"))


def dockerfile_command() -> list[str]:
    """The image's CMD (exec form), as Docker runs it."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            return list(json.loads(line.removeprefix("CMD ")))
    raise AssertionError("the Dockerfile has no CMD")


def _with_port(command: list[str], port: int) -> list[str]:
    """The same command on a free port (8000 may be taken on this machine)."""
    command = [METERAPI if command[0] == "meterapi" else command[0], *command[1:]]
    return [
        *command[: command.index("--port") + 1],
        str(port),
        *command[command.index("--port") + 2 :],
    ]


@pytest.mark.parametrize("how", ["serve --port", "the image's command"])
def test_emulator_mode_works_end_to_end_on_any_port(db_url: str, tmp_path: Path, how: str) -> None:
    port = free_port()
    if how == "serve --port":
        command = [METERAPI, "serve", "--port", str(port)]
    else:
        command = _with_port(dockerfile_command(), port)
        assert "--emulator-host" in command  # the emulator's pages must reach the host
    env = clean_env(METERAPI_DATABASE_URL=db_url)
    with Served(command, port=port, workdir=tmp_path, env=env) as served:
        emulator = served.emulator_url()
        subscribe_and_call(served.url)  # Checkout returns the buyer to this very port
        deliveries = wait_for_webhooks(emulator)
    assert [d for d in deliveries if d["status"] == "failed"] == []
    assert {d["type"] for d in deliveries if d["status"] == "delivered"} >= {
        "checkout.session.completed"
    }
    output = served.output()
    check_start_output(output)
    assert f"Subscribe at http://127.0.0.1:{port}/dashboard" in output
    if how != "serve --port":
        # Listening on every address, as in the container: the hosted pages are on a port a
        # published port can reach, named by the same host the buyer's browser uses.
        assert urlsplit(emulator).hostname == "127.0.0.1"


def test_an_explicit_public_url_wins_in_emulator_mode(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    public = "http://demo.example:9999"
    env = clean_env(METERAPI_DATABASE_URL=db_url, METERAPI_PUBLIC_URL=public)
    with Served(
        [METERAPI, "serve", "--port", str(port)], port=port, workdir=tmp_path, env=env
    ) as served:
        checkout = httpx.post(f"{served.url}/v1/checkout", json={}, timeout=15).json()
        paid = httpx.post(checkout["url"], data={}, timeout=15)
    assert paid.headers["location"].startswith(f"{public}/dashboard?session_id=cs_")


@pytest.mark.parametrize("public_url", [None, "https://api.example.com"])
def test_a_real_stripe_key_without_a_public_url_is_warned_about(
    db_url: str, tmp_path: Path, public_url: str | None
) -> None:
    port = free_port()
    env = clean_env(
        METERAPI_DATABASE_URL=db_url,
        METERAPI_STRIPE_SECRET_KEY="sk_test_first_run",
        METERAPI_STRIPE_WEBHOOK_SECRET="whsec_first_run",
        METERAPI_KEY_PEPPER="pepper-for-the-first-run-test",
        METERAPI_STRIPE_PRICE_ID="price_first_run",
        METERAPI_STRIPE_API_BASE="http://127.0.0.1:9",  # never called at start
    )
    if public_url:
        env["METERAPI_PUBLIC_URL"] = public_url
    with Served(
        [METERAPI, "serve", "--port", str(port)], port=port, workdir=tmp_path, env=env
    ) as served:
        pass
    output = served.output()
    assert "EMULATOR MODE" not in output
    warned = re.search(r"WARNING: .*METERAPI_PUBLIC_URL is not", output)
    assert (warned is not None) == (public_url is None), output
