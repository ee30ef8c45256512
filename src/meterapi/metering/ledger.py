"""The usage ledger's write path, with group commit.

Each billable response must be durable before it is sent, but a commit per request would make the
database's fsync the service's speed limit. So requests hand their row to a writer and wait: while
a commit is in flight, new rows gather, and the next commit takes them all at once. A
request's wait ends when the transaction holding its row has committed (or failed, in which case
the request fails too and nothing is billed).

The interface is ``UsageRecorder(engine)``: ``start``, ``record`` (returns once durable, or raises
``LedgerUnavailable``), ``stop`` (commits what is queued). The engine should be the ledger's own
(``runtime.py`` gives it a small pool), since its connections stay checked out.

A batch is one statement on the driver's own connection, outside any transaction (autocommit): a
single statement is atomic, and durable when it returns (PostgreSQL with ``synchronous_commit``
on; SQLite in WAL mode with ``synchronous=FULL``, ``db.py``), so a batch costs one round trip, or
on SQLite one hop to the driver's thread, instead of three or more (BEGIN, INSERT, COMMIT, the
pool's reset), and no ORM work. On PostgreSQL it is ``INSERT … SELECT FROM unnest(…)`` with one
array per column; on SQLite ``INSERT … SELECT FROM json_each(?)`` with the rows as one JSON
array. The writers keep their connections checked out between batches (a checkout from the pool
costs about three times the statement's own CPU); one that fails is discarded, never reused, and
a failed batch is never retried (it may have committed before the connection broke).

Two writers may commit at once on PostgreSQL: a request that arrives while one batch commits need
not wait for that commit to end before its own begins, and the event loop is not left idle while
every caller waits on the database. SQLite has one writer, so there it is one at a time, and the
writers of the service's worker processes take turns (``WriterTurns``). Batches are independent
(each row stands alone), so their commit order does not matter.

A batch writes one row per customer, key, route and UTC minute, holding the units of every
response in it that shares them: the rows the reporter later claims are fewer by the same factor,
and the reporter groups per customer and minute anyway. Under light load a batch holds one
response and the row is that response's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

try:
    import fcntl
except ImportError:  # not POSIX: no writer turns (WriterTurns)
    fcntl = None  # type: ignore[assignment]

from meterapi.db import SQLITE_BUSY_TIMEOUT_MS, is_postgres
from meterapi.models import UsageEvent, utcnow

log = logging.getLogger(__name__)

MAX_BATCH = 2000

POSTGRES_LANES = 2

# How long a lane may hold a batch open while rows keep arriving (see UsageRecorder._gather).
GATHER_S = 0.002

# How long a SQLite writer waits for its turn (WriterTurns) before giving the turns up.
TURN_WAIT_S = SQLITE_BUSY_TIMEOUT_MS / 1000

# usage_event.units is a 32-bit integer column.
MAX_ROW_UNITS = 2**31 - 1

_POSTGRES_INSERT = (
    "INSERT INTO usage_event (customer_id, api_key_id, route, units, occurred_at) "
    "SELECT * FROM unnest($1::integer[], $2::varchar[], $3::varchar[], $4::integer[], "
    "$5::timestamptz[])"
)
_SQLITE_INSERT = (
    "INSERT INTO usage_event (customer_id, api_key_id, route, units, occurred_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]') "
    "FROM json_each(?)"
)


class Usage(NamedTuple):
    # A tuple: one is made per metered request, and a frozen dataclass costs four times as much.
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
    loop, busy serving requests, stands between a commit and the next as little as possible.
    ``on_commit`` is called after each committed batch (the reporter's wake-up)."""

    def __init__(self, engine: AsyncEngine, *, on_commit: Callable[[], None] | None = None) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._queue: list[tuple[Usage, asyncio.Future[None]]] = []
        self._lanes: set[asyncio.Task[None]] = set()
        self._running_lanes = 0
        postgres = is_postgres(engine)
        self._max_lanes = POSTGRES_LANES if postgres else 1
        self._statement = _postgres_statement if postgres else _sqlite_statement(engine)
        self._turns = None if postgres else WriterTurns.beside(engine.url.database)
        # Connections checked out for the lanes, each with its driver's own connection.
        self._idle: list[tuple[AsyncConnection, Any]] = []
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
        if self._turns is not None:
            self._turns.close()
        self._started = False

    async def _lane(self) -> None:
        try:
            while self._queue:
                await self._gather()
                # With turns, the rows that arrive while another process's writer commits join
                # the batch: it is taken once the turn is this writer's.
                async with self._turns or contextlib.nullcontext():
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    # Empty when the other lane, gathering at the same time, took every row.
                    if batch:
                        await self._commit(batch)
        finally:
            # No await between the last look at the queue and this: a row queued after it
            # finds the lane gone and starts another.
            self._running_lanes -= 1

    async def _gather(self) -> None:
        """Let the rows already on their way join the batch: yield to the event loop while the
        queue keeps growing (a request read in one turn of the loop reaches ``record`` in the
        next), for at most ``GATHER_S``. A durable commit costs the same CPU for one row as for
        fifty, so under load this makes the commits fewer and each row cheaper; when nothing
        more comes (light load) it costs two turns of the loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATHER_S
        seen, quiet = len(self._queue), 0
        while quiet < 2 and len(self._queue) < MAX_BATCH and loop.time() < deadline:
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._queue) == seen else 0
            seen = len(self._queue)

    async def _write(self, usages: list[Usage]) -> None:
        """One statement on a kept driver connection, committed when it returns."""
        if self._idle:
            connection, driver = self._idle.pop()
        else:
            connection = await self._engine.connect()
            driver = (await connection.get_raw_connection()).driver_connection
        try:
            await self._statement(driver, usages)
        except BaseException:
            # Whatever went wrong, this connection is not trusted again.
            with contextlib.suppress(Exception):
                await connection.invalidate()
                await connection.close()
            raise
        self._idle.append((connection, driver))

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


class WriterTurns:
    """SQLite only: the ledger writers of every process on one database file commit in turns,
    through an exclusive ``flock`` on a file beside it (``<database>-ledger.lock``).

    SQLite lets one writer at a time commit. Without turns, a writer that finds another process's
    commit under way waits in SQLite's busy handler, which sleeps 1, 2, then 5 ms and more
    whatever the other commit takes (about 0.3 ms), with its batch already closed; with
    ``--workers 2`` the writers collided on most commits, and the responses waited for those
    sleeps. With turns, the waiting writer wakes as soon as the other's commit ends, and the
    rows that arrived meanwhile join its batch. The wait runs in a thread (the event loop goes
    on serving); a free lock costs one system call. Whatever happens to a process, the system
    releases its lock when the process ends. Without ``fcntl`` (not POSIX), no turns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._broken = False

    @classmethod
    def beside(cls, database: str | None) -> WriterTurns | None:
        if fcntl is None or not database or database == ":memory:" or "mode=memory" in database:
            return None
        return cls(f"{database}-ledger.lock")

    async def acquire(self) -> None:
        """Wait for this writer's turn (at once if no other writer commits). If the lock file
        cannot be used, the turns are given up and SQLite's own lock alone serialises writers."""
        if self._broken or fcntl is None:
            return
        try:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("ledger writers' turns given up (%s): %s", self.path, type(exc).__name__)
            self._broken = True
            return
        waiting = asyncio.get_running_loop().run_in_executor(None, _wait_for_lock, fd)
        try:
            async with asyncio.timeout(TURN_WAIT_S):
                await asyncio.shield(waiting)
        except TimeoutError:
            # A writer that holds its turn this long is stuck (or its process stopped): from
            # now on SQLite's own lock, with its busy timeout, orders the writers alone.
            log.warning("ledger writers' turns given up: a turn lasted over %.0f s", TURN_WAIT_S)
            self._broken = True
            waiting.add_done_callback(self._release_if_taken)
        except asyncio.CancelledError:
            # The thread may still take the lock: give it back when it does.
            waiting.add_done_callback(self._release_if_taken)
            raise

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def _release_if_taken(self, waiting: asyncio.Future[None]) -> None:
        # After close() the descriptor is gone, and the lock with it.
        if waiting.cancelled() or waiting.exception() is not None or self._fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        if self._fd is not None and not self._broken and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _wait_for_lock(fd: int) -> None:
    assert fcntl is not None
    fcntl.flock(fd, fcntl.LOCK_EX)


