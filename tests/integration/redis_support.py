"""Redis for the rate-limit tests: the shared server, or a private one this test can kill.

The shared server is ``METERAPI_TEST_REDIS_URL`` (``.ci/run`` sets it), else 127.0.0.1:6379.
Without one the Redis tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.integration.servers import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the Redis tests: {why}")
    pytest.skip(why)


def shared_redis_url() -> str:
    """The Redis every test may use (each counts under its own new API keys)."""
    url = os.environ.get("METERAPI_TEST_REDIS_URL", DEFAULT_URL)
    if not _answers(url):
        _missing(f"no Redis answers at {url.split('@')[-1]} (set METERAPI_TEST_REDIS_URL)")
    return url


class PrivateRedis:
    """``redis-server`` on a free port, without persistence, for a test that stops it."""

    def __init__(
        self, log_path: Path, *, password: str | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server is not installed")
        self.binary = binary or "redis-server"
        self.port = free_port()
        self.password = password
        self.tls = tls  # (certificate, key): TLS only, the certificate its own authority
        secret = "" if password is None else f":{password}@"
        if tls is None:
            self.url = f"redis://{secret}127.0.0.1:{self.port}/0"
        else:
            self.url = f"rediss://{secret}localhost:{self.port}/0?ssl_ca_certs={tls[0]}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *(("--port", str(self.port)) if self.tls is None else (
                 "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                 "--tls-cert-file", str(self.tls[0]), "--tls-key-file", str(self.tls[1]),
                 "--tls-ca-cert-file", str(self.tls[0]))),
             *(() if self.password is None else ("--requirepass", self.password))],
            stdout=log, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.kill()
