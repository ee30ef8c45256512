"""The operator's view of usage reports: list them by status, send a parked one again."""

from __future__ import annotations

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.errors import NotFound, ReportNotParked
from meterapi.models import ReportStatus, UsageReport, utcnow


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
    report = (
        await session.exec(
            select(UsageReport).where(col(UsageReport.id) == report_id).with_for_update()
        )
    ).first()
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