async def _postgres_statement(driver: Any, usages: list[Usage]) -> None:
    # asyncpg, outside any transaction: one statement, committed when it returns.
    await driver.execute(_POSTGRES_INSERT, *_columns(usages))


def _sqlite_statement(engine: AsyncEngine) -> Callable[[Any, list[Usage]], Any]:
    # The moment as SQLAlchemy stores it on SQLite (UTC, as text), so rows read back alike.
    column_type = UsageEvent.__table__.c.occurred_at.type  # type: ignore[attr-defined]
    stored_at = column_type.dialect_impl(engine.dialect).bind_processor(engine.dialect)

    async def run(driver: Any, usages: list[Usage]) -> None:
        rows = json.dumps(
            [
                [u.customer_id, u.api_key_id, u.route, u.units, stored_at(u.occurred_at)]
                for u in usages
            ]
        )
        # aiosqlite, in autocommit (db.py): one statement, one hop to its thread, committed
        # (and synced) when it returns; the cursor is dropped on that thread.
        await driver.execute_fetchall(_SQLITE_INSERT, (rows,))

    return run


def merge(usages: list[Usage]) -> list[Usage]:
    """One usage per customer, key, route and UTC minute, with their units summed and the latest
    moment among them (so no unit is dated before it happened, and none moves to another
    minute, where the reporter would bill it in another meter event). A sum that would pass
    what a row holds (``MAX_ROW_UNITS``) starts another row instead."""
    if len(usages) < 2:
        return usages
    # Per row: [units, latest moment, the first usage], folded in place (one list per row,
    # not a new Usage per usage: this runs for every metered request).
    rows: dict[tuple[Any, ...], list[Any]] = {}
    full: list[Usage] = []
    for u in usages:
        at = u.occurred_at
        # The UTC minute as numbers: a datetime's replace() and hash cost ten times as much.
        utc = at if at.tzinfo is UTC else at.astimezone(UTC)
        minute = (utc.year, utc.month, utc.day, utc.hour, utc.minute)
        key = (u.customer_id, u.api_key_id, u.route, minute)
        row = rows.get(key)
        if row is None:
            rows[key] = [u.units, at, u]
        elif row[0] + u.units > MAX_ROW_UNITS:
            full.append(_row(row))
            rows[key] = [u.units, at, u]
        else:
            row[0] += u.units
            if at > row[1]:
                row[1] = at
    return full + [_row(row) for row in rows.values()]


def _row(row: list[Any]) -> Usage:
    units, latest, first = row
    if units == first.units and latest is first.occurred_at:
        return first  # type: ignore[no-any-return]
    return Usage(first.customer_id, first.api_key_id, first.route, units, latest)


def _columns(usages: list[Usage]) -> tuple[list[object], ...]:
    """The batch as one array per column, for ``_POSTGRES_INSERT``."""
    return (
        [u.customer_id for u in usages],
        [u.api_key_id for u in usages],
        [u.route for u in usages],
        [u.units for u in usages],
        [u.occurred_at for u in usages],
    )
