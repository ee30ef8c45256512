"""The command line's failures: one clear line and a non-zero exit, no traceback or secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterapi import cli
from meterapi.config import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("METERAPI_STRIPE_SECRET_KEY", "METERAPI_STRIPE_API_BASE", "METERAPI_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    return tmp_path


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://meter:hunter2secret@127.0.0.1:1/meterapi",  # nothing listens
        "sqlite+aiosqlite:////nonexistent-dir/meterapi.db",  # cannot be created
    ],
)
def test_an_unreachable_database_is_one_line_and_exit_1(
    url: str,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("METERAPI_DATABASE_URL", url)
    assert cli.main(["db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meterapi: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "hunter2secret" not in err


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        ("0001-01-01T00:00:00", "9999-12-31T23:59:59", "between 2000 and 2200"),
        ("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z", "--end must be after --start"),
    ],
)
def test_reconcile_refuses_a_window_it_cannot_hold(
    start: str, end: str, says: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        code = cli.main(["usage", "reconcile", "--start", start, "--end", end])
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_stripe_unreachable_is_one_line_and_exit_1(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERAPI_STRIPE_API_BASE", "http://127.0.0.1:1")
    assert cli.main(["stripe", "setup"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meterapi: the Stripe call failed:") and "Traceback" not in err


def test_without_a_stripe_key_the_commands_talk_to_the_emulator(clean_env: Path) -> None:
    at = cli._at_the_emulator(Settings(_env_file=None))  # type: ignore[call-arg]
    assert at.stripe_api_base == "http://127.0.0.1:12111"
    chosen = Settings(_env_file=None, stripe_api_base="http://127.0.0.1:4242")  # type: ignore[call-arg]
    assert cli._at_the_emulator(chosen).stripe_api_base == "http://127.0.0.1:4242"


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "99999"],
        ["serve", "--port", "-1"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "0"],
        ["serve", "--workers", "-2"],
        ["stripe-emulator", "--port", "70000"],
    ],
)
def test_ports_and_workers_out_of_range_are_usage_errors(
    argv: list[str], clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["x" * 101, "", "tab\there"])
def test_keys_issue_refuses_a_name_the_api_would_refuse(
    name: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["keys", "issue", "--customer", "cus_1", "--name", name])
    assert exited.value.code == 2
    assert "a key name is 1-100 characters" in capsys.readouterr().err
