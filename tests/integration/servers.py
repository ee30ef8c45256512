"""A real ``meterapi`` service in a subprocess under uvicorn, for tests that kill and restart it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        command = [
            sys.executable, "-m", "uvicorn", "meterapi.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--log-level", "warning", "--timeout-graceful-shutdown", "20",
        ]  # fmt: skip
        if self.cli:
            command = [
                sys.executable, "-m", "meterapi.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers),
                "--emulator-state", str(self.log_path.with_suffix(".emulator.json")),
            ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("service did not start in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, and wait for the graceful shutdown; True if it ended cleanly.

        uvicorn re-raises the signal once its shutdown is complete, so a clean end reads as
        "killed by SIGTERM" (-15) as well as 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s) in (0, -signal.SIGTERM)
