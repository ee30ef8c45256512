"""Migrations run both ways on both backends and match the models exactly."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from meterapi import migrations
from meterapi.db import make_engine


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


async def test_upgrade_downgrade_upgrade_and_no_drift(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await migrations.upgrade_async(db_url, "head")
        await _downgrade(db_url)
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == set()
        await migrations.upgrade_async(db_url, "head")
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == set(SQLModel.metadata.tables)
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def _downgrade(url: str) -> None:
    import asyncio

    await asyncio.to_thread(migrations.downgrade, url, "base")
