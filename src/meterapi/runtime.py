"""What one process of the service holds: settings, the database, and the long-lived services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from meterapi.billing.gateway import StripeGateway
from meterapi.billing.public_limit import PublicRateLimit
from meterapi.config import Settings
from meterapi.db import Sessionmaker, is_sqlite, make_engine, make_sessionmaker
from meterapi.keys.guard import KeyGuard
from meterapi.metering.alerts import ThresholdAlerts
from meterapi.metering.ledger import UsageRecorder
from meterapi.metering.limits import Pricing
from meterapi.metering.limits_cache import LimitsCache
from meterapi.metering.ratelimit import RateLimiter
from meterapi.metering.reporter import Reporter
from meterapi.metering.spend import SpendGuard
from meterapi.metering.usage import InvoicePreviews
from meterapi.metrics import Metrics
from meterapi.outbound import outbox
from meterapi.outbound.delivery import Deliverer

LEDGER_POOL: dict[str, Any] = {"pool_size": 2, "max_overflow": 2}


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: Sessionmaker
    metrics: Metrics
    keys: KeyGuard
    gateway: StripeGateway
    ledger_engine: AsyncEngine
    recorder: UsageRecorder
    reporter: Reporter
    invoices: InvoicePreviews
    public_limit: PublicRateLimit
    pricing: Pricing
    outbound: Deliverer
    limits: LimitsCache
    rate_limiter: RateLimiter
    spend: SpendGuard
    alerts: ThresholdAlerts

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Build without I/O; connections open on first use, tasks start in ``start``."""
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        # The ledger writes through its own small pool: billable writes never queue behind
        # requests that hold the main pool's connections.
        url = settings.database_url
        ledger_engine = make_engine(url) if is_sqlite(url) else make_engine(url, **LEDGER_POOL)
        metrics = Metrics()
        gateway = StripeGateway(settings)
        reporter = Reporter(
            sessionmaker,
            gateway,
            interval_s=settings.report_interval_s,
            event_name=settings.stripe_meter_event_name,
            metrics=metrics,
        )
        keys = KeyGuard.build(settings, engine=engine, sessionmaker=sessionmaker)
        # Each customer's limits, invalidated with the key cache (metering.limits_cache).
        limits = LimitsCache(
            sessionmaker,
            default_rate=settings.rate_limit,
            ttl_s=settings.key_cache_ttl_s,
            max_entries=settings.key_cache_size,
            trusted=keys.cache.trusted,
        )
        keys.cache.follow(limits)
        outbound = Deliverer(
            sessionmaker,
            url=settings.webhook_url,
            secret=settings.webhook_secret,
            metrics=metrics,
            timeout_s=settings.webhook_timeout_s,
            first_retry_s=settings.webhook_first_retry_s,
            poll_s=settings.webhook_poll_s,
        )
        outbox.attach(sessionmaker, outbound.wake)  # after the key cache's own attach
        pricing = Pricing(gateway, settings.stripe_price_id)
        spend = SpendGuard(sessionmaker, gateway, settings.stripe_price_id)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            metrics=metrics,
            keys=keys,
            gateway=gateway,
            ledger_engine=ledger_engine,
            recorder=UsageRecorder(make_sessionmaker(ledger_engine), on_commit=reporter.wake),
            reporter=reporter,
            invoices=InvoicePreviews(gateway),
            public_limit=PublicRateLimit(settings.public_rate_limit),
            pricing=pricing,
            outbound=outbound,
            limits=limits,
            rate_limiter=RateLimiter(
                redis_url=settings.redis_url,
                unchecked=metrics.rate_limit_unchecked,
                timeout_s=settings.redis_timeout_s,
            ),
            spend=spend,
            alerts=ThresholdAlerts(sessionmaker, pricing, spend, limits),
        )

    async def start(self) -> None:
        """Start the background work (the lifespan calls this before serving)."""
        await self.keys.start()
        await self.rate_limiter.start()
        self.recorder.start()
        self.reporter.start()
        self.outbound.start()
        await self.spend.start()
        await self.alerts.start()

    async def close(self) -> None:
        """Drain the ledger's queue, flush usage to Stripe (bounded), release connections."""
        try:
            await self.recorder.stop()
            await self.reporter.stop()
            await self.keys.stop()
            await self.outbound.stop()
            await self.alerts.stop()
            await self.spend.stop()
        finally:
            await self.gateway.close()
            await self.rate_limiter.close()
            await self.ledger_engine.dispose()
            await self.engine.dispose()
