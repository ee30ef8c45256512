"""The API's routing table and the context every handler receives."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .state import JSON, Store

if TYPE_CHECKING:
    from .webhooks import Emitter


@dataclass
class Ctx:
    """One API call: the store, where events go, and what identifies the call."""

    store: Store
    emitter: Emitter
    request_id: str | None
    idempotency_key: str | None
    public_url: str

    def emit(self, type_: str, obj: JSON, previous: JSON | None = None) -> None:
        self.emitter.emit(
            type_,
            obj,
            previous=previous,
            request_id=self.request_id,
            idempotency_key=self.idempotency_key,
        )


Handler = Callable[[Ctx, JSON, dict[str, str]], JSON]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    template: str


def route(method: str, template: str, handler: Handler) -> Route:
    """`/v1/customers/{id}` → a route whose `{name}` segments are captured."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return Route(method, re.compile(f"^{regex}$"), handler, template)


def resolve(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for candidate in routes:
        if candidate.method == method:
            match = candidate.pattern.match(path)
            if match:
                return candidate, match.groupdict()
    return None


def path_exists(routes: list[Route], path: str) -> bool:
    return any(r.pattern.match(path) for r in routes)
