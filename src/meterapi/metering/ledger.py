"""The usage ledger's write path, with group commit.

Each billable response must be durable before it is sent, but a commit per request would make
the database's fsync the service's speed limit. So requests hand their row to one writer task and
wait: while a commit is in flight, new rows gather, and the next commit takes them all at once.
A request's wait ends when the transaction holding its row has committed (or failed, in which
case the request fails too and nothing is billed).

On PostgreSQL a batch is one ``INSERT … SELECT FROM unnest(…)`` run in autocommit: a single
statement is atomic and, with ``synchronous_commit`` on, durable when it returns, so a batch costs
one round trip instead of three (BEGIN, INSERT, COMMIT). Under load each round trip also waits its
turn behind the requests the event loop is serving, so this shortens every metered request's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, text

from meterapi.db import Sessionmaker
from meterapi.models import UsageEvent, utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 2000

_POSTGRES_INSERT = text(
    "INSERT INTO usage_event (customer_id, api_key_id, route, units, occurred_at) "
    "SELECT * FROM unnest(CAST(:customer_ids AS integer[]), CAST(:api_key_ids AS varchar[]), "
    "CAST(:routes AS varchar[]), CAST(:units AS integer[]), CAST(:occurred_ats AS timestamptz[]))"
)


@dataclass(frozen=True)
class Usage:
    customer_id: int
    api_key_id: str
    route: str
    units: int
    occurred_at: datetime


class LedgerUnavailable(Exception):
    """The usage could not be made durable; the response must not be a success."""


class UsageRecorder:
    def __init__(
        self, sessionmaker: Sessionmaker, *, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._on_commit = on_commit
        self._queue: list[tuple[Usage, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def record(
        self,
        *,
        customer_id: int,
        api_key_id: str,
        route: str,
        units: int,
        occurred_at: datetime | None = None,
    ) -> None:
        """Return once the usage is committed; raise ``LedgerUnavailable`` if it could not be."""
        if self._task is None or self._closing:
            raise LedgerUnavailable("the usage ledger is not running")
        usage = Usage(customer_id, api_key_id, route, units, occurred_at or utcnow())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((usage, done))
        self._wakeup.set()
        # Shielded: a cancelled request must not take its row out of a batch being committed.
        await asyncio.shield(done)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="meterapi-usage-writer")

    async def stop(self) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[tuple[Usage, asyncio.Future[None]]]) -> None:
        usages = [u for u, _ in batch]
        try:
            async with self._sessionmaker() as session:
                if session.get_bind().dialect.name == "postgresql":
                    connection = await session.connection(
                        execution_options={"isolation_level": "AUTOCOMMIT"}
                    )
                    await connection.execute(_POSTGRES_INSERT, _columns(usages))
                else:
                    await session.exec(insert(UsageEvent), params=_rows(usages))
                await session.commit()
        except Exception as exc:
            log.error("usage batch of %d rows not committed: %s", len(batch), type(exc).__name__)
            for _, done in batch:
                if not done.done():
                    done.set_exception(LedgerUnavailable(type(exc).__name__))
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)
        if self._on_commit is not None:
            with contextlib.suppress(Exception):
                self._on_commit()


def _rows(usages: list[Usage]) -> list[dict[str, object]]:
    return [
        {
            "customer_id": u.customer_id,
            "api_key_id": u.api_key_id,
            "route": u.route,
            "units": u.units,
            "occurred_at": u.occurred_at,
        }
        for u in usages
    ]


def _columns(usages: list[Usage]) -> dict[str, object]:
    """The batch as one array per column, for ``_POSTGRES_INSERT``."""
    return {
        "customer_ids": [u.customer_id for u in usages],
        "api_key_ids": [u.api_key_id for u in usages],
        "routes": [u.route for u in usages],
        "units": [u.units for u in usages],
        "occurred_ats": [u.occurred_at for u in usages],
    }
