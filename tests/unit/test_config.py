"""Settings: defaults per CONTRACT §2, and refusing to run with half the secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meterapi.cli import main
from meterapi.config import Settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_match_the_contract() -> None:
    s = settings()
    assert s.database_url == "sqlite+aiosqlite:///./meterapi.db"
    assert s.stripe_secret_key is None and s.emulator_mode
    assert s.stripe_meter_event_name == "api_requests"
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.report_interval_s == 2
    assert s.past_due_grace_s == 0
    assert s.cors_origins == []


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"stripe_webhook_secret": "whsec_1"}, ["METERAPI_KEY_PEPPER"]),
        ({"key_pepper": "pepper"}, ["METERAPI_STRIPE_WEBHOOK_SECRET"]),
        ({}, ["METERAPI_STRIPE_WEBHOOK_SECRET", "METERAPI_KEY_PEPPER"]),
    ],
)
def test_a_stripe_key_needs_webhook_secret_and_pepper(
    values: dict[str, str], missing: list[str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(stripe_secret_key="sk_test_abc", **values)
    for name in missing:
        assert name in str(caught.value)


def test_complete_stripe_settings_are_accepted() -> None:
    s = settings(stripe_secret_key="sk_live_abc", stripe_webhook_secret="whsec_1", key_pepper="p")
    assert not s.emulator_mode


def test_unknown_key_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        settings(stripe_secret_key="pk_test_abc")


def test_secrets_do_not_show_in_repr() -> None:
    s = settings(
        stripe_secret_key="sk_test_supersecret",
        stripe_webhook_secret="whsec_x1",
        key_pepper="pepper-value",
    )
    shown = repr(s) + str(s)
    assert "supersecret" not in shown and "whsec_x1" not in shown and "pepper-value" not in shown


def test_cors_origins_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERAPI_CORS_ORIGINS", "https://a.example, https://b.example")
    assert settings().cors_origins == ["https://a.example", "https://b.example"]


def test_cli_refuses_to_start_and_names_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERAPI_STRIPE_SECRET_KEY", "sk_test_topsecret")
    monkeypatch.chdir("/")
    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "METERAPI_STRIPE_WEBHOOK_SECRET" in err and "METERAPI_KEY_PEPPER" in err
    assert "topsecret" not in err


WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes, base64


def test_outbound_webhook_url_needs_its_secret() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(webhook_url="https://hooks.example/meterapi")
    assert "METERAPI_WEBHOOK_SECRET" in str(caught.value)
    s = settings(webhook_url="https://hooks.example/meterapi", webhook_secret=WEBHOOK_SECRET)
    assert s.webhook_url == "https://hooks.example/meterapi"
    assert s.webhook_timeout_s == 10 and s.webhook_first_retry_s <= 10 and s.webhook_poll_s <= 1
    assert settings().webhook_url is None  # unset: nothing is sent


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no whsec_ prefix
        "whsec_not base64!",
        "whsec_c2hvcnQ=",  # base64 of 5 bytes: too short to sign with
    ],
)
def test_outbound_webhook_secret_must_be_whsec_base64(secret: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(webhook_url="https://hooks.example/x", webhook_secret=secret)
    assert "webhook_secret" in str(caught.value)
    assert secret not in str(caught.value)  # a refused secret is not echoed


def test_outbound_webhook_url_must_be_http() -> None:
    with pytest.raises(ValidationError):
        settings(webhook_url="ftp://hooks.example/x", webhook_secret=WEBHOOK_SECRET)


def test_cli_names_the_missing_outbound_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERAPI_WEBHOOK_URL", "https://hooks.example/x")
    monkeypatch.chdir("/")
    assert main(["db", "upgrade"]) == 2
    assert "METERAPI_WEBHOOK_SECRET" in capsys.readouterr().err


def test_the_operator_api_is_off_by_default_and_rate_limit_unset() -> None:
    s = settings()
    assert s.admin_token is None and s.rate_limit is None
    # An empty line in .env (METERAPI_ADMIN_TOKEN=) means unset, not a short token.
    assert settings(admin_token="", rate_limit="").admin_token is None


def test_a_short_admin_token_is_refused_by_name_never_by_value() -> None:
    short = "secret-but-only-31-characters-x"
    assert len(short) == 31
    with pytest.raises(ValidationError) as refused:
        settings(admin_token=short)
    assert "METERAPI_ADMIN_TOKEN must be at least 32 characters" in str(refused.value)
    assert short not in str(refused.value)
    token = settings(admin_token=short + "y").admin_token
    assert token is not None and short not in repr(token)


@pytest.mark.parametrize("rate", ["100/second", "6000/minute", "1/hour", "5/day", " 7/second "])
def test_rate_limits_that_parse(rate: str) -> None:
    assert settings(rate_limit=rate).rate_limit == rate.strip()


@pytest.mark.parametrize("rate", ["fast", "0/second", "100", "10/sec", "-1/minute", "1/week"])
def test_rate_limits_that_do_not(rate: str) -> None:
    with pytest.raises(ValidationError, match="a rate limit is <count>/<second"):
        settings(rate_limit=rate)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:hunter2secret@db/x",
        "postgresql://user:hunter2secret@db/x",
        "sqlite:///plain-sync.db",
        "not a url hunter2secret",
    ],
)
def test_a_database_url_without_an_async_driver_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(database_url=url)
    assert "database_url" in str(caught.value)
    assert "hunter2secret" not in str(caught.value)


def test_the_cli_names_a_wrong_database_url_and_never_echoes_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METERAPI_DATABASE_URL", "mysql://user:hunter2secret@db/x")
    monkeypatch.chdir("/")
    assert main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "METERAPI_DATABASE_URL" in err and "Traceback" not in err
    assert "hunter2secret" not in err


def test_the_database_password_does_not_show_in_repr() -> None:
    s = settings(database_url="postgresql+asyncpg://meter:hunter2secret@db.internal/meterapi")
    assert "hunter2secret" not in repr(s) + str(s)
    assert s.database_url.endswith("@db.internal/meterapi")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_url", "api.example.com"),
        ("public_url", "notaurl"),
        ("stripe_api_base", "localhost:12111"),
        ("upstream_url", "ftp://upstream.internal"),
        ("cors_origins", "app.example"),
        ("cors_origins", "https://app.example/dashboard"),
    ],
)
def test_addresses_that_are_no_http_url_are_refused_at_start(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(**{field: value})
    assert field in str(caught.value)


def test_addresses_that_are_http_urls_are_kept() -> None:
    s = settings(
        public_url="https://api.example.com/",
        stripe_api_base="http://127.0.0.1:12111",
        upstream_url="http://upstream.internal:8080/v2",
        cors_origins="https://app.example/, http://localhost:3000, *",
    )
    assert s.public_url == "https://api.example.com"
    assert s.upstream_url == "http://upstream.internal:8080/v2"
    assert s.cors_origins == ["https://app.example", "http://localhost:3000", "*"]


def test_the_example_environment_file_lists_every_setting() -> None:
    # The README sends operators to .env.example for "every variable".
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?METERAPI_([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} - listed == set()
    assert listed - {name.upper() for name in Settings.model_fields} == set()
