"""What the commands share."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.config import Settings
from meterapi.db import make_engine, make_sessionmaker, session_scope
from meterapi.errors import DomainError


def run_printing(work: Callable[[], Coroutine[Any, Any, str]]) -> int:
    """Run ``work``; print its result to stdout, or a domain error's message to stderr (exit 1)."""
    try:
        result = asyncio.run(work())
    except DomainError as exc:
        print(f"meterapi: {exc.message}", file=sys.stderr)
        return 1
    print(result)
    return 0


@contextlib.asynccontextmanager
async def command_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The database engine of one command's work, disposed of when the work ends."""
    engine = make_engine(settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def command_session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """One unit of work for a command: committed if it succeeds, its engine disposed of after."""
    async with command_engine(settings) as engine, session_scope(make_sessionmaker(engine)) as s:
        yield s
