"""A real ``meterapi`` service in a subprocess under uvicorn, for tests that kill and restart it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from meterapi.stripe_emulator import EmulatorServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM and wait for the graceful shutdown; SIGKILL if it does not end in time."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def service_env(db_url: str, emulator: EmulatorServer, price: str, **extra: str) -> dict[str, str]:
    """The METERAPI_ settings of a service (or a ``meterapi`` command) wired to the emulator."""
    return {
        "METERAPI_DATABASE_URL": db_url,
        "METERAPI_STRIPE_API_BASE": emulator.url,
        "METERAPI_STRIPE_PRICE_ID": price,
        "METERAPI_REPORT_INTERVAL_S": "0.3",
        **extra,
    }


def meterapi(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """``meterapi …`` in a subprocess, with only the given METERAPI_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERAPI_")}
    return subprocess.run(
        [sys.executable, "-m", "meterapi.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


# Long enough for one report to meet every fault a test injects (seven, in the worst case) and
# wait out the reporter's backoff after each: 1 + 2 + 4 + … + 64 s at the most.
FLUSH_TIMEOUT_S = 150


async def flush_usage(env: dict[str, str]) -> None:
    """``meterapi usage flush``, as an operator runs it: everything pending reaches Stripe."""
    done = await asyncio.to_thread(
        meterapi,
        env,
        *("usage", "flush", "--timeout", str(FLUSH_TIMEOUT_S)),
        timeout_s=FLUSH_TIMEOUT_S + 30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, *, log_path: Path, timeout_s: float
) -> bool:
    """Poll ``/healthz`` until it answers 200 (True) or time runs out (False); raises if the
    process ends first, with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the service exited early (code {process.returncode}):\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


class ServiceProcess:
    """``python -m uvicorn meterapi.app:create_app --factory`` with the given environment."""

    def __init__(
        self, env: dict[str, str], *, log_path: Path, workers: int = 1, cli: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.workers = workers
        self.cli = cli  # `meterapi serve` itself (migrations, emulator, its logging) if True
        self.process: subprocess.Popen[bytes] | None = None

    cwd: Path | None = None

    def command(self) -> list[str]:
        if self.cli:
            return [
                sys.executable, "-m", "meterapi.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers),
                "--emulator-state", str(self.log_path.with_suffix(".emulator.json")),
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn", "meterapi.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--log-level", "warning", "--timeout-graceful-shutdown", "20",
        ]  # fmt: skip

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        # Its own process group: a kill reaches the workers of a multi-worker server too.
        self.process = subprocess.Popen(
            self.command(), env=self.env, cwd=self.cwd, stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        if not wait_until_healthy(
            self.process, self.url, log_path=self.log_path, timeout_s=timeout_s
        ):
            self.kill()
            raise RuntimeError("service did not start in time")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, and wait for the graceful shutdown; True if it ended cleanly.

        uvicorn re-raises the signal once its shutdown is complete, so a clean end reads as
        "killed by SIGTERM" (-15) as well as 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s) in (0, -signal.SIGTERM)


class ServeCommand(ServiceProcess):
    """``meterapi serve`` itself, run from ``cwd``: the command operators run, workers and all."""

    def __init__(self, env: dict[str, str], *, log_path: Path, cwd: Path, workers: int = 1) -> None:
        super().__init__(env, log_path=log_path, workers=workers)
        self.cwd = cwd

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("meterapi")), "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip

    def run_to_exit(self, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run it expecting it not to start: its exit code and output."""
        return subprocess.run(
            self.command(), env=self.env, cwd=self.cwd, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
