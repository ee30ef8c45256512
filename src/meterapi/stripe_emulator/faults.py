"""Fault injection: make the next N matching calls fail the ways Stripe calls fail."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from .state import JSON, new_id
from .wire import StripeError

KINDS = ("error", "rate_limit", "hang", "lost_response", "latency")


@dataclass
class Fault:
    """One rule. `path` is a glob (`/v1/billing/*`) or, starting with `^`, a regex."""

    kind: str
    path: str
    method: str | None = None
    remaining: int | None = 1  # None: every matching call until cleared
    status: int = 500
    should_retry: str | None = None  # value of `Stripe-Should-Retry`, or no header
    seconds: float = 0.0
    apply: bool = False  # hang only: perform the call before hanging
    id: str = field(default_factory=lambda: new_id("fault_", 10))
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path.startswith("^"):
            return re.search(self.path, path) is not None
        return fnmatch.fnmatchcase(path, self.path)

    def public(self) -> JSON:
        return {
            "id": self.id,
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "remaining": self.remaining,
            "status": self.status,
            "should_retry": self.should_retry,
            "seconds": self.seconds,
            "apply": self.apply,
            "hits": self.hits,
        }


def parse_fault(spec: JSON) -> Fault:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise StripeError(f"kind must be one of {', '.join(KINDS)}", param="kind")
    count = spec.get("count", 1)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise StripeError("count must be a positive integer or null (unlimited)", param="count")
    should_retry = spec.get("should_retry")
    if isinstance(should_retry, bool):
        should_retry = "true" if should_retry else "false"
    default_seconds = {"hang": 30.0, "latency": 0.15}.get(kind, 0.0)
    try:
        seconds = float(spec.get("seconds", default_seconds))
        status = int(spec.get("status", 429 if kind == "rate_limit" else 500))
    except (TypeError, ValueError) as exc:
        raise StripeError("seconds and status must be numbers") from exc
    path = str(spec.get("path", "*"))
    if path.startswith("^"):
        try:
            re.compile(path)
        except re.error as exc:
            raise StripeError(f"Invalid path regex: {exc}", param="path") from exc
    method = spec.get("method")
    return Fault(
        kind=kind,
        path=path,
        method=None if method is None else str(method).upper(),
        remaining=count,
        status=status,
        should_retry=None if should_retry is None else str(should_retry),
        seconds=max(0.0, min(seconds, 600.0)),
        apply=bool(spec.get("apply", False)),
    )


class Faults:
    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        self.rules = []

    def take(self, method: str, path: str) -> tuple[float, Fault | None]:
        """Consume what applies to one call: the summed latency, and at most one failure."""
        latency, failure = 0.0, None
        for fault in list(self.rules):
            if not fault.matches(method, path):
                continue
            if fault.kind == "latency":
                latency += fault.seconds
            elif failure is None:
                failure = fault
            else:
                continue
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.rules.remove(fault)
        return latency, failure


def injected_error(fault: Fault) -> StripeError:
    headers = {} if fault.should_retry is None else {"Stripe-Should-Retry": fault.should_retry}
    if fault.kind == "rate_limit":
        headers["Stripe-Rate-Limited-Reason"] = "endpoint-rate"
        return StripeError(
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            status=fault.status,
            code="rate_limit",
            headers=headers,
        )
    return StripeError(
        "An unknown error occurred (injected by the emulator).",
        status=fault.status,
        type="api_error",
        headers=headers,
    )
