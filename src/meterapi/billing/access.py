"""Tell every process that a customer's access changed, inside the changing transaction."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.keys import invalidation


async def access_changed(session: AsyncSession, *, customer_id: int) -> None:
    """Drop cached access for the customer everywhere once the transaction commits."""
    await invalidation.bump(session, customer_id=customer_id)
