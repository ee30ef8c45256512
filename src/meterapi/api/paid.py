"""The paid-route API: ``PaidCaller`` authenticates, ``Usage`` charges (CONTRACT §6).

A paid route takes the caller and the request's meter as parameters::

    @router.post("/v1/summarize")
    async def summarize(body: Text, caller: PaidCaller, usage: Usage) -> Summary:
        usage.charge(tokens)

The contract, for routes and for anything else that answers paid requests (the gateway):

- ``authenticate_paid(request)`` is the whole admission of a paid request: the key (header or
  bearer, never the query string), the cached validator, the subscription's access, and the
  limits (``_admit``, the one place where rate limits and spend caps are checked). Every refusal
  is a ``DomainError``, raised before the endpoint does any work. It works outside FastAPI's
  dependency injection too: a plain Starlette endpoint may call it.
- ``usage_of(request).charge(units)`` adds units to the request (an ``int`` from 0 to
  ``MAX_CHARGE``, summed over calls), and only after ``authenticate_paid``. Units must be charged
  before the response starts; a charge after that raises.
- ``UsageRecording``, the ASGI layer ``create_app`` installs, records the request's units in the
  ledger when the response starts (``http.response.start``) with a 2xx status and units > 0, and
  lets the start go out only once they are durable; for a ``StreamingResponse`` too, since its
  start precedes its first byte. An exception, or a response outside 2xx, records nothing. If the
  ledger cannot record, the client gets 503 ``usage_unavailable`` instead, and the ``send`` the
  application called raises ``ResponseWithdrawn``: let it propagate (it ends a streaming body
  early); the layer swallows it. The ``route`` written to the ledger is the matched route's path
  template (``UsageMeter.route`` when set, else the route FastAPI matched, ``route_template``).
- A response that an exception handler turns into a 2xx counts as a 2xx: the layer sees
  responses, not exceptions. meterapi's own handlers never answer 2xx.
- Rate limits (``_admit``, ``metering.ratelimit``): each admitted call of a key whose customer
  has a rate limit is counted, and the IETF ``RateLimit-Policy``/``RateLimit`` headers are put in
  the scope; the same layer adds them to whatever response starts (2xx, 429, any later refusal
  or error, streaming or not, the gateway's too). Over the limit: 429 ``rate_limited`` with
  ``Retry-After``, raised before the endpoint runs, so nothing is charged or recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterapi.api.deps import ApiKeyAuth, require_api_key
from meterapi.errors import RateLimited, UsageNotRecorded
from meterapi.metering.ledger import LedgerUnavailable, UsageRecorder
from meterapi.metrics import Counter
from meterapi.runtime import Runtime

log = logging.getLogger(__name__)

# The most one ``charge`` call may add: more is a bug at the call site, not a usage.
MAX_CHARGE = 1_000_000_000
# The most one request may charge in total: what one ledger row can hold.
MAX_REQUEST_UNITS = 2**31 - 1

# The ledger's route column holds this much of a path template.
ROUTE_LENGTH = 200

_METER = "meterapi.usage"  # the request's UsageMeter, in the ASGI scope
_RATE_HEADERS = "meterapi.rate_limit_headers"  # the RateLimit headers of this response


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling a paid route: an API key of a customer whose subscription allows access."""

    customer_id: str  # Stripe's cus_…
    key_id: str  # as in KeyPublic
    key_name: str | None
    customer_pk: int  # the customer's row in our database, which the ledger records


class UsageMeter:
    """The units one request has charged so far, and whom they are charged to."""

    __slots__ = ("caller", "route", "sealed", "units")

    def __init__(self) -> None:
        self.units = 0
        self.caller: Caller | None = None
        self.route: str | None = None  # the ledger's route; default: the matched path template
        self.sealed = False  # the response has started: too late to charge

    def __repr__(self) -> str:
        return f"UsageMeter(units={self.units})"

    def charge(self, units: int) -> None:
        """Add ``units`` (an int, 0 ≤ units ≤ 10⁹) to this request's usage."""
        if isinstance(units, bool) or not isinstance(units, int):
            raise TypeError(f"charge() takes an int number of units, not {type(units).__name__}")
        if units < 0:
            raise ValueError(f"charge() cannot take negative units ({units})")
        if units > MAX_CHARGE:
            raise ValueError(f"charge() takes at most {MAX_CHARGE} units per call, not {units}")
        if self.caller is None:
            raise RuntimeError("charge() needs an authenticated caller: add `caller: PaidCaller`")
        if self.sealed:
            raise RuntimeError("charge() after the response started: those units cannot be billed")
        if self.units + units > MAX_REQUEST_UNITS:
            raise ValueError(f"a request cannot charge more than {MAX_REQUEST_UNITS} units")
        self.units += units


