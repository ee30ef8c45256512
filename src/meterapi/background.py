"""Small pieces the service's background loops share: a bounded wait, and a bounded stop."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, but at most ``seconds``."""
    if seconds > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


async def finish_or_cancel(task: asyncio.Task[None], *, within_s: float) -> None:
    """Let ``task`` finish for ``within_s`` seconds, then cancel it and wait for it to end."""
    try:
        async with asyncio.timeout(within_s):
            await task
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
