"""Delivering the outbox to ``METERAPI_WEBHOOK_URL`` (Standard Webhooks), from any number of
processes at once.

A round has three steps:

1. **Claim.** In one short transaction, due events are leased: pending, ``next_attempt_at``
   passed, no live lease, and no earlier pending event of the same customer. On PostgreSQL the
   candidates are locked ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take disjoint rows
   without waiting; on SQLite writers are serialised (``BEGIN IMMEDIATE``). Either way the lease
   is taken by an ``UPDATE`` conditional on the lease being free. The lease (``claimed_until``)
   outlasts the longest attempt, so one event is never sent by two deliverers at once; a
   deliverer that dies mid-send leaves a lease that runs out, and the event is sent again under
   the same ``webhook-id``: at least once.
2. **Send.** The stored body is POSTed, signed at send time with the ``standardwebhooks``
   package (``webhook-id`` = the event id, ``webhook-timestamp`` = now), the whole attempt
   bounded by ``timeout_s`` (10 s).
3. **Settle**, only while still holding the lease: any 2xx → ``delivered``; 410 → ``gone`` (not
   retried); anything else (another status, a timeout, a refused connection) → tried again after
   ``backoff_s`` (the first retry within 10 s, doubling up to an hour), or ``failed`` once that
   would pass the event's three-day window.

Order: a customer's events are delivered in the order they were written. An event waits while
an earlier event of the same customer is pending (it is not held back by one that ended failed
or gone), so an event the receiver keeps refusing holds back that customer's later ones for up
to its three days; other customers' events are not held back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from pydantic import SecretStr
from sqlalchemy import exists, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook

from meterapi import __version__
from meterapi.background import finish_or_cancel, wait_at_most
from meterapi.db import Sessionmaker
from meterapi.metrics import Metrics
from meterapi.models import OutboundEvent, OutboundStatus, utcnow
from meterapi.outbound import outbox

log = logging.getLogger(__name__)

FIRST_RETRY_S = 5.0
MAX_BACKOFF_S = 3600.0
CLAIM_BATCH = 50
SEND_CONCURRENCY = 8
LEASE_MARGIN_S = 50.0
HOUSEKEEPING_EVERY_S = 600.0


def backoff_s(
    attempts: int, *, first_s: float = FIRST_RETRY_S, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``attempts``-th failed try: ``first_s`` doubling per try up to
    an hour, each jittered down by at most a quarter (so never above the step)."""
    step = min(MAX_BACKOFF_S, first_s * 2.0 ** min(max(attempts - 1, 0), 32))
    return step * (0.75 + 0.25 * rand())


@dataclass(frozen=True)
class Claimed:
    """What a deliverer needs to send one leased event (never the ORM row)."""

    id: int
    event_id: str
    payload: str
    attempts: int
    give_up_at: datetime


@dataclass(frozen=True)
class Attempt:
    status_code: int | None  # None: no HTTP answer (timeout, connection error)
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


async def claim_due(
    session: AsyncSession, *, token: str, now: datetime, lease_s: float, limit: int = CLAIM_BATCH
) -> list[Claimed]:
    """Lease up to ``limit`` due events, at most one per customer (its earliest pending)."""
    earlier = aliased(OutboundEvent)
    lease_free = or_(
        col(OutboundEvent.claimed_until).is_(None), col(OutboundEvent.claimed_until) <= now
    )
    candidates = (
        select(OutboundEvent.id)
        .where(
            col(OutboundEvent.status) == OutboundStatus.PENDING,
            col(OutboundEvent.next_attempt_at) <= now,
            lease_free,
            ~exists().where(
                col(earlier.customer_id) == col(OutboundEvent.customer_id),
                col(earlier.status) == OutboundStatus.PENDING,
                col(earlier.id) < col(OutboundEvent.id),
            ),
        )
        .order_by(col(OutboundEvent.id))
        .limit(limit)
        .with_for_update(skip_locked=True, of=OutboundEvent)
    )
    ids = list((await session.exec(candidates)).all())
    if not ids:
        return []
    leased = await session.exec(
        update(OutboundEvent)
        .where(col(OutboundEvent.id).in_(ids), lease_free)
        .values(
            claimed_until=now + timedelta(seconds=lease_s),
            claimed_by=token,
            attempts=col(OutboundEvent.attempts) + 1,
        )
        .returning(
            col(OutboundEvent.id),
            col(OutboundEvent.event_id),
            col(OutboundEvent.payload),
            col(OutboundEvent.attempts),
            col(OutboundEvent.give_up_at),
        )
    )
    return sorted((Claimed(*row) for row in leased.all()), key=lambda c: c.id)


async def settle(
    session: AsyncSession,
    claimed: Claimed,
    attempt: Attempt,
    *,
    token: str,
    now: datetime,
    first_retry_s: float = FIRST_RETRY_S,
    rand: Callable[[], float] = random.random,
) -> str | None:
    """Record an attempt's outcome; the new status, or None if the lease was lost meanwhile."""
    values: dict[str, object] = {"claimed_until": None, "claimed_by": None}
    if attempt.delivered:
        values.update(status=OutboundStatus.DELIVERED, delivered_at=now, last_error=None)
    elif attempt.gone:
        values.update(status=OutboundStatus.GONE, last_error="410 Gone: not retried")
    else:
        error = attempt.error or f"HTTP {attempt.status_code}"
        wait_s = backoff_s(claimed.attempts, first_s=first_retry_s, rand=rand)
        later = now + timedelta(seconds=wait_s)
        if later > claimed.give_up_at:
            values.update(status=OutboundStatus.FAILED, last_error=error[:1000])
        else:
            values.update(next_attempt_at=later, last_error=error[:1000])
    result = await session.exec(
        update(OutboundEvent)
        .where(col(OutboundEvent.id) == claimed.id, col(OutboundEvent.claimed_by) == token)
        .values(**values)
    )
    if result.rowcount != 1:
        return None
    return str(values.get("status", OutboundStatus.PENDING))


