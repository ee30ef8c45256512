"""`/_emulator/…`: drive the emulator from tests and demos. No authentication; JSON bodies.

GET    /_emulator/health
POST   /_emulator/reset
GET    /_emulator/webhook                      → {"url", "secret"}
POST   /_emulator/webhook                      {"url": str | null, "secret"?: str}
GET    /_emulator/webhooks?type=               → {"data": [{event, type, status, attempts}]}
POST   /_emulator/events/{evt_id}/redeliver
GET    /_emulator/meter_events?customer=&event_name=
                                               → {"data": [...], "totals": {cus: n}}
POST   /_emulator/meter_event_sessions/expire  (every v2 session token expires now)
POST   /_emulator/subscriptions/{id}/status    {"status": active|past_due|unpaid|canceled|paused}
POST   /_emulator/subscriptions/{id}/close_period
                                               {"outcome"?: "paid"|"payment_failed", "end"?: int}
POST   /_emulator/checkout/sessions/{id}/complete  {"email"?: str}
POST   /_emulator/faults                       {"kind", "path"?, "method"?, "count"?,
                                                "status"?, "should_retry"?, "seconds"?, "apply"?}
GET    /_emulator/faults    DELETE /_emulator/faults
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .faults import parse_fault
from .resources import checkout, lifecycle
from .resources.meters import number
from .state import JSON, now, public
from .wire import StripeError, decode_json, missing

if TYPE_CHECKING:
    from .app import Emulator

PREFIX = "/_emulator"


def _json(body: JSON, status: int = 200) -> Response:
    return Response(json.dumps(body, indent=2), status_code=status, media_type="application/json")


async def _body(request: Request) -> JSON:
    return decode_json(await request.body())


Endpoint = Callable[[Request], Awaitable[Response]]


def routes(emu: Emulator) -> list[Route]:
    def guarded(handler: Callable[[Request], Awaitable[JSON]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                body = await handler(request)
            except StripeError as exc:
                return _json(exc.body(request.state.request_id), exc.status)
            if request.method != "GET":
                emu.persist()
            return _json(body)

        return endpoint

    def subscription(request: Request) -> JSON:
        sub_id = request.path_params["id"]
        found = emu.store.get("subscriptions", sub_id)
        if found is None:
            raise missing("subscription", sub_id)
        return found

    async def set_status(request: Request) -> JSON:
        body = await _body(request)
        sub = subscription(request)
        lifecycle.set_status(emu.ctx(request), sub, str(body.get("status")))
        return public(sub)

    async def close_period(request: Request) -> JSON:
        body = await _body(request)
        outcome = body.get("outcome", "paid")
        if outcome not in ("paid", "payment_failed"):
            raise StripeError("outcome must be `paid` or `payment_failed`", param="outcome")
        end = body.get("end")
        if end is not None and not isinstance(end, int):
            raise StripeError("end must be a unix timestamp", param="end")
        sub = subscription(request)
        invoice = lifecycle.close_period(emu.ctx(request), sub, pay=outcome == "paid", end=end)
        return {"invoice": public(invoice), "subscription": public(sub)}

    async def complete_checkout(request: Request) -> JSON:
        body = await _body(request)
        ctx = emu.ctx(request)
        session = checkout.get_session(ctx, request.path_params["id"])
        email = body.get("email")
        checkout.complete(ctx, session, email=None if email is None else str(email))
        return public(session)

    async def add_fault(request: Request) -> JSON:
        return emu.faults.add(parse_fault(await _body(request))).public()

    async def list_faults(_: Request) -> JSON:
        return {"data": [f.public() for f in emu.faults.rules]}

    async def clear_faults(_: Request) -> JSON:
        emu.faults.clear()
        return {"data": []}

    async def meter_events(request: Request) -> JSON:
        customer = request.query_params.get("customer")
        event_name = request.query_params.get("event_name")
        rows: list[JSON] = []
        totals: dict[str, Decimal] = {}
        for event in emu.store.meter_events:
            notes = event["_emulator"]
            if customer is not None and notes["customer"] != customer:
                continue
            if event_name is not None and event["event_name"] != event_name:
                continue
            rows.append(
                {
                    "identifier": event["identifier"],
                    "event_name": event["event_name"],
                    "customer": notes["customer"],
                    "meter": notes["meter"],
                    "value": notes["value"],
                    "timestamp": event["timestamp"],
                    "created": event["created"],
                    "canceled": notes["canceled"],
                }
            )
            if not notes["canceled"]:
                totals[notes["customer"]] = totals.get(notes["customer"], Decimal(0)) + Decimal(
                    notes["value"]
                )
        return {"data": rows, "totals": {k: number(v) for k, v in totals.items()}}

    async def deliveries(request: Request) -> JSON:
        kind = request.query_params.get("type")
        rows = [
            d.public() for d in emu.sender.deliveries.values() if kind is None or d.type == kind
        ]
        return {"data": rows}

    async def redeliver(request: Request) -> JSON:
        event = emu.store.get("events", request.path_params["id"])
        if event is None:
            raise missing("event", request.path_params["id"])
        emu.sender.schedule(event)
        return emu.sender.deliveries[event["id"]].public()

    async def webhook(request: Request) -> JSON:
        if request.method == "POST":
            body = await _body(request)
            if "url" in body:
                emu.target.url = None if body["url"] is None else str(body["url"])
            if body.get("secret"):
                emu.target.secret = str(body["secret"])
        return {"url": emu.target.url, "secret": emu.target.secret}

    async def expire_v2_sessions(_: Request) -> JSON:
        for session in emu.store.v2_sessions.values():
            session["_expires"] = now()
        return {"expired": len(emu.store.v2_sessions)}

    async def reset(_: Request) -> JSON:
        emu.reset()
        return {"reset": True}

    async def health(_: Request) -> JSON:
        return {"ok": True}

    table: list[tuple[str, Callable[[Request], Awaitable[JSON]], list[str]]] = [
        ("/health", health, ["GET"]),
        ("/reset", reset, ["POST"]),
        ("/webhook", webhook, ["GET", "POST"]),
        ("/webhooks", deliveries, ["GET"]),
        ("/events/{id}/redeliver", redeliver, ["POST"]),
        ("/meter_events", meter_events, ["GET"]),
        ("/meter_event_sessions/expire", expire_v2_sessions, ["POST"]),
        ("/subscriptions/{id}/status", set_status, ["POST"]),
        ("/subscriptions/{id}/close_period", close_period, ["POST"]),
        ("/checkout/sessions/{id}/complete", complete_checkout, ["POST"]),
        ("/faults", add_fault, ["POST"]),
        ("/faults", list_faults, ["GET"]),
        ("/faults", clear_faults, ["DELETE"]),
    ]
    return [Route(PREFIX + path, guarded(fn), methods=methods) for path, fn, methods in table]
