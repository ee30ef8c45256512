"""The key format: ``mk_live_`` or ``mk_test_``, 32 random base62 characters, a CRC32 checksum.

``mk_test_4f9Xq…(32)…Ab12Cd`` — the prefix tells live from test keys at a glance (and to secret
scanners); the 32 characters come from ``secrets`` (32 * log2(62) = 190 bits); the last 6 are the
CRC32 of everything before them in fixed-width base62, so a typo or a random string is refused
without touching the database (GitHub-token style). The checksum is public and adds no secrecy.
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from dataclasses import dataclass, field

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
LIVE_PREFIX = "mk_live_"
TEST_PREFIX = "mk_test_"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
KEY_LENGTH = len(LIVE_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
DISPLAY_RANDOM_CHARS = 4  # shown in listings after the prefix, with the last 4 characters

_SHAPE = re.compile(rf"mk_(?:live|test)_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def checksum(text: str) -> str:
    """The fixed-width base62 CRC32 of ``text``."""
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def is_live_stripe_key(stripe_secret_key: str | None) -> bool:
    """Keys are live when the service bills through a live Stripe key, test keys otherwise."""
    return stripe_secret_key is not None and stripe_secret_key.startswith(("sk_live_", "rk_live_"))


def generate(*, live: bool) -> str:
    """A new key, at least 128 bits of randomness from ``secrets``."""
    head = (LIVE_PREFIX if live else TEST_PREFIX) + "".join(
        secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH)
    )
    return head + checksum(head)


def looks_valid(text: str) -> bool:
    """True when ``text`` has the key's shape and its checksum matches: no database needed."""
    if len(text) != KEY_LENGTH or _SHAPE.fullmatch(text) is None:
        return False
    return checksum(text[:-CHECKSUM_LENGTH]) == text[-CHECKSUM_LENGTH:]


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key; ``repr`` shows the display parts only, never the secret."""

    live: bool
    prefix: str
    last4: str
    plaintext: str = field(repr=False)


def parse(text: str) -> ParsedKey | None:
    """The key's parts if it is well formed with a good checksum, else ``None``."""
    if not looks_valid(text):
        return None
    return ParsedKey(
        live=text.startswith(LIVE_PREFIX),
        prefix=display_prefix(text),
        last4=text[-4:],
        plaintext=text,
    )


def display_prefix(text: str) -> str:
    """What listings show before the ellipsis: the kind and the first random characters."""
    return text[: len(LIVE_PREFIX) + DISPLAY_RANDOM_CHARS]


def new_key_id() -> str:
    """A public identifier for a key row (not secret; appears in URLs)."""
    return "key_" + "".join(secrets.choice(ALPHABET) for _ in range(20))
