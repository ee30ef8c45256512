"""The process is the serving process's business: ``meterapi serve`` tunes its garbage collector
(``METERAPI_GC_TUNING``) and its thread switch interval (``METERAPI_SWITCH_INTERVAL_S``) once the
service has started, and ``create_app`` leaves both alone."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from meterapi.app import create_app
from meterapi.cli.serve import YOUNG_GC_THRESHOLD
from meterapi.config import Settings
from tests.conftest import make_settings


def _collector() -> tuple[tuple[int, ...], int, float]:
    return gc.get_threshold(), gc.get_freeze_count(), sys.getswitchinterval()


async def test_two_apps_in_one_process_leave_the_collector_alone(db_url: str) -> None:
    before = _collector()
    first = create_app(make_settings(db_url))
    second = create_app(make_settings(db_url))
    first_running = first.router.lifespan_context(first)
    await first_running.__aenter__()
    try:
        assert _collector() == before
        async with second.router.lifespan_context(second):
            assert _collector() == before
            # The first stops while the second still serves: nothing of the second's changes.
            await first_running.__aexit__(None, None, None)
            assert _collector() == before
    finally:
        await first_running.__aexit__(None, None, None)
    assert _collector() == before


# Run in a process of its own: the tuning lasts for the process's life, as it does when served.
_SERVED = """
import asyncio, gc, json, sys
from meterapi.cli.serve import create_served_app

def process():
    return [gc.get_threshold(), gc.get_freeze_count(), sys.getswitchinterval()]

async def main():
    seen = {"before": process()}
    app = create_served_app()
    seen["built"] = process()
    async with app.router.lifespan_context(app):
        seen["started"] = process()
    print(json.dumps(seen))

asyncio.run(main())
"""


def _served_collector(db_url: str, **env: str) -> dict[str, list[object]]:
    environment = {**os.environ, "METERAPI_DATABASE_URL": db_url, **env}
    result = subprocess.run(
        [sys.executable, "-c", _SERVED],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen: dict[str, list[object]] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


def test_the_served_app_tunes_the_process_once_started(db_url: str) -> None:
    seen = _served_collector(db_url)
    (young, *older), _, interval = seen["before"]
    assert young != YOUNG_GC_THRESHOLD
    assert interval == pytest.approx(0.005)  # Python's own
    assert seen["built"] == seen["before"]  # building is not starting
    started_threshold, started_frozen, started_interval = seen["started"]
    assert started_threshold == [YOUNG_GC_THRESHOLD, *older]
    assert isinstance(started_frozen, int) and started_frozen > 0
    assert started_interval == pytest.approx(Settings.model_fields["switch_interval_s"].default)
    assert started_interval < 0.005


@pytest.mark.parametrize("off", ["false", "0"])
def test_gc_tuning_can_be_turned_off(db_url: str, off: str) -> None:
    seen = _served_collector(db_url, METERAPI_GC_TUNING=off)
    threshold, frozen, _ = seen["started"]
    assert [threshold, frozen] == seen["before"][:2]


def test_the_switch_interval_is_a_setting(db_url: str) -> None:
    seen = _served_collector(db_url, METERAPI_SWITCH_INTERVAL_S="0.001")
    assert seen["started"][2] == pytest.approx(0.001)


@pytest.mark.parametrize("value", ["0", "-1", "0.5", "fast"])
def test_a_switch_interval_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="switch_interval_s"):
        Settings(database_url="sqlite+aiosqlite:///:memory:", switch_interval_s=value)
