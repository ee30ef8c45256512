"""Small pieces the service's asynchronous work shares: a bounded wait, a bounded stop, and one
task for all concurrent callers of the same work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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


class SingleFlight(Generic[K, V]):
    """One task per key for every concurrent caller: a cache fill under a burst of misses on one
    key reads once, not once per request in flight.

    Each caller awaits the task shielded: one caller giving up (a cancelled request) does not
    cancel the work the others wait for. The task is forgotten when it ends, so the next call
    after that starts afresh; its exception is retrieved even if every caller gave up.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """``work()``'s result, from the task already running for ``key`` or a new one."""
        task = self._tasks.get(key)
        if task is None:

            def done(ended: asyncio.Task[V]) -> None:
                self._tasks.pop(key, None)
                if not ended.cancelled():
                    ended.exception()

            task = asyncio.create_task(work())
            self._tasks[key] = task
            task.add_done_callback(done)
        return await asyncio.shield(task)
