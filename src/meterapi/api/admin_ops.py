"""The operator API's operations (CONTRACT §8): usage reports, Stripe events, reconciliation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from meterapi.api.admin import Limit, operator_router
from meterapi.api.deps import GatewayDep, PriceIdDep, RuntimeDep, SessionDep
from meterapi.api.responses import Page, responses
from meterapi.billing import webhooks
from meterapi.db import commit_before_announcing
from meterapi.errors import ValidationFailed
from meterapi.metering import reports
from meterapi.metering.reconcile import Reconciler
from meterapi.models import ReportStatus, StripeEvent

router = operator_router()

ReportIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="The report's id.")]
EventIdPath = Annotated[
    str,
    Path(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="evt_…"),
]
# Reconciliation windows: within what Stripe can hold (meter events of the past 35 days, kept
# for years), and far from the edges of what a datetime can hold.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class ReportOut(BaseModel):
    # Read from a UsageReport, two of whose columns go by other names here; by name too, as
    # FastAPI validates the answer again.
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    id: int
    customer_id: str = Field(validation_alias="stripe_customer_id")
    units: int = Field(validation_alias="value")
    identifier: str
    status: str
    last_error: str | None
    created_at: datetime


class ReportList(Page[ReportOut]):
    pass


class StripeEventOut(BaseModel):
    id: str
    type: str
    status: Literal["failed"]
    created_at: datetime
    received_at: datetime
    attempts: int
    last_error: str | None

    @classmethod
    def of(cls, event: StripeEvent) -> StripeEventOut:
        return cls(
            id=event.id,
            type=event.type,
            status="failed",
            created_at=event.stripe_created_at,
            received_at=event.received_at,
            attempts=event.attempts,
            last_error=event.last_error,
        )


class StripeEventList(Page[StripeEventOut]):
    pass


class ReplayOut(BaseModel):
    id: str
    outcome: Literal["processed", "ignored", "duplicate", "failed"]
    last_error: str | None


class DriftOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # from a metering.reconcile.Drift
    customer_id: str
    ledger_units: int
    stripe_units: int
    pending_units: int
    drift: int
    start: datetime
    end: datetime


class DriftList(BaseModel):
    data: list[DriftOut]


@router.get(
    "/reports",
    response_model=ReportList,
    summary="Usage reports (meter events) by status, oldest first",
)
async def list_reports(
    session: SessionDep,
    status: Annotated[Literal["pending", "parked", "sent"], Query()] = "parked",
    limit: Limit = 20,
    starting_after: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="The id the previous page ended with.")
    ] = None,
) -> ReportList:
    rows, has_more = await reports.list_reports(
        session, status=ReportStatus(status), limit=limit, starting_after=starting_after
    )
    return ReportList(data=[ReportOut.model_validate(r) for r in rows], has_more=has_more)


@router.post(
    "/reports/{report_id}/retry",
    response_model=ReportOut,
    summary="Send a parked report again, under the same identifier",
    responses=responses(
        {404: "No such report", 409: "The report is not parked (report_not_parked)"}
    ),
)
async def retry_report(
    report_id: ReportIdPath, session: SessionDep, runtime: RuntimeDep
) -> ReportOut:
    report = await reports.retry_parked(session, report_id=report_id)
    out = ReportOut.model_validate(report)
    await commit_before_announcing(session)
    runtime.reporter.wake()
    return out


@router.get(
    "/stripe-events",
    response_model=StripeEventList,
    summary="Stored Stripe events whose handling failed",
)
async def list_stripe_events(
    session: SessionDep,
    status: Annotated[Literal["failed"], Query()] = "failed",
    limit: Limit = 20,
    starting_after: Annotated[
        str | None,
        Query(max_length=255, pattern=r"^[A-Za-z0-9_]+$", description="The last id seen."),
    ] = None,
) -> StripeEventList:
    rows, has_more = await webhooks.list_failed(session, limit=limit, starting_after=starting_after)
    return StripeEventList(data=[StripeEventOut.of(e) for e in rows], has_more=has_more)


@router.post(
    "/stripe-events/{event_id}/replay",
    response_model=ReplayOut,
    summary="Handle a stored, failed Stripe event again, as its delivery would",
    responses=responses(
        {404: "No such stored event", 409: "Processed already (event_already_processed)"}
    ),
)
async def replay_stripe_event(
    event_id: EventIdPath, session: SessionDep, gateway: GatewayDep, price_id: PriceIdDep
) -> ReplayOut:
    receipt = await webhooks.replay_one(
        session, event_id=event_id, gateway=gateway, price_id=price_id
    )
    stored = await session.get(StripeEvent, event_id)
    return ReplayOut(
        id=receipt.event_id,
        outcome=receipt.outcome.value,
        last_error=stored.last_error if stored is not None else None,
    )


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if not EARLIEST <= value <= LATEST:
        raise ValidationFailed(f"{name} must be between {EARLIEST:%Y} and {LATEST:%Y}.")
    return value


@router.get(
    "/reconciliation",
    response_model=DriftList,
    summary="Per customer: the ledger's units against Stripe's meter event summaries",
    description="drift = stripe_units - (ledger_units - pending_units). Without start and end,"
    " each customer's current billing period. Times without a zone are UTC.",
    responses=responses({503: "Stripe could not be read"}),
)
async def reconciliation(
    runtime: RuntimeDep,
    start: Annotated[datetime | None, Query()] = None,
    end: Annotated[datetime | None, Query()] = None,
) -> DriftList:
    start, end = _utc(start, "start"), _utc(end, "end")
    if (start is None) != (end is None):
        raise ValidationFailed("Give both start and end, or neither.")
    if start is not None and end is not None and end <= start:
        raise ValidationFailed("end must be after start.")
    rows = await Reconciler(runtime.sessionmaker, runtime.gateway).run(start=start, end=end)
    return DriftList(data=[DriftOut.model_validate(r) for r in rows])
