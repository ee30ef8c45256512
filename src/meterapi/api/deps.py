"""The dependency aliases routes are written with: ``XDep = Annotated[X, Depends(...)]``.

Routes take what they need (``KeyPolicyDep``, ``PriceIdDep``, ``KeyGuardDep``...) rather than
reaching through the ``Runtime``; each is one provider here, so ``app.dependency_overrides``
replaces it for every route at once.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.db import session_scope
from meterapi.errors import (
    AmbiguousApiKey,
    ApiKeyInQuery,
    DomainError,
    InvalidAdminToken,
    KeyRotated,
    MissingApiKey,
    NotFound,
    ValidationFailed,
)
from meterapi.keys.guard import KeyGuard, Principal
from meterapi.keys.policy import KeyPolicy
from meterapi.runtime import Runtime

T = TypeVar("T")


# Async on purpose: FastAPI runs plain-function dependencies on a thread pool.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _runtime_part(read: Callable[[Runtime], T]) -> Callable[[Runtime], Awaitable[T]]:
    """A provider of one part of the runtime: its own function, so that
    ``app.dependency_overrides[provider]`` replaces that part alone."""

    async def provide(runtime: RuntimeDep) -> T:
        return read(runtime)

    return provide


get_settings = _runtime_part(lambda runtime: runtime.settings)
SettingsDep = Annotated[Settings, Depends(get_settings)]
get_gateway = _runtime_part(lambda runtime: runtime.gateway)
GatewayDep = Annotated[StripeGateway, Depends(get_gateway)]
# The pepper keys are hashed under and whether new keys are live: for minting keys.
get_key_policy = _runtime_part(lambda runtime: runtime.key_policy)
KeyPolicyDep = Annotated[KeyPolicy, Depends(get_key_policy)]
# This process's key machinery: for waiting until a revocation reached every process.
get_key_guard = _runtime_part(lambda runtime: runtime.keys)
KeyGuardDep = Annotated[KeyGuard, Depends(get_key_guard)]


async def get_price_id(settings: SettingsDep) -> str | None:
    """The metered price new subscriptions are created with (``METERAPI_STRIPE_PRICE_ID``)."""
    return settings.stripe_price_id


PriceIdDep = Annotated[str | None, Depends(get_price_id)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """One session per request, committed after the endpoint and before the response is sent."""
    async with session_scope(runtime.sessionmaker) as session:
        yield session


# scope="function": the commit above runs before the response goes out, so a 2xx is never
# sent for a write that then fails to commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def limit_public_caller(request: Request, runtime: RuntimeDep) -> None:
    """Count an unauthenticated call that costs a Stripe call against the client's address."""
    await runtime.public_limit.hit(request.client.host if request.client else "unknown")


# For routes anyone may call that reach Stripe before a key exists (checkout, claim).
PublicRateLimitDep = Depends(limit_public_caller)


# -- API keys --------------------------------------------------------------------------------

API_KEY_SCHEME = "ApiKey"
_QUERY_NAMES = frozenset({"apikey", "api_key", "api-key"})


class ApiKeyAuth(APIKeyHeader):
    """The ``X-API-Key`` security scheme of the OpenAPI document, and the check itself.

    One dependency rather than a function over two header dependencies: this runs on every
    paid request, and each dependency level costs FastAPI time. ``Authorization: Bearer`` is
    read here too.
    """

    def __init__(self, *, require_access: bool, allow_rotated: bool) -> None:
        self.require_access = require_access
        self.allow_rotated = allow_rotated
        super().__init__(
            name="X-API-Key",
            scheme_name=API_KEY_SCHEME,
            description="Your API key (`mk_live_…` or `mk_test_…`); "
            "`Authorization: Bearer <key>` works too.",
            auto_error=False,
        )

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return await require_api_key(
            request, require_access=self.require_access, allow_rotated=self.allow_rotated
        )


