"""Settings, read once from the environment (prefix ``METERAPI_``) and ``.env``, then passed in."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from limits import parse
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

STRIPE_API_BASE = "https://api.stripe.com"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_WEBHOOK_SECRET_BYTES = 16
EMULATOR_KEY = "sk_test_emulator"
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


class ConfigError(ValueError):
    """The configuration cannot run safely; the message says what to set."""


MIN_ADMIN_TOKEN_CHARS = 32
RATE_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"^([1-9][0-9]{0,8})/(second|minute|hour|day)$")


def parse_rate_limit(text: str) -> tuple[int, int]:
    """``"100/second"`` → (100, 1): a quota and its window in seconds; ValueError otherwise."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            "a rate limit is <count>/<second|minute|hour|day>, e.g. 100/second or 6000/minute"
        )
    return int(match.group(1)), RATE_WINDOWS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERAPI_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        # A validation error names the variable, never its (possibly secret) value.
        hide_input_in_errors=True,
    )

    # Kept out of repr: a PostgreSQL URL may hold the database's password.
    database_url: str = Field(default="sqlite+aiosqlite:///./meterapi.db", repr=False)
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = STRIPE_API_BASE
    stripe_price_id: str | None = None
    stripe_meter_event_name: str = "api_requests"
    key_pepper: SecretStr | None = None
    public_url: str = "http://127.0.0.1:8000"
    report_interval_s: float = Field(default=2.0, gt=0)
    past_due_grace_s: int = Field(default=0, ge=0)
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    stripe_timeout_s: float = Field(default=10.0, gt=0)
    key_cache_size: int = Field(default=100_000, gt=0)
    key_cache_ttl_s: float = Field(default=60.0, gt=0)
    # Gateway mode (CONTRACT §6): meter and forward the routes of this file to an upstream.
    gateway_file: Path | None = None
    upstream_url: str | None = None
    upstream_secret: SecretStr | None = None
    # Plug-in routers, as "package.module:attribute" import strings (CONTRACT §6).
    routers: Annotated[list[str], NoDecode] = []
    example_routes: bool = True  # serve the example paid resource GET /v1/data
    # Per client address, on the unauthenticated routes that cost a Stripe call.
    public_rate_limit: str = "20/minute"
    # Addresses whose X-Forwarded-For/-Proto are believed; empty: nobody's.
    trusted_proxies: Annotated[list[str], NoDecode] = []
    admin_token: SecretStr | None = None
    rate_limit: str | None = None
    # Rate-limit counts shared by every worker and replica; it may hold a password.
    redis_url: SecretStr | None = None
    # The longest a paid request waits on Redis before going on without its rate limit.
    redis_timeout_s: float = Field(default=0.005, gt=0, le=1)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # Outbound delivery's pace (CONTRACT §8 fixes the defaults; tests shorten them).
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_first_retry_s: float = Field(default=5.0, gt=0, le=10)
    webhook_poll_s: float = Field(default=1.0, gt=0, le=1)
    # `meterapi serve` only: tune the process's garbage collector once the service has started.
    gc_tuning: bool = True
    # `meterapi serve` only: the interpreter's thread switch interval (Python's default: 0.005).
    switch_interval_s: float = Field(default=0.0002, gt=0, le=0.1)

    @field_validator("cors_origins", "routers", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("gateway_file", "upstream_url", "upstream_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _an_async_database_url(cls, value: str) -> str:
        # Named, never echoed: the URL may hold a password.
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            raise ValueError(
                "not a database URL; use sqlite+aiosqlite:///path.db or "
                "postgresql+asyncpg://user:password@host/db"
            ) from None
        if driver not in DATABASE_DRIVERS:
            raise ValueError(
                f"driver {driver!r} is not supported; use one of " + ", ".join(DATABASE_DRIVERS)
            )
        return value

    @field_validator("public_rate_limit")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise ValueError("must be a rate such as 20/minute or 100/second") from None
        return value

    @field_validator("public_url", "stripe_api_base", "upstream_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Checkout's return URLs, the Stripe SDK and the gateway append paths to these verbatim,
        # so a value that is no http(s) address would fail only later, at a customer's request.
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.example.com")
        return value.strip().rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # A browser's Origin is scheme://host[:port], compared as written: a trailing slash is
        # dropped, and a path refused, rather than an origin that silently never matches.
        value = [origin.rstrip("/") if origin != "*" else origin for origin in value]
        for origin in value:
            parts = urlsplit(origin)
            if origin != "*" and (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or parts.query
            ):
                raise ValueError(
                    "each origin is * or scheme://host[:port], e.g. https://app.example"
                )
        return value

    @field_validator("stripe_secret_key")
    @classmethod
    def _known_key_kind(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
        ):
            raise ValueError("must start with sk_test_, sk_live_, rk_test_ or rk_live_")
        return value

    @field_validator("admin_token", "redis_url", "rate_limit", "webhook_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An empty (or blank) line in .env means unset.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_format(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_rate_limit(value)
        return value.strip()

    @model_validator(mode="after")
    def _admin_token_long_enough(self) -> Settings:
        # After validation, as a model check: the error then names the variable, never the value.
        token = self.admin_token
        if token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ConfigError(
                f"METERAPI_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'); "
                "unset it to turn the operator API off"
            )
        return self

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        if not secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"must look like {WEBHOOK_SECRET_PREFIX}<base64>")
        try:
            key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"must look like {WEBHOOK_SECRET_PREFIX}<base64>") from None
        if len(key) < MIN_WEBHOOK_SECRET_BYTES:
            raise ValueError(f"must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes after whsec_")
        return value

    @model_validator(mode="after")
    def _webhook_url_needs_a_secret(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ConfigError(
                "METERAPI_WEBHOOK_URL is set, so METERAPI_WEBHOOK_SECRET (whsec_<base64>) "
                "must be set too"
            )
        return self

    @model_validator(mode="after")
    def _secrets_that_go_together(self) -> Settings:
        if self.stripe_secret_key is None:
            return self
        missing = [
            name
            for name, value in (
                ("METERAPI_STRIPE_WEBHOOK_SECRET", self.stripe_webhook_secret),
                ("METERAPI_KEY_PEPPER", self.key_pepper),
            )
            if value is None or not value.get_secret_value()
        ]
        if missing:
            raise ConfigError(
                "a Stripe secret key is set, so these must be set too: " + ", ".join(missing)
            )
        return self

    @property
    def emulator_mode(self) -> bool:
        """No Stripe key: run against the built-in Stripe emulator; no real money moves."""
        return self.stripe_secret_key is None

    def pepper_bytes(self) -> bytes:
        """The key pepper; in emulator mode a fixed development pepper stands in for it."""
        if self.key_pepper is not None:
            return self.key_pepper.get_secret_value().encode()
        return b"meterapi-development-pepper-not-for-production"
