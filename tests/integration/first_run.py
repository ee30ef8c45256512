"""A real ``meterapi serve`` in emulator mode, as a new user starts it, and the first paid call.

Used by tests/integration/test_first_run.py and by ``.ci/wheel-check`` (the built wheel in a
fresh venv):

    python -m tests.integration.first_run --meterapi /path/to/venv/bin/meterapi
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from meterapi.dashboard import pages
from tests.integration.servers import free_port, wait_until_healthy

START_TIMEOUT_S = 60.0
BANNER = "EMULATOR MODE"
EMULATOR_AT = re.compile(r"Stripe is the built-in emulator at (http://\S+);")
FAILED_WEBHOOK = re.compile(r"webhook evt_\w+ .*failed")
LIBRARY_INFO = re.compile(r"\bINFO (stripe|httpx|httpcore|hpack|aiosqlite|alembic)\b")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any METERAPI_ setting: the new user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERAPI_")}
    env.update(extra)
    return env


class Served:
    """``<meterapi> serve …`` (or any command) in ``workdir``, output to a file."""

    def __init__(
        self, command: list[str], *, port: int, workdir: Path, env: dict[str, str]
    ) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Served:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait_until_healthy(
            self.process, self.url, log_path=self.log_path, timeout_s=START_TIMEOUT_S
        ):
            return self
        self.stop()
        raise RuntimeError(f"serve did not answer in time:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def emulator_url(self) -> str:
        found = EMULATOR_AT.search(self.output())
        assert found is not None, self.output()
        return found.group(1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def subscribe_and_call(service_url: str) -> str:
    """Checkout → pay on the emulator's hosted page → back to this service → claim → one paid
    call; returns the key. Every address is used exactly as the service hands it out."""
    with httpx.Client(base_url=service_url, timeout=15) as http:
        checkout = http.post("/v1/checkout", json={"email": "first@example.com"})
        assert checkout.status_code == 201, checkout.text
        body = checkout.json()
        page = http.get(body["url"])
        assert page.status_code == 200, page.text
        assert "Pay" in page.text
        paid = http.post(body["url"], data={"email": "first@example.com"})
        assert paid.status_code == 303, paid.text
        back = paid.headers["location"]
        assert back == f"{service_url}/dashboard?session_id={body['id']}", back
        assert http.get(back).status_code == 200
        claim = http.post(
            "/v1/keys/claim",
            json={"checkout_session_id": body["id"], "claim_token": body["claim_token"]},
        )
        assert claim.status_code == 201, claim.text
        key = str(claim.json()["api_key"])
        data = http.get("/v1/data", headers={"X-API-Key": key})
        assert data.status_code == 200, data.text
        return key


def check_dashboard_assets(service_url: str) -> None:
    """Every script and stylesheet the dashboard lists is served: the package shipped them."""
    with httpx.Client(base_url=service_url, timeout=15) as http:
        missing = [
            name
            for name in pages.ASSETS
            if http.get(f"/dashboard/assets/{name}").status_code != 200
        ]
    assert not missing, f"not in the installed package: {missing}"


def wait_for_webhooks(emulator_url: str, within_s: float = 20.0) -> list[dict[str, object]]:
    """The emulator's deliveries once none is pending; a test asserts none failed."""
    deadline = time.monotonic() + within_s
    while True:
        rows = httpx.get(f"{emulator_url}/_emulator/webhooks", timeout=5).json()["data"]
        if not any(r["status"] == "pending" for r in rows) or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.1)


def check_start_output(output: str) -> None:
    """The banner is there, not buried: no failed webhooks, no library INFO lines."""
    assert BANNER in output, output
    assert not FAILED_WEBHOOK.search(output), output
    assert not LIBRARY_INFO.search(output), output


def main(argv: list[str] | None = None) -> int:
    """The wheel check: ``meterapi db upgrade``, ``meterapi serve``, one paid call, the
    dashboard's files."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--meterapi", required=True, help="the installed meterapi command")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterapi-wheel-") as tmp:
        workdir = Path(tmp)
        env = clean_env(METERAPI_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'wheel.db'}")
        upgrade = subprocess.run(
            [args.meterapi, "db", "upgrade"], cwd=workdir, env=env, capture_output=True, text=True
        )
        print(upgrade.stdout + upgrade.stderr, end="")
        assert upgrade.returncode == 0, "meterapi db upgrade failed"
        port = free_port()
        command = [args.meterapi, "serve", "--port", str(port)]
        with Served(command, port=port, workdir=workdir, env=env) as served:
            subscribe_and_call(served.url)
            check_dashboard_assets(served.url)
            rows = wait_for_webhooks(served.emulator_url())
        output = served.output()
        print(output, end="")
        check_start_output(output)
        failed = [r for r in rows if r["status"] == "failed"]
        assert not failed, failed
        host = urlsplit(served.url).netloc
        print(
            f"wheel check: migrated, served on {host}, subscribed, one paid call, "
            f"{len(pages.ASSETS)} dashboard assets served"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