async def require_api_key(
    request: Request, *, require_access: bool = True, allow_rotated: bool = True
) -> Principal:
    """The authenticated caller; every refusal is a ``DomainError`` (CONTRACT §3).

    ``require_access`` also refuses (402) a customer whose subscription does not allow use of
    the paid API; the customer's self-service routes pass False. ``allow_rotated=False``
    refuses (403) a key in its rotation grace period: it may call the paid API and read, but
    not manage keys or billing.
    """
    # The runtime straight from the app, not RuntimeDep: one dependency level less on the
    # hot path. A warm key opens no database session at all.
    runtime: Runtime = request.app.state.runtime
    try:
        principal = await _authenticate(request, runtime, require_access=require_access)
        if principal.rotated and not allow_rotated:
            raise KeyRotated()
    except DomainError as exc:
        runtime.metrics.auth_outcomes.inc(code=exc.code)
        raise
    runtime.metrics.auth_outcomes.inc(code="ok")
    return principal


async def _authenticate(request: Request, runtime: Runtime, *, require_access: bool) -> Principal:
    # Checked first and regardless of headers: a key in a URL is already in someone's logs.
    if request.scope["query_string"] and any(
        name.lower() in _QUERY_NAMES for name in request.query_params
    ):
        raise ApiKeyInQuery()
    presented = presented_key(request.scope["headers"])
    if presented is None:
        raise MissingApiKey()
    return await runtime.keys.authenticate(presented, require_access=require_access)


def presented_key(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The one key a request carries in ``X-API-Key`` or ``Authorization: Bearer``, or None.

    Every occurrence of both headers is read, not just the first: two different keys in one
    request (the two headers disagreeing, or either repeated) are refused with
    ``AmbiguousApiKey`` rather than letting whichever comes first win. Empty values count as
    absent; the same key sent twice is not ambiguous.
    """
    found: str | None = None
    for name, value in raw_headers:
        if name == b"x-api-key":
            key = value.decode("latin-1").strip()
        elif name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                continue
            key = credentials.strip()
        else:
            continue
        if not key:
            continue
        if found is not None and key != found:
            raise AmbiguousApiKey()
        found = key
    return found


# One instance each, so FastAPI resolves each once per request. (The paid API's check, a valid
# key of a customer whose subscription allows access, is ``api.paid.PaidCaller``.)
_self_service = ApiKeyAuth(require_access=False, allow_rotated=False)
_self_service_read = ApiKeyAuth(require_access=False, allow_rotated=True)
# The customer's own keys, usage and billing: any valid key, whatever the subscription's state,
# so a lapsed customer can still see what they owe and reach the billing portal. Not a rotated
# key in its grace period (403 key_rotated): whoever holds only the old key must not be able to
# mint a permanent one or revoke its successor. The default for anything a customer changes.
CustomerDep = Annotated[Principal, Security(_self_service)]
# The same for reading only (GET /v1/keys, /v1/usage, /v1/limits): a rotated key may.
CustomerReadDep = Annotated[Principal, Security(_self_service_read)]


# -- the operator ------------------------------------------------------------------------------

ADMIN_SCHEME = "AdminToken"


class AdminAuth(HTTPBearer):
    """The operator's bearer scheme in the OpenAPI document, and the check: the presented token
    against ``METERAPI_ADMIN_TOKEN``, compared in constant time."""

    def __init__(self) -> None:
        super().__init__(
            scheme_name=ADMIN_SCHEME,
            description="The operator token, `METERAPI_ADMIN_TOKEN` (at least 32 characters).",
            auto_error=False,
        )

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        runtime: Runtime = request.app.state.runtime
        expected = runtime.settings.admin_token
        if expected is None:  # the routes are not even mounted then; this is a second lock
            raise NotFound()
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        given = presented.strip().encode("utf-8", errors="replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given, expected.get_secret_value().encode()
        ):
            raise InvalidAdminToken()


ADMIN_AUTH = Security(AdminAuth())


async def refuse_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take: an operator's typo
    (``?starting_afer=``) must not silently return something else."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.scope["query_string"]:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ValidationFailed(f"Unknown query parameter: {', '.join(unknown)[:100]}.")


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


# Declared on the operator routers; each route then shows the scheme in the document.
ADMIN_DEPENDENCIES = [ADMIN_AUTH, Depends(refuse_unknown_query)]