class Deliverer:
    """Runs delivery rounds in the background: woken by new events, else every ``poll_s``."""

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        *,
        url: str | None,
        secret: SecretStr | None,
        metrics: Metrics | None = None,
        timeout_s: float = 10.0,
        first_retry_s: float = FIRST_RETRY_S,
        poll_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.url = url
        self._webhook = Webhook(secret.get_secret_value()) if secret is not None else None
        self._metrics = metrics or Metrics()
        self.timeout_s = timeout_s
        self.first_retry_s = first_retry_s
        self.poll_s = poll_s
        self._transport = transport
        self._rand = rand
        self.token = "dlv_" + secrets.token_hex(8)
        self._client: httpx.AsyncClient | None = None
        self._wakeup = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:  # never the secret
        return f"Deliverer(enabled={self.enabled}, token={self.token!r})"

    @property
    def enabled(self) -> bool:
        return self.url is not None and self._webhook is not None

    @property
    def lease_s(self) -> float:
        return self.timeout_s + LEASE_MARGIN_S

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="meterapi-outbound")

    async def stop(self, *, grace_s: float = 2.0) -> None:
        """Let a round in flight finish for ``grace_s``, then abandon it: its leases run out and
        those events are sent again (same ``webhook-id``) by another process or the next start.
        Short, so that shutdown time goes to flushing usage to Stripe."""
        self._stop.set()
        self._wakeup.set()
        if self._task is not None:
            await finish_or_cancel(self._task, within_s=grace_s)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_housekeeping = loop.time()
        while not self._stop.is_set():
            if loop.time() >= next_housekeeping:
                next_housekeeping = loop.time() + HOUSEKEEPING_EVERY_S
                await self._housekeeping()
            busy = False
            if self.enabled:
                try:
                    busy = await self.deliver_due() > 0
                except Exception as exc:
                    log.error("outbound delivery round failed: %s: %s", type(exc).__name__, exc)
            if not busy:  # a full round may have unblocked a customer's next event: go on
                wait = self.poll_s if self.enabled else HOUSEKEEPING_EVERY_S
                await wait_at_most(self._wakeup, wait)
            self._wakeup.clear()

    async def _housekeeping(self) -> None:
        reason = "not delivered within 3 days"
        if not self.enabled:
            reason = "not sent: METERAPI_WEBHOOK_URL was not set within 3 days"
        try:
            async with self._sessionmaker() as session:
                failed, deleted = await outbox.expire_and_prune(
                    session, now=utcnow(), reason=reason
                )
                await session.commit()
        except Exception as exc:
            log.warning("outbound housekeeping failed: %s", type(exc).__name__)
            return
        for _ in range(failed):
            self._metrics.outbound_deliveries.inc(outcome="failed")
        if failed or deleted:
            log.info("outbound events: %d expired, %d old ones deleted", failed, deleted)

    async def deliver_due(self, *, now: datetime | None = None) -> int:
        """One round: claim due events, send them, settle them; returns how many were claimed."""
        async with self._sessionmaker() as session:
            claimed = await claim_due(
                session, token=self.token, now=now or utcnow(), lease_s=self.lease_s
            )
            await session.commit()
        if not claimed:
            return 0
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(event: Claimed) -> Attempt:
            async with limit:
                return await self._send(event)

        attempts = await asyncio.gather(*(one(event) for event in claimed))
        # One transaction settles the round (one commit, not one per event).
        async with self._sessionmaker() as session:
            outcomes = [
                await settle(
                    session,
                    event,
                    attempt,
                    token=self.token,
                    now=utcnow(),
                    first_retry_s=self.first_retry_s,
                    rand=self._rand,
                )
                for event, attempt in zip(claimed, attempts, strict=True)
            ]
            await session.commit()
        for event, attempt, status in zip(claimed, attempts, outcomes, strict=True):
            self._count(event, attempt, status)
        return len(claimed)

    def _count(self, event: Claimed, attempt: Attempt, status: str | None) -> None:
        if status is None:
            log.warning("outbound event %s: lease lost before its outcome was saved", event.id)
            return
        outcome = "retry" if status == OutboundStatus.PENDING else status
        self._metrics.outbound_deliveries.inc(outcome=outcome)
        if outcome != OutboundStatus.DELIVERED:
            reason = attempt.error or f"HTTP {attempt.status_code}"
            log.warning("outbound event %s (attempt %d): %s, %s", event.event_id, event.attempts,
                        reason, outcome)  # fmt: skip

    async def _send(self, event: Claimed) -> Attempt:
        assert self.url is not None and self._webhook is not None
        sent_at = datetime.fromtimestamp(int(utcnow().timestamp()), UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": f"meterapi/{__version__}",
            "webhook-id": event.event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(event.event_id, sent_at, event.payload),
        }
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.timeout_s, follow_redirects=False
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(
                    self.url, content=event.payload.encode(), headers=headers
                )
        except TimeoutError:
            return Attempt(None, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            # The type only: the message may carry the URL, which may carry a token.
            return Attempt(None, type(exc).__name__)
        return Attempt(response.status_code)
