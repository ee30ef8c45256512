"""Settings, read once from the environment (prefix ``METERAPI_``) and ``.env``, then passed in."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STRIPE_API_BASE = "https://api.stripe.com"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
MIN_WEBHOOK_SECRET_BYTES = 16
EMULATOR_KEY = "sk_test_emulator"


class ConfigError(ValueError):
    """The configuration cannot run safely; the message says what to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="METERAPI_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        # A refused value may be a secret: errors name the setting, never echo its value.
        hide_input_in_errors=True,
    )

    database_url: str = "sqlite+aiosqlite:///./meterapi.db"
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
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # Outbound delivery's pace (CONTRACT §8 fixes the defaults; tests shorten them).
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_first_retry_s: float = Field(default=5.0, gt=0, le=10)
    webhook_poll_s: float = Field(default=1.0, gt=0, le=1)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("public_url", "stripe_api_base")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        # The Stripe SDK appends paths to its base addresses verbatim.
        return value.rstrip("/")

    @field_validator("stripe_secret_key")
    @classmethod
    def _known_key_kind(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
        ):
            raise ValueError("must start with sk_test_, sk_live_, rk_test_ or rk_live_")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # an empty line in .env means unset
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

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def pepper_bytes(self) -> bytes:
        """The key pepper; in emulator mode a fixed development pepper stands in for it."""
        if self.key_pepper is not None:
            return self.key_pepper.get_secret_value().encode()
        return b"meterapi-development-pepper-not-for-production"
