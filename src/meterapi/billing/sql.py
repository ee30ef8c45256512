"""Dialect-specific SQL the billing room needs on both backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel.ext.asyncio.session import AsyncSession


def insert_or_ignore(
    session: AsyncSession, table: Table, values: dict[str, Any], *, conflict: Sequence[str]
) -> Insert:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING`` for the session's backend.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    does nothing, so exactly one of several racing writers inserts the row.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return (
            postgresql.insert(table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=conflict)
        )
    if dialect == "sqlite":
        return sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    raise RuntimeError(f"unsupported database backend: {dialect}")
