"""The shape of a Stripe event that every webhook handler relies on, checked once on arrival."""

from __future__ import annotations

from typing import Any

NOT_AN_EVENT = "The webhook body is not a Stripe event."
# Event times a datetime can hold, whatever the zone: 1970 to the end of year 9998.
_LATEST_EVENT_TIME = 253_370_764_800


def is_event(value: Any) -> bool:
    """The shape every handler relies on: an object with id, type, created and data.object."""
    if not isinstance(value, dict):
        return False
    created = value.get("created")
    data = value.get("data")
    return (
        isinstance(value.get("id"), str)
        and bool(value["id"])
        and isinstance(value.get("type"), str)
        and isinstance(created, int)
        and not isinstance(created, bool)
        and 0 <= created < _LATEST_EVENT_TIME
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    )
