"""The event log as the API shows it (`GET /v1/events`)."""

from __future__ import annotations

from ..listing import expand, newest_first, paginate
from ..routing import Ctx, Route, route
from ..state import JSON
from ..wire import missing, opt_str


def retrieve(ctx: Ctx, params: JSON, path: dict[str, str]) -> JSON:
    event = ctx.store.get("events", path["id"])
    if event is None:
        raise missing("event", path["id"])
    return expand(ctx.store, event, params)


def list_events(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    type_ = opt_str(params, "type")
    items = [
        e for e in newest_first(ctx.store.table("events")) if type_ is None or e["type"] == type_
    ]
    return paginate(items, params, "/v1/events")


ROUTES: list[Route] = [
    route("GET", "/v1/events", list_events),
    route("GET", "/v1/events/{id}", retrieve),
]
