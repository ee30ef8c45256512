"""Tell every process that a customer's access changed, inside the changing transaction."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

_BUMP = text("UPDATE cache_revision SET revision = revision + 1 WHERE id = 1")


async def access_changed(session: AsyncSession, *, customer_id: int) -> None:
    """Invalidate cached access for the customer once the transaction commits."""
    # Bumping the shared revision makes every process drop its cached key and customer entries.
    await session.execute(_BUMP)
