"""Snapshot events and their signed, retried delivery to one webhook URL (like `stripe listen`)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from .state import API_VERSION, JSON, Store, new_id, now, public

log = logging.getLogger(__name__)

DEFAULT_WEBHOOK_SECRET = "whsec_meterapi_emulator_0000000000000000"  # noqa: S105 - a fixed test secret
# Short, because this is a local emulator: Stripe's own schedule spans days.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def sign(payload: str, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header: hex HMAC-SHA256 keyed by the whole `whsec_…` string."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass
class WebhookTarget:
    """Where events go. Mutable, because an embedding service learns its own URL late."""

    url: str | None
    secret: str = DEFAULT_WEBHOOK_SECRET
    # Events wait (status "held") instead of going nowhere until a URL is set: for a service
    # that starts the emulator before it listens itself.
    held: bool = False


@dataclass
class Delivery:
    event_id: str
    type: str
    status: str = "pending"  # pending | delivered | failed | no_endpoint | held
    attempts: list[JSON] = field(default_factory=list)

    def public(self) -> JSON:
        return {
            "event": self.event_id,
            "type": self.type,
            "status": self.status,
            "attempts": list(self.attempts),
        }


class WebhookSender:
    """Sends each event on its own task, never on the request path, retrying with backoff."""

    def __init__(self, store: Store, target: WebhookTarget, retry_delays: Sequence[float]) -> None:
        self.store = store
        self.target = target
        self.retry_delays = tuple(retry_delays)
        self.deliveries: dict[str, Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._held: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def schedule(self, event: JSON) -> None:
        delivery = self.deliveries.setdefault(event["id"], Delivery(event["id"], event["type"]))
        self._loop = asyncio.get_running_loop()
        if self.target.held and self.target.url is None:
            delivery.status = "held"
            self._held.append(event["id"])
            return
        if self.target.url is None:
            delivery.status = "no_endpoint"
            return
        delivery.status = "pending"
        task = asyncio.get_running_loop().create_task(self._deliver(event["id"], delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self) -> None:
        """Send the held events, in order, now that a URL is set (from any thread)."""
        self.target.held = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send_held)

    def _send_held(self) -> None:
        held, self._held = self._held, []
        for event_id in held:
            event = self.store.get("events", event_id)
            if event is not None:
                self.schedule(event)

    async def _deliver(self, event_id: str, delivery: Delivery) -> None:
        for attempt, delay in enumerate((0.0, *self.retry_delays)):
            if delay:
                await asyncio.sleep(delay)
            event = self.store.get("events", event_id)
            url = self.target.url
            if event is None or url is None:
                delivery.status = "no_endpoint" if url is None else "failed"
                return
            outcome = await self._attempt(url, event)
            outcome["attempt"] = attempt + 1
            delivery.attempts.append(outcome)
            if 200 <= outcome.get("status_code", 0) < 300:
                delivery.status = "delivered"
                return
        delivery.status = "failed"

    async def _attempt(self, url: str, event: JSON) -> JSON:
        payload = json.dumps(event, indent=2)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(payload, self.target.secret, int(time.time())),
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        try:
            response = await self._client.post(url, content=payload.encode(), headers=headers)
        except httpx.HTTPError as exc:
            log.info("webhook %s to %s failed: %s", event["id"], url, exc)
            return {"at": now(), "error": type(exc).__name__}
        return {"at": now(), "status_code": response.status_code}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class Emitter:
    """Creates snapshot events (`object: "event"`) and hands them to the sender."""

    def __init__(self, store: Store, sender: WebhookSender) -> None:
        self.store = store
        self.sender = sender

    def emit(
        self,
        type_: str,
        obj: JSON,
        *,
        previous: JSON | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        data: JSON = {"object": public(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event: JSON = {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1 if self.sender.target.url else 0,
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": type_,
        }
        self.store.put("events", event)
        self.sender.schedule(event)
        return event
