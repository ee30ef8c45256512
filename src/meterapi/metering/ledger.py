"""The usage ledger's write path, with group commit.

Each billable response must be durable before it is sent, but a commit per request would make the
database's fsync the service's speed limit. So requests hand their row to a writer and wait: while
a commit is in flight, new rows gather, and the next commit takes them all at once. A
request's wait ends when the transaction holding its row has committed (or failed, in which case
the request fails too and nothing is billed).

On PostgreSQL a batch is one ``INSERT … SELECT FROM unnest(…)`` run in autocommit on the driver's
connection: a single statement is atomic and, with ``synchronous_commit`` on, durable when it
returns, so a batch costs one round trip instead of three (BEGIN, INSERT, COMMIT) and no ORM work.
The writers keep their connections checked out between batches (a checkout from the pool costs about
three times the statement's own CPU); one that fails is discarded, never reused, and a failed batch
is never retried (it may have committed before the connection broke). Two writers may commit at
once on PostgreSQL: a request that arrives while one batch commits need not wait for that commit
to end before its own begins, and the event loop is not left idle while every caller waits on the
database. SQLite has one writer, so there it is one at a time. Batches are independent (each row
stands alone), so their commit order does not matter.

A batch writes one row per customer, key, route and UTC minute, holding the units of every
response in it that shares them: the rows the reporter later claims are fewer by the same factor,
and the reporter groups per customer and minute anyway. Under light load a batch holds one
response and the row is that response's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterapi.db import Sessionmaker, is_postgres
from meterapi.models import UsageEvent, utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 2000

POSTGRES_LANES = 2

# usage_event.units is a 32-bit integer column.
MAX_ROW_UNITS = 2**31 - 1

_POSTGRES_INSERT = (
    "INSERT INTO usage_event (customer_id, api_key_id, route, units, occurred_at) "
    "SELECT * FROM unnest($1::integer[], $2::varchar[], $3::varchar[], $4::integer[], "
    "$5::timestamptz[])"
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
    """Group commit through at most two writers on PostgreSQL (one on SQLite), each a task
    (a lane) that commits whatever is queued, then looks again, and ends when the queue is
    empty. ``record`` starts a lane when fewer are running, so a row never waits for a wake-up,
    and a lane that finishes a commit takes the rows that gathered meanwhile at once: the event
    loop, busy serving requests, stands between a commit and the next as little as possible."""

    def __init__(
        self, sessionmaker: Sessionmaker, *, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._engine: AsyncEngine = sessionmaker.kw["bind"]
        self._on_commit = on_commit
        self._queue: list[tuple[Usage, asyncio.Future[None]]] = []
        self._lanes: set[asyncio.Task[None]] = set()
        self._running_lanes = 0
        postgres = is_postgres(self._engine)
        self._max_lanes = POSTGRES_LANES if postgres else 1
        self._write = self._write_postgres if postgres else self._write_sqlite
        self._idle: list[tuple[AsyncConnection, asyncpg.Connection]] = []
        self._started = False
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
        if not self._started or self._closing:
            raise LedgerUnavailable("the usage ledger is not running")
        usage = Usage(customer_id, api_key_id, route, units, occurred_at or utcnow())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((usage, done))
        if self._running_lanes < self._max_lanes:
            self._running_lanes += 1
            lane = asyncio.create_task(self._lane(), name="meterapi-usage-writer")
            self._lanes.add(lane)
            lane.add_done_callback(self._lanes.discard)
        # If the caller is cancelled, this future is cancelled with it, but the row stays queued
        # and is committed with its batch: a cancelled request never takes a row out of one.
        await done

    def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        # Every queued row has a running lane (see _lane), so these commit it all.
        await asyncio.gather(*self._lanes)
        while self._idle:
            await self._idle.pop()[0].close()
        self._started = False

    async def _lane(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
        finally:
            # No await between the last look at the queue and this: a row queued after it
            # finds the lane gone and starts another.
            self._running_lanes -= 1

    async def _write_postgres(self, usages: list[Usage]) -> None:
        if self._idle:
            connection, driver = self._idle.pop()
        else:
            connection = await self._engine.connect()
            driver = (await connection.get_raw_connection()).driver_connection
        try:
            # Straight to asyncpg, outside any transaction: one statement, committed when it
            # returns.
            await driver.execute(_POSTGRES_INSERT, *_columns(usages))
        except BaseException:
            # Whatever went wrong, this connection is not trusted again.
            with contextlib.suppress(Exception):
                await connection.invalidate()
                await connection.close()
            raise
        self._idle.append((connection, driver))

    async def _write_sqlite(self, usages: list[Usage]) -> None:
        async with self._sessionmaker() as session:
            await session.exec(insert(UsageEvent), params=_rows(usages))
            await session.commit()

    async def _commit(self, batch: list[tuple[Usage, asyncio.Future[None]]]) -> None:
        try:
            await self._write(merge([u for u, _ in batch]))
        except Exception as exc:
            log.error("usage of %d responses not committed: %s", len(batch), type(exc).__name__)
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


def merge(usages: list[Usage]) -> list[Usage]:
    """One usage per customer, key, route and UTC minute, with their units summed and the latest
    moment among them (so no unit is dated before it happened, and none moves to another
    minute, where the reporter would bill it in another meter event). A sum that would pass
    what a row holds (``MAX_ROW_UNITS``) starts another row instead."""
    merged: dict[tuple[int, str, str, datetime], Usage] = {}
    full: list[Usage] = []
    for u in usages:
        key = (u.customer_id, u.api_key_id, u.route, u.occurred_at.replace(second=0, microsecond=0))
        seen = merged.get(key)
        if seen is not None:
            if seen.units + u.units > MAX_ROW_UNITS:
                full.append(seen)
            else:
                u = replace(
                    seen,
                    units=seen.units + u.units,
                    occurred_at=max(seen.occurred_at, u.occurred_at),
                )
        merged[key] = u
    return full + list(merged.values())


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


def _columns(usages: list[Usage]) -> tuple[list[object], ...]:
    """The batch as one array per column, for ``_POSTGRES_INSERT``."""
    return (
        [u.customer_id for u in usages],
        [u.api_key_id for u in usages],
        [u.route for u in usages],
        [u.units for u in usages],
        [u.occurred_at for u in usages],
    )
