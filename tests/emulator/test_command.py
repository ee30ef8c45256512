"""The documented command line, `meterapi stripe-emulator --port N …`, run as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import stripe

from tests.integration.servers import free_port

METERAPI = str(Path(sys.executable).with_name("meterapi"))


def test_help_lists_the_real_options() -> None:
    done = subprocess.run(
        [METERAPI, "stripe-emulator", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--port", "--host", "--webhook-url", "--webhook-secret", "--state-file"):
        assert option in done.stdout


def test_unknown_option_is_refused() -> None:
    done = subprocess.run(
        [METERAPI, "stripe-emulator", "--prot", "1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --prot" in done.stderr


def test_documented_command_serves_the_sdk(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    command = [
        METERAPI, "stripe-emulator", "--port", str(port),
        "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "whsec_cli_test",
        "--state-file", str(state),
    ]  # fmt: skip
    log = (tmp_path / "emulator.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "emulator.log").read_text()
            try:
                httpx.get(f"{url}/_emulator/health", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        http = stripe.HTTPXClient(allow_sync_methods=True)
        client = stripe.StripeClient(
            "sk_test_cli", http_client=http, base_addresses={"api": url, "meter_events": url}
        )
        customer = client.v1.customers.create(params={"email": "cli@example.com"})
        fetched = client.v1.customers.retrieve(customer.id)
        http.close()
        assert fetched.email == "cli@example.com"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    printed = (tmp_path / "emulator.log").read_text()
    assert f"http://127.0.0.1:{port}" in printed
    assert "whsec_cli_test" in printed
    assert customer.id in state.read_text()  # --state-file took effect on shutdown
