"""CPU time per request, from ``/proc``: the service's processes and the database's.

The service is its uvicorn process and any workers; the database is, on PostgreSQL, the server
backends connected to the benchmark's own database (found in ``pg_stat_activity``), which is what
this service makes the server do; the server's shared processes (WAL writer, checkpointer) also
serve other databases on a shared machine and are left out. On SQLite the database runs inside
the service's process and is counted there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a multi-worker uvicorn's workers)."""
    found = [pid]
    for child in children(pid):
        found.extend(process_tree(child))
    return found


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def _backends(admin: dict[str, object], database: str) -> list[int]:
    connection = await asyncpg.connect(**admin, timeout=10)  # type: ignore[arg-type]
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await connection.close()
    return [int(r["pid"]) for r in rows]


def postgres_backends(admin: dict[str, object], database: str) -> Callable[[], list[int]]:
    return lambda: asyncio.run(_backends(admin, database))


@dataclass
class Sample:
    service: dict[int, float]
    database: dict[int, float]


@dataclass
class CpuPerRequest:
    service_us: float
    database_us: float

    @property
    def total_us(self) -> float:
        return self.service_us + self.database_us


class CpuMeter:
    """Samples before and after a measurement; the difference divided by its requests."""

    def __init__(
        self,
        service_pids: Callable[[], list[int]],
        database_pids: Callable[[], list[int]] | None = None,
    ) -> None:
        self.service_pids = service_pids
        self.database_pids = database_pids or list

    def sample(self) -> Sample:
        return Sample(
            {pid: cpu_seconds(pid) for pid in self.service_pids()},
            {pid: cpu_seconds(pid) for pid in self.database_pids()},
        )

    def per_request(self, before: Sample, requests: int) -> CpuPerRequest:
        after = self.sample()
        # A process that appeared during the measurement (a new pooled connection) counts whole.
        service = sum(after.service[p] - before.service.get(p, 0.0) for p in after.service)
        database = sum(after.database[p] - before.database.get(p, 0.0) for p in after.database)
        n = max(requests, 1)
        return CpuPerRequest(service * 1e6 / n, database * 1e6 / n)
