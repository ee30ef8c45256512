"""Engines and sessions, alike for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert
from sqlmodel.ext.asyncio.session import AsyncSession

Sessionmaker = async_sessionmaker[AsyncSession]
# Whatever knows which database it talks to: a URL, an engine, a connection, a session, a dialect.
Bind = str | Dialect | AsyncSession | AsyncEngine | AsyncConnection | Engine | Connection

SQLITE_BUSY_TIMEOUT_MS = 10_000


def is_postgres(bind: Bind) -> bool:
    """True for PostgreSQL, False for SQLite: the one place the backend is told apart."""
    return _dialect_name(bind) == "postgresql"


def _dialect_name(bind: Bind) -> str:
    if isinstance(bind, Dialect):
        return bind.name
    if isinstance(bind, str):
        return make_url(bind).get_backend_name()
    if isinstance(bind, AsyncSession):
        return bind.get_bind().dialect.name
    return bind.dialect.name


def insert_or_ignore(
    session: AsyncSession, table: Table, values: dict[str, Any], *, conflict: Sequence[str]
) -> Insert:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING`` for the session's backend.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    does nothing, so exactly one of several racing writers inserts the row.
    """
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    return insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine with the per-backend settings the service relies on.

    ``hide_parameters``: SQLAlchemy's exceptions otherwise carry the statement's bound values
    (key names, ids, emails) in their text, and so into any traceback that is logged.
    """
    kwargs.setdefault("hide_parameters", True)
    if not is_postgres(url):
        engine = create_async_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_recycle", 1800)
    return create_async_engine(url, **kwargs)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide where transactions begin (see _begin_immediate).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL makes each commit survive power loss,
    # and group commit (metering.ledger) keeps the fsyncs few.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock when the transaction starts, so two writers wait on the busy
    # timeout instead of failing with "database is locked" when a reader upgrades.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


_PLANNER_SCANS = text(
    "SELECT set_config('enable_bitmapscan', :on, true), set_config('enable_seqscan', :on, true)"
)


@asynccontextmanager
async def index_scans_only(connection: AsyncConnection) -> AsyncIterator[None]:
    """PostgreSQL only: statements inside the block are planned without bitmap or sequential
    scans, so a query ordered like an index walks that index and stops at its ``LIMIT``, whatever
    the (possibly stale) statistics say. The settings are the transaction's own
    (``set_config(…, true)``): back on after the block, and undone by the transaction's end in
    any case (after an error in the block, the failed transaction is left alone)."""
    await connection.execute(_PLANNER_SCANS, {"on": "off"})
    yield
    await connection.execute(_PLANNER_SCANS, {"on": "on"})


def make_sessionmaker(engine: AsyncEngine) -> Sessionmaker:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(sessionmaker: Sessionmaker) -> AsyncIterator[AsyncSession]:
    """A unit of work for workers and the CLI: commit on success, roll back on error."""
    async with sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# A request's session commits once, after its endpoint (api.deps.SessionDep). Routes that must
# commit earlier say why by calling one of these.


async def release_before_waiting(session: AsyncSession) -> None:
    """End the transaction now, before waiting on something slow such as Stripe: the connection
    goes back to the pool instead of idling in a transaction while key lookups queue for one."""
    await session.commit()


async def commit_before_announcing(session: AsyncSession) -> None:
    """Commit now, before other workers or processes are told to look (a background worker
    woken, every process's key cache told): they read the database, so what they are told of
    must be there first. The request's own commit at its end then has nothing left to do."""
    await session.commit()
