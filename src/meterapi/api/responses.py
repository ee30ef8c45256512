"""What routes declare in the OpenAPI document beyond their own models: the refusals, each
described once, and the page a list comes in.

A route's ``responses=`` is built from status → description maps: the shared ones below, in the
words every route that can answer them uses, and the route's own::

    responses=responses(KEY_REFUSED, {404: "No key of yours with this id"})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

Descriptions = Mapping[int, str]
ItemT = TypeVar("ItemT")

KEY_MISPLACED: Descriptions = {400: "Key sent in the query string, or two different keys sent"}
KEY_INVALID: Descriptions = {401: "Missing or invalid API key"}
# Any valid key, whatever the subscription's state (the customer's own keys, usage, limits).
KEY_REFUSED: Descriptions = {**KEY_MISPLACED, **KEY_INVALID}
SUBSCRIPTION_INACTIVE: Descriptions = {402: "The subscription does not allow access"}
KEY_ROTATED: Descriptions = {403: "The key is in its rotation grace period (key_rotated)"}
STRIPE_FAILED: Descriptions = {
    502: "Stripe refused the request",
    503: "Stripe could not be reached, or no price is configured",
}
ADMIN_REFUSED: Descriptions = {401: "Missing or wrong operator token (invalid_admin_token)"}


class Page(BaseModel, Generic[ItemT]):
    # A list route's answer: ``has_more`` when another page follows, asked for with
    # ``starting_after`` set to the last item's id. (No docstring: it would describe every
    # page in the document.)
    data: list[ItemT]
    has_more: bool


def responses(*groups: Descriptions) -> dict[int | str, dict[str, Any]]:
    """FastAPI's ``responses=`` from status → description maps; a later map's wins."""
    return {status: {"description": text} for group in groups for status, text in group.items()}
