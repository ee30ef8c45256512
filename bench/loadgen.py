"""A small HTTP/1.1 load generator on raw asyncio sockets with keep-alive (no client library).

Run as its own process (``python -m bench.loadgen …``), so the client never shares an event loop
or a GIL with the server it measures. Two modes:

- **closed loop** (``--connections N``): each connection sends a request as soon as the previous
  response is in, for ``--seconds``; requests in flight at the deadline are waited for, so every
  response the server produced is counted.
- **open loop** (``--rate R``): requests are due at a fixed rate, whatever the server does; a due
  request goes out on an idle connection (one is opened when none is idle), and its latency is
  measured from the moment it was *due*, so a slow server cannot hide its queue from the figures
  (no coordinated omission).

The API key, if any, comes from the ``BENCH_KEY`` environment variable, not from argv. The result
is one JSON object on stdout: counts per status, requests/s, latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
DRAIN_TIMEOUT_S = 30.0
MAX_OPEN_LOOP_CONNECTIONS = 2048


def build_request(path: str, key: str | None, host: str = "127.0.0.1") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    if key:
        lines.append(f"X-API-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0  # connections that failed or closed with a request in flight

    def done(self, status: int, latency_s: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(latency_s)


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self, tally: Tally, on_idle: Callable[[Connection], None]) -> None:
        self.tally = tally
        self.on_idle = on_idle
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.started = 0.0  # when the request in flight was due (open loop) or sent
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def send(self, request: bytes, started: float) -> None:
        assert self.transport is not None and not self.busy
        self.busy = True
        self.started = started
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            status = int(self.buffer[9:12])
            self.buffer = self.buffer[end + 4 + length :]
            self.busy = False
            self.tally.done(status, time.perf_counter() - self.started)
            self.on_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.tally.errors += 1
            self.busy = False
        if not self.closed.done():
            self.closed.set_result(None)


Target = tuple[str, int]


async def _connect(
    target: Target, tally: Tally, on_idle: Callable[[Connection], None]
) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: Connection(tally, on_idle), *target)
    return protocol


async def closed_loop(
    targets: Sequence[Target], request: bytes, *, connections: int, seconds: float
) -> tuple[Tally, float]:
    tally = Tally()
    deadline = 0.0
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    active = connections

    def on_idle(conn: Connection) -> None:
        nonlocal active
        now = time.perf_counter()
        if now < deadline:
            conn.send(request, now)
            return
        active -= 1
        if active == 0 and not finished.done():
            finished.set_result(None)

    conns = [await _connect(targets[i % len(targets)], tally, on_idle) for i in range(connections)]
    started = time.perf_counter()
    deadline = started + seconds
    for conn in conns:
        conn.send(request, time.perf_counter())
    waiters = [finished, *(c.closed for c in conns)]
    try:
        async with asyncio.timeout(seconds + DRAIN_TIMEOUT_S):
            while not finished.done():
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                # a connection that died in flight no longer counts as active
                alive = [c for c in conns if not c.closed.done()]
                if not alive or all(not c.busy for c in alive):
                    break
                waiters = [finished, *(c.closed for c in alive)]
    except TimeoutError:
        pass
    elapsed = time.perf_counter() - started
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return tally, elapsed


async def open_loop(
    targets: Sequence[Target], request: bytes, *, rate: float, seconds: float, connections: int
) -> tuple[Tally, float, int]:
    """Returns the tally, the elapsed time and how many requests were never answered."""
    tally = Tally()
    idle: collections.deque[Connection] = collections.deque()
    due: collections.deque[float] = collections.deque()
    opened: list[Connection] = []
    opening = 0

    def on_idle(conn: Connection) -> None:
        if due:
            conn.send(request, due.popleft())
        else:
            idle.append(conn)

    async def open_one() -> None:
        nonlocal opening
        opening += 1
        try:
            conn = await _connect(targets[len(opened) % len(targets)], tally, on_idle)
            opened.append(conn)
            on_idle(conn)
        except OSError:
            tally.errors += 1
        finally:
            opening -= 1

    for _ in range(connections):
        await open_one()
    interval = 1.0 / rate
    total = int(rate * seconds)
    started = time.perf_counter()
    background: set[asyncio.Task[None]] = set()
    for i in range(total):
        when = started + i * interval
        delay = when - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        while idle and idle[0].closed.done():
            idle.popleft()
        if idle:
            idle.popleft().send(request, when)
            continue
        due.append(when)
        if len(opened) + opening < MAX_OPEN_LOOP_CONNECTIONS and opening < len(due):
            task = asyncio.create_task(open_one())
            background.add(task)
            task.add_done_callback(background.discard)
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while (due or any(c.busy for c in opened)) and time.perf_counter() < deadline:
        if due and not any(not c.closed.done() for c in opened):
            break  # everything is closed: nothing can answer what is left
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    unanswered = len(due) + sum(1 for c in opened if c.busy)
    for conn in opened:
        if conn.transport is not None:
            conn.transport.close()
    return tally, elapsed, unanswered


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summarise(tally: Tally, elapsed: float, unanswered: int = 0) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    answered = len(latencies)
    ok = sum(n for status, n in tally.statuses.items() if 200 <= status < 300)
    return {
        "requests": answered,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
        "unanswered": unanswered,
        "elapsed_s": elapsed,
        "rps": answered / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "p999_ms": percentile(latencies, 99.9) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
    }


def parse_target(value: str) -> Target:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True, help="host:port, repeatable")
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, help="open loop: requests per second")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the same loop uvicorn picks, when installed

        uvloop.install()
    except ImportError:
        pass
    targets = [parse_target(t) for t in args.target]
    request = build_request(args.path, os.environ.get("BENCH_KEY") or None)
    if args.rate:
        tally, elapsed, unanswered = asyncio.run(
            open_loop(
                targets,
                request,
                rate=args.rate,
                seconds=args.seconds,
                connections=args.connections,
            )
        )
        result = summarise(tally, elapsed, unanswered)
        result["offered_rps"] = args.rate
    else:
        tally, elapsed = asyncio.run(
            closed_loop(targets, request, connections=args.connections, seconds=args.seconds)
        )
        result = summarise(tally, elapsed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
