"""Forwarding to the upstream: one pooled HTTP client, header rules both ways, the identity
headers and their signature.

Nothing is buffered: the request body goes up as it arrives from the client, the response comes
down chunk by chunk as the upstream writes it (server-sent events arrive as they are produced), so
a 10 MB answer costs the gateway a few chunks of memory, not 10 MB.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Iterable
from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx

from meterapi.errors import UpstreamTimeout, UpstreamUnavailable
from meterapi.gateway.pool import pooled_transport
from meterapi.gateway.spec import MAX_UNITS, GatewaySpec

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

UNITS_HEADER = b"x-meterapi-units"
CUSTOMER_HEADER = b"x-meterapi-customer"
KEY_ID_HEADER = b"x-meterapi-key-id"
SIGNATURE_HEADER = b"x-meterapi-signature"
_IDENTITY_PREFIX = b"x-meterapi-"
# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Set by this hop itself: the client's Host names us, Expect is answered by our server; the
# response's Date and Server come from the server that answers the client.
_NOT_FORWARDED_UP = frozenset({b"host", b"expect", b"x-api-key"})
_NOT_FORWARDED_DOWN = frozenset({b"date", b"server", UNITS_HEADER})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names a ``Connection`` header lists: hop-by-hop for this message too."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def _hop_by_hop(name: bytes, listed: set[bytes]) -> bool:
    return name in _HOP_BY_HOP or name.startswith(b"proxy-") or name in listed


def upstream_headers(client_headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The client's headers as the upstream may see them: no hop-by-hop headers, no API key
    (nor ``Authorization: Bearer``, the other place a key travels), no identity headers a
    client could forge."""
    headers = list(client_headers)
    listed = _connection_tokens(headers)
    kept = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if (
            _hop_by_hop(name, listed)
            or name in _NOT_FORWARDED_UP
            or name.startswith(_IDENTITY_PREFIX)
            or (name == b"authorization" and value.strip()[:7].lower() == b"bearer ")
        ):
            continue
        kept.append((name, value))
    return kept


def client_headers(upstream: Iterable[tuple[bytes, bytes]]) -> tuple[Headers, bytes | None]:
    """The upstream's response headers as the client may see them, and its units header."""
    headers = list(upstream)
    listed = _connection_tokens(headers)
    units: bytes | None = None
    kept = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == UNITS_HEADER:
            units = value if units is None else b"repeated"  # two values: neither is trusted
        if _hop_by_hop(name, listed) or name in _NOT_FORWARDED_DOWN:
            continue
        kept.append((name, value))
    return kept, units


def units_of(value: bytes | None, *, default: int, route: str) -> int:
    """``X-Meterapi-Units`` if it is an integer from 0 to 10^9, else the route's units."""
    if value is None:
        return default
    text = value.strip()
    if text.isdigit() and len(text) <= 10 and int(text) <= MAX_UNITS:
        return int(text)
    log.warning(
        "upstream answered %s with an invalid X-Meterapi-Units (%r); charging the route's %d",
        route,
        value[:40],
        default,
    )
    return default


def signature(secret: bytes, *, timestamp: int, method: str, target: str, customer: str) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<METHOD>.<target>.<customer>">`` (CONTRACT §6)."""
    message = f"{timestamp}.{method}.{target}.{customer}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def identity_headers(
    *, customer: str, key_id: str, method: str, target: str, secret: bytes | None
) -> Headers:
    headers = [(CUSTOMER_HEADER, customer.encode()), (KEY_ID_HEADER, key_id.encode())]
    if secret is not None:
        value = signature(
            secret, timestamp=int(time.time()), method=method, target=target, customer=customer
        )
        headers.append((SIGNATURE_HEADER, value.encode()))
    return headers


class _NoCookies(CookieJar):
    """The client serves every customer: it must never keep a cookie one upstream answer set
    and send it with another customer's request. Cookies pass through as plain headers."""

    def set_cookie(self, cookie: Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class Upstream:
    """The upstream API behind the gateway, reached through one pooled client per process."""

    def __init__(
        self,
        spec: GatewaySpec,
        *,
        secret: bytes | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base = httpx.URL(spec.upstream)
        self.base_path = self.base.raw_path.rstrip(b"/").decode("ascii")
        self.secret = secret
        self.timeout_s = spec.timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        self._client = httpx.AsyncClient(
            transport=self._transport or pooled_transport(limits),
            # connect: reaching the upstream; read: its response headers, then each body chunk.
            timeout=httpx.Timeout(self.timeout_s),
            limits=limits,
            follow_redirects=False,  # a redirect is the upstream's answer to the client
            trust_env=False,  # an HTTP_PROXY in the environment must not reroute paid calls
            cookies=_NoCookies(),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def target(self, raw_path: bytes, query_string: bytes) -> str:
        """The request target sent upstream: its base path, the client's path, the query."""
        target = self.base_path + raw_path.decode("ascii")
        return f"{target}?{query_string.decode('ascii')}" if query_string else target

    async def open(
        self,
        *,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
    ) -> httpx.Response:
        """Send the request and wait for the status and headers; the body is left to stream.

        The caller must ``aclose()`` the response. An upstream that cannot be reached (or
        hangs up before answering) raises ``UpstreamUnavailable``; one that does not answer in
        time, ``UpstreamTimeout``.
        """
        assert self._client is not None, "the gateway is not started"
        request = self._client.build_request(
            method,
            self.base.copy_with(raw_path=target.encode("ascii")),
            headers=headers,
            content=body,
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            log.warning("upstream did not answer %s %s in time", method, _path_only(target))
            raise UpstreamTimeout() from exc
        except httpx.TransportError as exc:
            log.warning(
                "upstream unavailable for %s %s: %s",
                method,
                _path_only(target),
                type(exc).__name__,
            )
            raise UpstreamUnavailable() from exc


def _path_only(target: str) -> str:
    # Queries can carry secrets of the upstream's own; logs get the path alone.
    return target.partition("?")[0]
