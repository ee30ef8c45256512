"""The customer dashboard (``/dashboard``) and the API explorer (``/docs``): static pages."""

from __future__ import annotations

from fastapi import APIRouter

from meterapi.dashboard import admin_page, explorer, pages

router = APIRouter(include_in_schema=False)
router.include_router(pages.router)
router.include_router(explorer.router)

# The operator page: mounted by the app only when an admin token is configured.
admin_router = admin_page.router

__all__ = ["admin_router", "router"]
