"""``KeyPolicy``: how this deployment mints and hashes API keys, worked out once from the
settings, for the service and the command line alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from meterapi.config import Settings
from meterapi.keys import hashing
from meterapi.keys.format import is_live_stripe_key


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The pepper keys are hashed under, and whether new keys are ``mk_live_`` (the service
    bills through a live Stripe key) or ``mk_test_``."""

    pepper: bytes = field(repr=False)  # never in a repr, a log or an error
    live: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyPolicy:
        secret = settings.stripe_secret_key
        return cls(
            pepper=settings.pepper_bytes(),
            live=is_live_stripe_key(secret.get_secret_value() if secret else None),
        )

    def digest(self, plaintext: str) -> str:
        """The keyed hash ``plaintext`` is stored and looked up by."""
        return hashing.digest(plaintext, pepper=self.pepper)
