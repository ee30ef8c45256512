"""The operator's side through real processes: the service under uvicorn in a subprocess, the
``meterapi`` command in others, the Stripe emulator on loopback, the backend under test."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from meterapi.billing.gateway import EMULATOR_WEBHOOK_SECRET
from meterapi.config import Settings
from meterapi.db import Sessionmaker
from meterapi.stripe_emulator import EmulatorControl, EmulatorServer
from tests.conftest import stripe_settings
from tests.integration.admin_support import (
    ADMIN,
    ADMIN_TOKEN,
    eventually,
    failing_checkout_event,
    seed_customer,
    send_behind_our_back,
)
from tests.integration.billing_support import signed
from tests.integration.servers import ServiceProcess, free_port, meterapi, service_env
from tests.integration.totals import stripe_total


def _env(db_url: str, emulator: EmulatorServer, price: str, **extra: str) -> dict[str, str]:
    return service_env(db_url, emulator, price, METERAPI_REPORT_INTERVAL_S="0.2", **extra)


def test_a_short_admin_token_stops_the_start_with_a_clear_line(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str, tmp_path: Path
) -> None:
    short = "too-short-but-secret-0123"
    env = _env(db_url, stripe_emulator, stripe_price, METERAPI_ADMIN_TOKEN=short)
    started = meterapi(env, "serve", "--port", str(free_port()), timeout_s=60)
    assert started.returncode == 2
    (line,) = started.stderr.strip().splitlines()
    assert line.startswith(
        "meterapi: configuration error: METERAPI_ADMIN_TOKEN must be at least 32"
    )
    # uvicorn's own factory start fails too, and never echoes the token.
    service = ServiceProcess(env, log_path=tmp_path / "short.log")
    with pytest.raises(RuntimeError, match="service exited early"):
        service.start(timeout_s=60)
    log = (tmp_path / "short.log").read_text()
    assert "METERAPI_ADMIN_TOKEN must be at least 32 characters" in log
    assert short not in log and short not in started.stderr


def test_without_a_token_admin_is_404_in_a_real_process(
    db_url: str, stripe_emulator: EmulatorServer, stripe_price: str, tmp_path: Path
) -> None:
    service = ServiceProcess(
        _env(db_url, stripe_emulator, stripe_price), log_path=tmp_path / "service.log"
    ).start()
    try:
        for path in ("/admin", "/admin/v1/customers", "/admin/v1/reconciliation"):
            response = httpx.get(service.url + path, headers=ADMIN, timeout=10)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
    finally:
        service.terminate()


async def test_the_operator_journey_through_real_processes(
    db_url: str,
    stripe_emulator: EmulatorServer,
    stripe_price: str,
    sessionmaker: Sessionmaker,
    stripe_sdk: stripe.StripeClient,
    emulator_control: EmulatorControl,
    tmp_path: Path,
) -> None:
    settings: Settings = stripe_settings(db_url, stripe_emulator, stripe_price)
    seeded = [
        await seed_customer(
            sessionmaker, stripe_sdk, email=f"p{i}@example.com", pepper=settings.pepper_bytes()
        )
        for i in range(3)
    ]
    env = _env(db_url, stripe_emulator, stripe_price, METERAPI_ADMIN_TOKEN=ADMIN_TOKEN)
    service = ServiceProcess(env, log_path=tmp_path / "service.log").start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            await _journey(http, env, seeded, stripe_sdk, stripe_price, emulator_control)
    finally:
        assert service.terminate()


async def _journey(
    http: httpx.AsyncClient,
    env: dict[str, str],
    seeded: list[tuple[str, str]],
    sdk: stripe.StripeClient,
    price: str,
    control: EmulatorControl,
) -> None:
    # Auth: missing and wrong tokens are refused in the error shape.
    for headers in ({}, {"Authorization": "Bearer " + "x" * 40}):
        refused = await http.get("/admin/v1/customers", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_admin_token"

    # Paid calls, then paging over the customers with their usage.
    for i, (_, key) in enumerate(seeded):
        for _ in range(2 + i):
            assert (await http.get("/v1/data", headers={"X-API-Key": key})).status_code == 200
    first = (await http.get("/admin/v1/customers?limit=2", headers=ADMIN)).json()
    assert first["has_more"] and len(first["data"]) == 2
    after = first["data"][-1]["customer_id"]
    rest = (await http.get(f"/admin/v1/customers?starting_after={after}", headers=ADMIN)).json()
    listed = first["data"] + rest["data"]
    assert not rest["has_more"]
    assert [(c["customer_id"], c["units_this_period"]) for c in listed] == [
        (cus, 2 + i) for i, (cus, _) in enumerate(seeded)
    ]

    async def all_reported() -> bool:
        pending = (await http.get("/admin/v1/reports?status=pending", headers=ADMIN)).json()
        totals = [await stripe_total(control, cus) for cus, _ in seeded]
        return not pending["data"] and totals == [2, 3, 4]

    await eventually(all_reported, what="usage reported to Stripe")

    # Zero drift after a normal run, from the command line.
    clean = await asyncio.to_thread(meterapi, env, "usage", "reconcile")
    assert clean.returncode == 0, clean.stderr
    assert "3 customer(s) reconciled; 0 drifting" in clean.stdout
    assert "DRIFT" not in clean.stdout.replace("0 drifting", "")

    # Drift injected behind the service's back is found, for that customer only.
    drifting = seeded[1][0]
    await send_behind_our_back(
        sdk, stripe_customer_id=drifting, value=7, identifier=f"x-{drifting}"
    )
    found = await asyncio.to_thread(meterapi, env, "usage", "reconcile")
    assert found.returncode == 1, found.stderr
    marked = [line for line in found.stdout.splitlines() if "<< DRIFT" in line]
    assert len(marked) == 1 and marked[0].startswith(drifting) and "+7" in marked[0]
    assert "reconciled 3/3 customers" in found.stderr  # progress, as lines off a terminal
    api_rows = (await http.get("/admin/v1/reconciliation", headers=ADMIN)).json()["data"]
    assert {r["customer_id"]: r["drift"] for r in api_rows} == {
        seeded[0][0]: 0,
        drifting: 7,
        seeded[2][0]: 0,
    }

    # Limits from the command line, as the operator API shows them.
    cus = seeded[0][0]
    limits = await asyncio.to_thread(
        meterapi,
        env,
        "limits",
        "set",
        "--customer",
        cus,
        "--rate",
        "50/second",
        "--spend-cap",
        "5000",
    )
    assert limits.returncode == 0, limits.stderr
    assert f"{cus}: rate limit 50/second, monthly spend cap 5000" in limits.stdout
    shown = (await http.get(f"/admin/v1/customers/{cus}", headers=ADMIN)).json()["limits"]
    assert shown["rate_limit"] == "50/second" and shown["monthly_spend_cap"]["amount"] == 5000
    bad = await asyncio.to_thread(
        meterapi, env, "limits", "set", "--customer", cus, "--rate", "lots"
    )
    assert bad.returncode == 1 and "rate_limit" in bad.stderr

    await _parked_report_retry(http, seeded[2], control)
    await _failed_event_replay(http, sdk, price, control)


async def _parked_report_retry(
    http: httpx.AsyncClient, customer: tuple[str, str], control: EmulatorControl
) -> None:
    cus, key = customer
    await control.inject_fault("error", "/v1/billing/meter_events", status=400, count=None)
    for _ in range(5):
        assert (await http.get("/v1/data", headers={"X-API-Key": key})).status_code == 200

    async def parked() -> list[dict[str, Any]]:
        page = (await http.get("/admin/v1/reports?status=parked", headers=ADMIN)).json()
        mine = [r for r in page["data"] if r["customer_id"] == cus]
        return mine if sum(r["units"] for r in mine) == 5 else []

    reports = await eventually(parked, what="the refused usage to be parked")
    await control.clear_faults()
    for report in reports:
        retried = await http.post(f"/admin/v1/reports/{report['id']}/retry", headers=ADMIN)
        assert retried.status_code == 200 and retried.json()["identifier"] == report["identifier"]

    async def counted() -> bool:
        return await stripe_total(control, cus) == 4 + 5

    await eventually(counted, what="Stripe to count the retried usage")
    await asyncio.sleep(1)  # several reporter cycles: nothing is sent twice
    assert await stripe_total(control, cus) == 9
    again = await http.post(f"/admin/v1/reports/{reports[0]['id']}/retry", headers=ADMIN)
    assert again.status_code == 409


async def _failed_event_replay(
    http: httpx.AsyncClient, sdk: stripe.StripeClient, price: str, control: EmulatorControl
) -> None:
    evt, sub_id = await failing_checkout_event(sdk, price)
    await control.inject_fault(
        "error", f"/v1/subscriptions/{sub_id}", method="GET", status=500, count=3
    )
    body, headers = signed(evt, secret=EMULATOR_WEBHOOK_SECRET)
    assert (await http.post("/webhooks/stripe", content=body, headers=headers)).status_code >= 500
    failed = (await http.get("/admin/v1/stripe-events?status=failed", headers=ADMIN)).json()
    assert [e["id"] for e in failed["data"]] == [evt["id"]]
    replayed = await http.post(f"/admin/v1/stripe-events/{evt['id']}/replay", headers=ADMIN)
    assert replayed.status_code == 200 and replayed.json()["outcome"] == "processed"
    cus = evt["data"]["object"]["customer"]
    detail = await http.get(f"/admin/v1/customers/{cus}", headers=ADMIN)
    assert detail.status_code == 200 and detail.json()["access"] == "allowed"
    assert (await http.get("/admin/v1/stripe-events", headers=ADMIN)).json()["data"] == []
