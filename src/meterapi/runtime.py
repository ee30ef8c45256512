"""What one process of the service holds: settings, the database, and the long-lived services."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.config import Settings
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker
from meterapi.keys.guard import KeyGuard


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: Sessionmaker
    keys: KeyGuard

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Build without I/O; connections open on first use."""
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        keys = KeyGuard.build(settings, engine=engine, sessionmaker=sessionmaker)
        return cls(settings=settings, engine=engine, sessionmaker=sessionmaker, keys=keys)

    async def start(self) -> None:
        """Start the background work (the lifespan calls this before serving)."""
        await self.keys.start()

    async def close(self) -> None:
        await self.keys.stop()
        await self.engine.dispose()
