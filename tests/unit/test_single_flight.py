"""``SingleFlight``: concurrent callers of one key share one task; a caller giving up does not
cancel it; it is forgotten once it ends; its failure reaches every caller."""

from __future__ import annotations

import asyncio

import pytest

from meterapi.background import SingleFlight


async def test_concurrent_callers_of_one_key_share_one_call() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        this_call = calls
        await release.wait()
        return this_call

    waiting = [asyncio.create_task(flight.run("k", work)) for _ in range(20)]
    other = asyncio.create_task(flight.run("other", work))
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting)
    assert len(set(results)) == 1  # every caller got the one call's answer
    assert await other != results[0]
    assert calls == 2  # one per key

    assert await flight.run("k", work) == 3  # ended, so forgotten: the next call runs again


async def test_a_caller_giving_up_does_not_cancel_the_others_wait() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "read"

    impatient = asyncio.create_task(flight.run("k", work))
    patient = asyncio.create_task(flight.run("k", work))
    await asyncio.sleep(0)
    impatient.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await patient == "read"
    assert impatient.cancelled()


async def test_a_failure_reaches_every_caller() -> None:
    flight: SingleFlight[int, None] = SingleFlight()

    async def work() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    results = await asyncio.gather(*(flight.run(1, work) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3
    with pytest.raises(ConnectionError):  # and the next call tries again
        await flight.run(1, work)
