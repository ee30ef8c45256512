"""``meterapi keys issue`` / ``meterapi keys revoke``, and that no secret reaches the logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import httpx
import pytest
from sqlalchemy import func, select

from meterapi import cli
from meterapi.app import create_app
from meterapi.db import make_engine, make_sessionmaker
from meterapi.keys import format as key_format
from meterapi.models import ApiKey
from tests.conftest import make_settings
from tests.integration import internals
from tests.integration.keys_support import headers, seed_customer, wrong_key

PEPPER = "pepper-that-must-never-be-logged-7Qx"


def _seed(db_url: str, stripe_customer_id: str) -> None:
    async def seed() -> None:
        engine = make_engine(db_url)
        await seed_customer(make_sessionmaker(engine), stripe_customer_id=stripe_customer_id)
        await engine.dispose()

    asyncio.run(seed())


def _count_keys(db_url: str) -> int:
    async def count() -> int:
        engine = make_engine(db_url)
        async with engine.connect() as connection:
            total = (await connection.execute(select(func.count()).select_from(ApiKey))).scalar()
        await engine.dispose()
        return int(total or 0)

    return asyncio.run(count())


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("METERAPI_DATABASE_URL", db_url)
    monkeypatch.setenv("METERAPI_KEY_PEPPER", PEPPER)
    return db_url


def test_issue_for_an_unknown_customer_creates_nothing(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keys", "issue", "--customer", "cus_nobody"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cus_nobody" in err
    assert _count_keys(cli_env) == 0


def test_issue_then_revoke(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(cli_env, "cus_cli")
    assert cli.main(["keys", "issue", "--customer", "cus_cli"]) == 0
    first = capsys.readouterr().out.strip()
    assert key_format.looks_valid(first) and first.startswith("mk_test_")
    assert cli.main(["keys", "issue", "--customer", "cus_cli", "--name", "backup"]) == 0
    capsys.readouterr()
    assert _count_keys(cli_env) == 2

    async def key_ids() -> list[str]:
        engine = make_engine(cli_env)
        async with engine.connect() as connection:
            ids = (await connection.execute(select(ApiKey.id).order_by(ApiKey.name))).scalars()
            result = list(ids)
        await engine.dispose()
        return result

    backup, default = asyncio.run(key_ids())
    assert cli.main(["keys", "revoke", backup]) == 0
    assert backup in capsys.readouterr().out
    assert cli.main(["keys", "revoke", default]) == 1  # the last active key
    assert "only active key" in capsys.readouterr().err
    assert cli.main(["keys", "revoke", default, "--force"]) == 0
    assert cli.main(["keys", "revoke", "key_unknown"]) == 1


async def test_no_key_and_no_pepper_in_the_logs(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole flow at DEBUG (SQL statements and parameters included): no secret is logged."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # SQL and its parameters
    monkeypatch.setenv("METERAPI_DATABASE_URL", db_url)
    monkeypatch.setenv("METERAPI_KEY_PEPPER", PEPPER)
    await asyncio.to_thread(_seed, db_url, "cus_logs")
    secrets: list[str] = [PEPPER]

    def issue() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["keys", "issue", "--customer", "cus_logs"]) == 0
        return out.getvalue().strip()

    first = await asyncio.to_thread(issue)
    secrets.append(first)
    settings = make_settings(db_url, key_pepper=PEPPER)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/v1/data", headers=headers(first))).status_code == 200
            created = (await client.post("/v1/keys", headers=headers(first))).json()
            secrets.append(created["api_key"])
            rotated = (
                await client.post(
                    f"/v1/keys/{created['key']['id']}/rotate",
                    headers=headers(first),
                    json={"grace_seconds": 0},
                )
            ).json()
            secrets.append(rotated["api_key"])
            await client.get("/v1/data", headers=headers(created["api_key"]))  # now refused
            await client.get("/v1/data", headers=headers(wrong_key(first)))
            await client.get("/v1/keys", headers=headers(rotated["api_key"]))
            await client.delete(f"/v1/keys/{rotated['key']['id']}", headers=headers(first))
            await internals.flush_last_used(app)
            assert PEPPER not in repr(internals.key_machinery(app))
            assert PEPPER not in repr(settings)
    logged = caplog.text + "".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    assert "api_key" in logged  # SQL was logged, so the check below had something to look at
    for secret in secrets:
        assert secret not in logged
        assert secret[8:-6] not in logged  # not even the random part alone
