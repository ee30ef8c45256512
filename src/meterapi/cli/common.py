"""What the commands share."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from meterapi.errors import DomainError


def run_printing(work: Callable[[], Coroutine[Any, Any, str]]) -> int:
    """Run ``work``; print its result to stdout, or a domain error's message to stderr (exit 1)."""
    try:
        result = asyncio.run(work())
    except DomainError as exc:
        print(f"meterapi: {exc.message}", file=sys.stderr)
        return 1
    print(result)
    return 0
