"""API-key benchmark (not a test).

1. The cost of verifying a key on a cache hit: ``keys.service.authenticate`` in a loop, in µs.
2. Requests/s of ``GET /v1/data`` (authenticated, cached key) against ``GET /healthz`` in one
   run: uvicorn with one worker in a subprocess on 127.0.0.1, and a load generator in another
   process (plain asyncio streams with keep-alive, lighter than an HTTP client library, so that
   on a small machine the generator is less of the bottleneck). Target: ratio ≥ 0.85.

    .venv/bin/python bench/keys_bench.py [--database-url URL] [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meterapi import migrations
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.keys import service
from meterapi.keys.cache import KeyCache
from meterapi.models import Customer

PEPPER = "bench-pepper-not-secret"


async def seed(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            customer = Customer(stripe_customer_id=f"cus_bench{time.time_ns()}")
            customer.subscription_status = "active"
            session.add(customer)
            await session.flush()
            assert customer.id is not None
            _, plaintext = await service.issue(
                session, customer_id=customer.id, pepper=PEPPER.encode(), live=False
            )
        return plaintext
    finally:
        await engine.dispose()


async def verification_cost(database_url: str, key: str, rounds: int = 200_000) -> float:
    """µs per ``authenticate`` call on a warm cache (no SQL is issued in the loop)."""
    engine = make_engine(database_url)
    sessionmaker = make_sessionmaker(engine)
    cache = KeyCache()
    try:
        async with sessionmaker() as session:
            await service.authenticate(session, key, pepper=PEPPER.encode(), cache=cache)
            started = time.perf_counter()
            for _ in range(rounds):
                await service.authenticate(session, key, pepper=PEPPER.encode(), cache=cache)
            return (time.perf_counter() - started) / rounds * 1e6
    finally:
        await engine.dispose()


# -- load generator (runs in its own process: ``--load``) -------------------------------------


async def _connection(request: bytes, port: int, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            if status != b"200":
                raise RuntimeError(f"status {status.decode()}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done += 1
    finally:
        counts.append(done)
        writer.close()


async def _load(port: int, path: str, key: str, seconds: float, connections: int) -> float:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n\r\n".encode()
        if key
        else f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )
    counts: list[int] = []
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_connection(request, port, deadline, counts) for _ in range(connections))
    )
    return sum(counts) / (time.monotonic() - started)


def run_load(port: int, path: str, key: str, seconds: float, connections: int) -> float:
    env = {**os.environ, "BENCH_KEY": key}  # the key travels by environment, not argv
    result = subprocess.run(
        [sys.executable, __file__, "--load", str(port), path, str(seconds), str(connections)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip())


# -- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "METERAPI_DATABASE_URL": database_url,
        "METERAPI_KEY_PEPPER": PEPPER,
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "meterapi.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--no-access-log", "--log-level", "warning",
        ],
        env=env,
    )  # fmt: skip
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrations.upgrade(database_url)
        key = asyncio.run(seed(database_url))
        backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
        micros = asyncio.run(verification_cost(database_url, key))
        print(f"verification on a cache hit: {micros:.2f} µs per call ({backend})")

        port = free_port()
        server = start_server(database_url, port)
        try:
            run_load(port, "/v1/data", key, 1.0, args.connections)  # warm-up
            health: list[float] = []
            data: list[float] = []
            for _ in range(args.rounds):
                health.append(run_load(port, "/healthz", "", args.seconds, args.connections))
                data.append(run_load(port, "/v1/data", key, args.seconds, args.connections))
        finally:
            server.terminate()
            server.wait(timeout=10)
    h, d = statistics.median(health), statistics.median(data)
    print(f"GET /healthz: {h:,.0f} req/s   (runs: {', '.join(f'{x:,.0f}' for x in health)})")
    print(f"GET /v1/data: {d:,.0f} req/s   (runs: {', '.join(f'{x:,.0f}' for x in data)})")
    print(f"ratio /v1/data ÷ /healthz: {d / h:.3f} (target ≥ 0.85; one uvicorn worker)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        port, path, seconds, connections = sys.argv[2:6]
        rate = asyncio.run(
            _load(
                int(port), path, os.environ.get("BENCH_KEY", ""), float(seconds), int(connections)
            )
        )
        print(f"{rate:.1f}")
    else:
        main()
