"""What one process of the service holds: settings, the database, and the long-lived services."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import Sessionmaker, make_engine, make_sessionmaker
from meterapi.keys.guard import KeyGuard
from meterapi.metering.ledger import UsageRecorder
from meterapi.metering.reporter import Reporter
from meterapi.metering.usage import InvoicePreviews
from meterapi.metrics import Metrics


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: Sessionmaker
    metrics: Metrics
    gateway: StripeGateway
    recorder: UsageRecorder
    reporter: Reporter
    invoices: InvoicePreviews
    keys: KeyGuard

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Build without I/O; connections open on first use, tasks start in ``start``."""
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        metrics = Metrics()
        gateway = StripeGateway(settings)
        reporter = Reporter(
            sessionmaker,
            gateway,
            interval_s=settings.report_interval_s,
            event_name=settings.stripe_meter_event_name,
            metrics=metrics,
        )
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            metrics=metrics,
            gateway=gateway,
            recorder=UsageRecorder(sessionmaker, on_commit=reporter.wake),
            reporter=reporter,
            invoices=InvoicePreviews(gateway),
            keys=KeyGuard.build(settings, engine=engine, sessionmaker=sessionmaker),
        )

    async def start(self) -> None:
        """Start the background work (the lifespan calls this before serving)."""
        await self.keys.start()
        self.recorder.start()
        self.reporter.start()

    async def close(self) -> None:
        """Drain the ledger's queue, flush usage to Stripe (bounded), release connections."""
        try:
            await self.recorder.stop()
            await self.reporter.stop()
            await self.keys.stop()
        finally:
            await self.gateway.close()
            await self.engine.dispose()
