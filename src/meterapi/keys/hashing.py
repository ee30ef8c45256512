"""The keyed hash a key is stored and looked up by: HMAC-SHA-256 under the server's pepper.

Without the pepper a stolen table of digests cannot be checked against guesses offline.
"""

from __future__ import annotations

import hashlib
import hmac


def digest(plaintext: str, *, pepper: bytes) -> str:
    """The hex HMAC-SHA-256 of the key; computed for every presented value, well formed or not."""
    return hmac.new(pepper, plaintext.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
