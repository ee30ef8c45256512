"""A typed async client for the `/_emulator/` control endpoints, for the service's tests."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

JSON = dict[str, Any]


class EmulatorControl:
    """`async with EmulatorControl(url) as control: await control.close_period("sub_…")`."""

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=10.0)
        self._owns_client = client is None

    async def _call(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = await self._client.request(method, f"{self.base_url}/_emulator{path}", **kwargs)
        response.raise_for_status()
        body = response.json()
        assert isinstance(body, dict)
        return body

    async def set_subscription_status(self, subscription_id: str, status: str) -> JSON:
        """past_due | unpaid | canceled | paused | active, with the events Stripe sends."""
        return await self._call(
            "POST", f"/subscriptions/{subscription_id}/status", json={"status": status}
        )

    async def close_period(
        self, subscription_id: str, *, outcome: str = "paid", end: int | None = None
    ) -> JSON:
        """Invoice the period's usage (`paid` or `payment_failed`) and start the next period."""
        body: JSON = {"outcome": outcome}
        if end is not None:
            body["end"] = end
        return await self._call("POST", f"/subscriptions/{subscription_id}/close_period", json=body)

    async def complete_checkout(self, session_id: str, *, email: str | None = None) -> JSON:
        """What the hosted page's Pay button does, without the HTML."""
        return await self._call(
            "POST", f"/checkout/sessions/{session_id}/complete", json={"email": email}
        )

    async def inject_fault(self, kind: str, path: str = "*", **options: Any) -> JSON:
        """kind: error | rate_limit | hang | lost_response | latency; options: method, count,
        status, should_retry, seconds, apply (see the emulator's faults module)."""
        return await self._call("POST", "/faults", json={"kind": kind, "path": path, **options})

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def meter_events(
        self, *, customer: str | None = None, event_name: str | None = None
    ) -> JSON:
        """`{"data": [{identifier, value, customer, timestamp, …}], "totals": {customer: n}}`."""
        params = {k: v for k, v in (("customer", customer), ("event_name", event_name)) if v}
        return await self._call("GET", "/meter_events", params=params)

    async def webhook_deliveries(self, *, type: str | None = None) -> list[JSON]:
        body = await self._call("GET", "/webhooks", params={"type": type} if type else None)
        data = body["data"]
        assert isinstance(data, list)
        return data

    async def redeliver(self, event_id: str) -> JSON:
        return await self._call("POST", f"/events/{event_id}/redeliver")

    async def set_webhook(self, url: str | None, secret: str | None = None) -> JSON:
        body: JSON = {"url": url}
        if secret is not None:
            body["secret"] = secret
        return await self._call("POST", "/webhook", json=body)

    async def expire_meter_event_sessions(self) -> JSON:
        return await self._call("POST", "/meter_event_sessions/expire")

    async def reset(self) -> None:
        await self._call("POST", "/reset")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> EmulatorControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
