"""The v2 meter event endpoints: the session, the high-throughput stream, single events."""

from __future__ import annotations

import datetime as dt
import logging

from ..routing import Ctx, Route, route
from ..state import JSON, new_id, now
from ..wire import StripeError, opt_dict, opt_str, req_str
from .meters import record_meter_event

log = logging.getLogger(__name__)

SESSION_TTL_S = 15 * 60
MAX_STREAM_EVENTS = 100


def rfc3339(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_rfc3339(value: str, param: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise StripeError(f"Invalid timestamp: {value}", param=param) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def session_expired() -> StripeError:
    return StripeError(
        "The temporary session token has expired.",
        status=401,
        type="temporary_session_expired",
        code="billing_meter_event_session_expired",
    )


def check_session_token(ctx: Ctx, token: str | None) -> None:
    """The stream authenticates with a session token, not the secret key."""
    session = ctx.store.v2_sessions.get(token or "")
    if session is None:
        raise StripeError(
            "The provided authentication token is not valid.",
            status=401,
            type="invalid_request_error",
            code="invalid_authentication_token",
        )
    if session["_expires"] <= now():
        raise session_expired()


def create_session(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    created = now()
    token = new_id("mes_token_", 40)
    session: JSON = {
        "id": new_id("mes_"),
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": rfc3339(created),
        "expires_at": rfc3339(created + SESSION_TTL_S),
        "livemode": False,
        "_expires": created + SESSION_TTL_S,
    }
    ctx.store.v2_sessions[token] = session
    return {k: v for k, v in session.items() if not k.startswith("_")}


def _record(ctx: Ctx, raw: JSON, param: str) -> JSON:
    stamp = opt_str(raw, "timestamp")
    return record_meter_event(
        ctx,
        event_name=req_str(raw, "event_name"),
        payload=opt_dict(raw, "payload"),
        identifier=opt_str(raw, "identifier"),
        timestamp=None if stamp is None else parse_rfc3339(stamp, f"{param}.timestamp"),
    )


def stream(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    events = params.get("events")
    if not isinstance(events, list) or not events:
        raise StripeError("Missing required param: events.", param="events")
    if len(events) > MAX_STREAM_EVENTS:
        raise StripeError(
            f"A request can contain at most {MAX_STREAM_EVENTS} events.", param="events"
        )
    # Stripe validates streamed events asynchronously: a bad event never fails the request,
    # it is dropped (and would be reported later as a meter error).
    for index, raw in enumerate(events):
        try:
            _record(ctx, raw if isinstance(raw, dict) else {}, f"events[{index}]")
        except StripeError as exc:
            log.info("dropped streamed meter event %d: %s", index, exc.message)
    return {}


def create_event(ctx: Ctx, params: JSON, _: dict[str, str]) -> JSON:
    event = _record(ctx, params, "event")
    return {
        "object": "v2.billing.meter_event",
        "created": rfc3339(event["created"]),
        "event_name": event["event_name"],
        "identifier": event["identifier"],
        "livemode": False,
        "payload": dict(event["payload"]),
        "timestamp": rfc3339(event["timestamp"]),
    }


ROUTES: list[Route] = [
    route("POST", "/v2/billing/meter_event_session", create_session),
    route("POST", "/v2/billing/meter_events", create_event),
]

# Authenticated by a meter event session token instead of the secret key.
SESSION_ROUTES: list[Route] = [
    route("POST", "/v2/billing/meter_event_stream", stream),
]