def usage_of(request: Request) -> UsageMeter:
    """The request's meter (the one ``Usage`` gives a route)."""
    scope = request.scope
    meter = scope.get(_METER)
    if meter is None:
        if not scope.get(_RECORDING):
            raise RuntimeError("usage is recorded only in an app built by meterapi.create_app")
        meter = scope[_METER] = UsageMeter()
    assert isinstance(meter, UsageMeter)
    return meter


async def authenticate_paid(request: Request) -> Caller:
    """The paying caller of this request, or a ``DomainError`` (401, 400, 402, ...)."""
    principal = await require_api_key(request, require_access=True)
    caller = Caller(
        customer_id=principal.stripe_customer_id,
        key_id=principal.key_id,
        key_name=principal.key_name,
        customer_pk=principal.customer_id,
    )
    await _admit(request, caller)
    usage_of(request).caller = caller
    return caller


async def _admit(request: Request, caller: Caller) -> None:
    """The limits of a paid call: the rate limit and the spend cap (CONTRACT §7) are checked
    here, and only here, for Python routes and the gateway alike."""
    # Straight from the app, as ``require_api_key`` does: one dependency level less.
    runtime: Runtime = request.app.state.runtime
    limits = await runtime.limits.get(caller.customer_pk)
    if limits.rate_limit is not None:
        verdict = await runtime.rate_limiter.hit(limits.rate_limit, caller.key_id)
        request.scope[_RATE_HEADERS] = verdict.headers()
        if not verdict.allowed:
            error = RateLimited("Too many requests for this API key; try again later.")
            error.headers = {"Retry-After": str(verdict.reset_s)}
            raise error
    await runtime.spend.check(caller.customer_pk, limits.monthly_spend_cap)  # 402 at the cap


class _PaidAccess(ApiKeyAuth):
    """The ``ApiKey`` scheme in the OpenAPI document; the check is ``authenticate_paid``."""

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        return await authenticate_paid(request)


# Async on purpose: FastAPI runs plain-function dependencies on a thread pool.
async def usage_dependency(request: Request) -> UsageMeter:
    return usage_of(request)


PAID_ACCESS = _PaidAccess(require_access=True, allow_rotated=True)
PaidCaller = Annotated[Caller, Security(PAID_ACCESS)]
Usage = Annotated[UsageMeter, Depends(usage_dependency)]


# -- recording -------------------------------------------------------------------------------

_RECORDING = "meterapi.usage_recording"  # set in the scope by the layer below


class ResponseWithdrawn(Exception):
    """Raised by ``send``: the usage could not be recorded, so 503 was sent instead."""


def _unavailable_body() -> bytes:
    error = UsageNotRecorded()
    return json.dumps({"error": {"code": error.code, "message": error.message}}).encode()


_UNAVAILABLE = _unavailable_body()


class UsageRecording:
    """Records a request's charged units when its 2xx response starts, before it is sent."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        recorder: UsageRecorder,
        recorded: Counter,
        on_recorded: Callable[[int, int], None] | None = None,
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.recorded = recorded
        self.on_recorded = on_recorded  # (customer, units) once committed: the spend tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_RECORDING] = True
        withdrawn = False

        async def recording_send(message: Message) -> None:
            nonlocal withdrawn
            if withdrawn:
                raise ResponseWithdrawn()
            if message["type"] == "http.response.start":
                extra = scope.get(_RATE_HEADERS)
                if extra is not None:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                meter: UsageMeter | None = scope.get(_METER)
                if meter is not None:
                    meter.sealed = True
                    billable = meter.units and 200 <= message["status"] < 300
                    if billable and not await self._record(scope, meter):
                        withdrawn = True
                        await _send_unavailable(send, extra or ())
                        raise ResponseWithdrawn()
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except ResponseWithdrawn:
            if not withdrawn:
                raise

    async def _record(self, scope: Scope, meter: UsageMeter) -> bool:
        caller = meter.caller
        assert caller is not None  # charge() refuses units without one
        route = (meter.route or route_template(scope))[:ROUTE_LENGTH]
        try:
            await self.recorder.record(
                customer_id=caller.customer_pk,
                api_key_id=caller.key_id,
                route=route,
                units=meter.units,
            )
        except LedgerUnavailable:
            return False
        self.recorded.inc(meter.units)
        if self.on_recorded is not None:
            self.on_recorded(caller.customer_pk, meter.units)
        return True


def route_template(scope: Scope) -> str:
    """The matched route's path template, with the prefixes of every router that included it."""
    # FastAPI keeps the route as its router declared it (without the prefixes it was included
    # under) in scope["route"], and the route as served in its own part of the scope.
    served = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(served, "path_format", None) or getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else "unmatched"


async def _send_unavailable(send: Send, extra: Iterable[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": UsageNotRecorded.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_UNAVAILABLE)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": _UNAVAILABLE})
