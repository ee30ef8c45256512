"""The emulator's ASGI app: authentication, idempotency, faults, dispatch to resource handlers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import control, openapi, pages
from .faults import Faults, injected_error
from .resources import catalog, checkout, events, invoices, meters, subscriptions, v2
from .routing import Ctx, resolve
from .state import JSON, SavedResponse, Store, new_id
from .webhooks import (
    DEFAULT_RETRY_DELAYS,
    DEFAULT_WEBHOOK_SECRET,
    Emitter,
    WebhookSender,
    WebhookTarget,
)
from .wire import StripeError, decode_form, decode_json, decode_pairs

log = logging.getLogger(__name__)

API_ROUTES = (
    catalog.ROUTES
    + meters.ROUTES
    + checkout.ROUTES
    + subscriptions.ROUTES
    + invoices.ROUTES
    + events.ROUTES
    + v2.ROUTES
)
HANG_POLL_S = 0.05
IDEMPOTENCY_TTL_S = 24 * 3600


def json_response(status: int, body: JSON, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, indent=2).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(error: StripeError, request_id: str) -> Response:
    return json_response(error.status, error.body(request_id), error.headers)


class Emulator:
    """The emulator's state and machinery; the Starlette app is a thin shell around it."""

    def __init__(
        self,
        *,
        webhook_url: str | None,
        webhook_secret: str,
        state_file: str | None,
        public_url: str | None,
        retry_delays: Sequence[float],
    ) -> None:
        self.state_file = state_file
        self.store = Store.load_from(state_file) if state_file else Store()
        self.target = WebhookTarget(webhook_url, webhook_secret)
        self.sender = WebhookSender(self.store, self.target, retry_delays)
        self.emitter = Emitter(self.store, self.sender)
        self.faults = Faults()
        self.public_url = public_url.rstrip("/") if public_url else None
        self.checks = _parameter_checks()

    def ctx(self, request: Request, idempotency_key: str | None = None) -> Ctx:
        base = self.public_url or str(request.base_url).rstrip("/")
        return Ctx(
            store=self.store,
            emitter=self.emitter,
            request_id=request.state.request_id,
            idempotency_key=idempotency_key,
            public_url=base,
        )

    def persist(self) -> None:
        if self.state_file:
            self.store.save_to(self.state_file)

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear()
        self.sender.deliveries.clear()
        self.persist()

    async def handle_api(self, request: Request) -> Response:
        request_id: str = request.state.request_id
        method, path = request.method, request.url.path
        latency, fault = self.faults.take(method, path)
        if latency:
            await asyncio.sleep(latency)
        if fault is not None and fault.kind in ("error", "rate_limit"):
            return error_response(injected_error(fault), request_id)
        if fault is not None and fault.kind == "hang" and not fault.apply:
            await self._hang(request, fault.seconds)
            return error_response(injected_error(fault), request_id)
        response = await self._dispatch(request, method, path)
        if fault is not None and fault.kind == "hang":
            await self._hang(request, fault.seconds)
        if fault is not None and fault.kind in ("lost_response", "hang"):
            # The effect is stored (and an Idempotency-Key saved); only the answer is lost.
            return error_response(injected_error(fault), request_id)
        return response

    async def _hang(self, request: Request, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            await asyncio.sleep(HANG_POLL_S)

    async def _dispatch(self, request: Request, method: str, path: str) -> Response:
        request_id: str = request.state.request_id
        try:
            found = resolve(list(v2.SESSION_ROUTES), method, path)
            if found is not None:
                v2.check_session_token(self.ctx(request), _bearer(request))
            else:
                found = resolve(list(API_ROUTES), method, path)
                if found is None:
                    raise StripeError(
                        f"Unrecognized request URL ({method}: {path}). Please see "
                        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                        status=404,
                    )
                _authenticate(request)
            route, path_params = found
            params = await _params(request, method, path)
            self.checks[route.method, route.template].validate(params)
        except StripeError as exc:
            return error_response(exc, request_id)
        key = request.headers.get("idempotency-key") if method == "POST" else None
        if key is not None:
            fingerprint = hashlib.sha256(
                json.dumps([method, path, params], sort_keys=True).encode()
            ).hexdigest()
            saved = self.store.idempotency.get(key)
            if saved is not None:
                return _replay(saved, fingerprint, request_id)
        ctx = self.ctx(request, key)
        headers: dict[str, str] = {}
        try:
            status, body = 200, route.handler(ctx, params, path_params)
        except StripeError as exc:
            status, body, headers = exc.status, exc.body(request_id), exc.headers
        response = json_response(status, body, headers)
        # Stripe saves results once execution began; a request refused by validation is not saved.
        if key is not None and status < 400:
            self._prune_idempotency()
            self.store.idempotency[key] = SavedResponse(
                fingerprint, status, bytes(response.body), time.time()
            )
        if method in ("POST", "DELETE") and status < 400:
            self.persist()
        return response

    def _prune_idempotency(self) -> None:
        # Stripe may prune keys once they are 24 h old; doing so bounds memory here.
        cutoff = time.time() - IDEMPOTENCY_TTL_S
        saved = self.store.idempotency
        for stale in [k for k, v in saved.items() if v.created < cutoff][:1000]:
            del saved[stale]


def _parameter_checks() -> dict[tuple[str, str], openapi.Operation]:
    """Each served route's operation in Stripe's spec (its parameter check), found once."""
    checks = {}
    for route in [*API_ROUTES, *v2.SESSION_ROUTES]:
        op = openapi.operation(route.method, route.template)
        if op is None:
            raise RuntimeError(f"{route.method} {route.template} is not in the bundled spec")
        checks[route.method, route.template] = op
    return checks


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return base64.b64decode(value).decode().split(":", 1)[0]
    return None


def _authenticate(request: Request) -> None:
    key = _bearer(request)
    if key is None:
        raise StripeError(
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth "
            "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            status=401,
        )
    if not key.startswith("sk_test_") or len(key) <= len("sk_test_"):
        masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
        raise StripeError(f"Invalid API Key provided: {masked}", status=401)


async def _params(request: Request, method: str, path: str) -> JSON:
    query = decode_pairs(list(request.query_params.multi_items()))
    if method in ("GET", "DELETE"):
        return query
    body = await request.body()
    if path.startswith("/v2/"):
        return decode_json(body)
    form = decode_form(body)
    return {**query, **form}


def _replay(saved: SavedResponse, fingerprint: str, request_id: str) -> Response:
    if saved.fingerprint != fingerprint:
        error = StripeError(
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with. Try using a key other than the one used for the original request.",
            type="idempotency_error",
        )
        return error_response(error, request_id)
    return Response(
        saved.body,
        status_code=saved.status,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


class RequestIdMiddleware:
    """Every response carries `Request-Id: req_…`; handlers read it from `request.state`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req_", 14)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_emulator_app(
    *,
    webhook_url: str | None = None,
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    state_file: str | None = None,
    public_url: str | None = None,
    webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
) -> Starlette:
    """Build the emulator as an ASGI app. `app.state.emulator` is its `Emulator`."""
    emulator = Emulator(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        state_file=state_file,
        public_url=public_url,
        retry_delays=webhook_retry_delays,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await emulator.sender.aclose()
        emulator.persist()

    routes: list[BaseRoute] = [
        *control.routes(emulator),
        *pages.routes(emulator),
        Route(
            "/{path:path}",
            emulator.handle_api,
            methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    app.state.emulator = emulator
    return app


def emulator_of(app: Any) -> Emulator:
    """The `Emulator` behind an app made by `create_emulator_app`."""
    emulator = app.state.emulator
    assert isinstance(emulator, Emulator)
    return emulator
