"""A small memory of strings that forgets them after a while."""

from __future__ import annotations

import time


class ExpiringSet:
    """Strings remembered for ``ttl_s`` seconds; the oldest go first when ``max_size`` is hit."""

    def __init__(self, *, ttl_s: float, max_size: int) -> None:
        self.ttl_s, self.max_size = ttl_s, max_size
        self._until: dict[str, float] = {}  # insertion order = expiry order

    def add(self, value: str) -> None:
        self._until.pop(value, None)
        while len(self._until) >= self.max_size:
            del self._until[next(iter(self._until))]
        self._until[value] = time.monotonic() + self.ttl_s

    def holds(self, value: str) -> bool:
        until = self._until.get(value)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._until[value]
            return False
        return True
