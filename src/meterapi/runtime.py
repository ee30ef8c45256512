"""What one process of the service holds: settings, the database, and the long-lived services."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.config import Settings
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: Sessionmaker

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Build without I/O; connections open on first use."""
        engine = make_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessionmaker=make_sessionmaker(engine))

    async def close(self) -> None:
        await self.engine.dispose()
