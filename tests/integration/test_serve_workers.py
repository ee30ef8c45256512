"""``meterapi serve --workers N`` spreads connections across its workers: each worker accepts on
a socket of its own (``meterapi.cli.workers``), so a burst of keep-alive connections, which a
shared socket hands to whichever worker wakes first, lands on every worker."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.servers import free_port, stop

CONNECTIONS = 32


def _pids_of_connections(port: int, count: int) -> list[str]:
    """Open ``count`` connections at once (as a load generator or a client's pool does), then
    ask on each which worker accepted it."""
    connections = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    pids = []
    for connection in connections:
        with connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
            pids.append(answer.partition(b"\r\n\r\n")[2].decode())
    return pids


def _serve_pid_app(port: int, log: Path) -> subprocess.Popen[bytes]:
    code = (
        "from meterapi.cli.workers import serve_workers; "
        f"serve_workers('tests.integration.pid_app:app', host='127.0.0.1', port={port}, "
        "workers=2, log_level='warning', timeout_worker_healthcheck=60)"
    )
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=out)


def _serve_and_burst(tmp_path: Path) -> list[str]:
    port = free_port()
    log = tmp_path / "workers.log"
    process = _serve_pid_app(port, log)
    try:
        deadline = time.monotonic() + 60
        answered: set[str] = set()
        while len(answered) < 2:  # both workers listen: single connections reached each
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the workers did not start: {answered}"
            try:
                answered.update(_pids_of_connections(port, 1))
            except OSError:
                time.sleep(0.1)
        return _pids_of_connections(port, CONNECTIONS)
    finally:
        stop(process)


async def test_a_burst_of_connections_reaches_every_worker(tmp_path: Path) -> None:
    pids = await asyncio.to_thread(_serve_and_burst, tmp_path)
    # A shared socket gave all 32 to one worker; the kernel's hash spreads them.
    assert len(set(pids)) == 2, pids
