"""The operator's view of usage reports: the backlog ``/metrics`` shows, the reports by status,
a parked one sent again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.errors import NotFound, ReportNotParked
from meterapi.models import ReportStatus, UsageEvent, UsageReport, utcnow


async def list_reports(
    session: AsyncSession, *, status: ReportStatus, limit: int, starting_after: int | None
) -> tuple[list[UsageReport], bool]:
    """Reports in ``status``, oldest first, after the report ``starting_after``; and has_more."""
    query = select(UsageReport).where(col(UsageReport.status) == status)
    if starting_after is not None:
        query = query.where(col(UsageReport.id) > starting_after)
    rows = list((await session.exec(query.order_by(col(UsageReport.id)).limit(limit + 1))).all())
    return rows[:limit], len(rows) > limit


async def retry_parked(session: AsyncSession, *, report_id: int) -> UsageReport:
    """Put a parked report back to pending, due now, under the same identifier.

    The identifier is what makes a re-send safe while Stripe still remembers it (at least
    24 hours): Stripe then answers "already exists" and the report counts once. The attempt
    count starts again, so the reporter sends it rather than parking it again for its age: the
    operator decided, having checked the reconciliation, that Stripe does not hold it.
    """
    report = await session.get(UsageReport, report_id, with_for_update=True)
    if report is None:
        raise NotFound("No such usage report.")
    if report.status != ReportStatus.PARKED:
        raise ReportNotParked(f"The usage report is {report.status}; only a parked one is retried.")
    report.status = ReportStatus.PENDING
    report.attempts = 0
    report.next_attempt_at = utcnow()
    session.add(report)
    await session.flush()
    return report


async def pending_stats(session: AsyncSession, *, now: datetime) -> tuple[int, float, int]:
    """(units not yet acknowledged, age in seconds of the oldest, parked reports).

    Two index-backed reads, so ``/metrics`` stays cheap however long the ledger grows: rows no
    report has claimed (the partial index on unreported rows), and reports not yet sent (the
    status index). A claimed row's age is its report's, which is at most a minute younger.
    """
    unclaimed_units, unclaimed_oldest = (
        await session.exec(
            select(
                func.coalesce(func.sum(UsageEvent.units), 0), func.min(UsageEvent.occurred_at)
            ).where(col(UsageEvent.report_id).is_(None))
        )
    ).one()
    unsent = (ReportStatus.PENDING, ReportStatus.PARKED)
    report_units, report_oldest, parked = (
        await session.exec(
            select(
                func.coalesce(func.sum(UsageReport.value), 0),
                func.min(UsageReport.event_at),
                func.coalesce(
                    func.sum(case((col(UsageReport.status) == ReportStatus.PARKED, 1), else_=0)), 0
                ),
            ).where(col(UsageReport.status).in_(unsent))
        )
    ).one()
    oldest = min((t for t in (unclaimed_oldest, report_oldest) if t is not None), default=None)
    age = (now - oldest).total_seconds() if oldest is not None else 0.0
    return int(unclaimed_units) + int(report_units), max(age, 0.0), int(parked)
