"""The access log: one line per request, with nothing secret in it.

``GET /v1/data?apiKey=[redacted] 400 0.8ms 127.0.0.1:51234`` — method, path and query, status,
duration, client. It replaces uvicorn's access log, which writes the URL as received: a key sent
in the query string (``?apiKey=``, ``?token=``), or a Checkout Session id (``cs_…``, a claim
credential) in the dashboard's return URL, would land in the log in clear.

What is redacted, in the path and in the query:

- the value of every query parameter whose name looks secret (contains ``key``, ``token``,
  ``secret``, ``passw``, ``session``, ``auth``, ``sig``, ``credential``, ``jwt`` or ``code``,
  in any case): ``[redacted]``;
- anywhere, whatever the parameter is called: API keys and Stripe secrets (``mk_live_…``,
  ``sk_test_…``, ``rk_…``, ``whsec_…``) → ``mk_live_[redacted]``, and Checkout Session ids →
  ``cs_…`` with their last four characters, enough to tell two sessions apart.

The path is percent-encoded again where it holds spaces or unprintable characters, so one
request is always one line.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, quote

from starlette.types import Scope

log = logging.getLogger("meterapi.access")

REDACTED = "[redacted]"
MAX_TARGET_CHARS = 2048

_SECRET_NAME = re.compile(
    r"key|token|secret|passw|session|auth|sig|credential|jwt|code", re.IGNORECASE
)
# Not preceded by a letter or digit, so "docs_" is not taken for a session id.
_SECRET_VALUE = re.compile(
    r"(?<![0-9A-Za-z])(?:"
    r"(?P<key>(?:mk|sk|rk)_(?:live|test)_)[0-9A-Za-z]+"
    r"|(?P<whsec>whsec_)[0-9A-Za-z+/=]+"
    r"|cs_[0-9A-Za-z_]+"
    r")"
)
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_VALUE_SAFE = "/:@!$'()*+,;=-._~"  # whsec_ secrets are base64: keep + / = for the pattern


def _redact_value(match: re.Match[str]) -> str:
    prefix = match.group("key") or match.group("whsec")
    if prefix:
        return prefix + REDACTED
    session_id = match.group()
    return "cs_…" + (session_id[-4:] if len(session_id) >= 16 else "")


def _redact(text: str) -> str:
    return _SECRET_VALUE.sub(_redact_value, text) if "_" in text else text


def redacted_path(path: str) -> str:
    """``path`` as it may be logged: one line, no key or session id in clear."""
    if not (path.isascii() and path.isprintable()) or " " in path:
        path = quote(path, safe=_PATH_SAFE)
    return _redact(path)


def redacted_query(query_string: bytes) -> str:
    """The raw query string as it may be logged (without its ``?``)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return _redact(
        "&".join(
            quote(name, safe="")
            + "="
            + (REDACTED if _SECRET_NAME.search(name) else quote(value, safe=_VALUE_SAFE))
            for name, value in pairs
        )
    )


def target(scope: Scope) -> str:
    """The request's path and query, redacted."""
    shown = redacted_path(scope["path"])
    query_string = scope.get("query_string")
    if query_string:
        shown += "?" + redacted_query(query_string)
    if len(shown) > MAX_TARGET_CHARS:
        shown = shown[:MAX_TARGET_CHARS] + "…"
    return shown


def write(scope: Scope, status: int, seconds: float) -> None:
    """Log one request (at INFO on ``meterapi.access``); nothing is formatted when disabled."""
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    log.info(
        "%s %s %d %.1fms %s",
        scope["method"],
        target(scope),
        status,
        seconds * 1000,
        f"{client[0]}:{client[1]}" if client else "-",
    )
