"""The customer dashboard (``/dashboard``) and the API explorer (``/docs``): static pages."""

from __future__ import annotations

from fastapi import APIRouter

from meterapi.dashboard import explorer, pages

router = APIRouter(include_in_schema=False)
router.include_router(pages.router)
router.include_router(explorer.router)

__all__ = ["router"]
