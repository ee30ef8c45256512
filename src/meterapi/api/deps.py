"""The dependency aliases routes are written with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.billing.gateway import StripeGateway
from meterapi.config import Settings
from meterapi.errors import AmbiguousApiKey, ApiKeyInQuery, MissingApiKey
from meterapi.keys.service import Principal
from meterapi.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_gateway(runtime: RuntimeDep) -> StripeGateway:
    return runtime.gateway


GatewayDep = Annotated[StripeGateway, Depends(get_gateway)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """One session per request, committed after the endpoint and before the response is sent."""
    async with runtime.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": the commit above runs before the response goes out, so a 2xx is never
# sent for a write that then fails to commit.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# -- API keys --------------------------------------------------------------------------------

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="Your API key (`mk_live_…` or `mk_test_…`).",
    auto_error=False,
)
_bearer = HTTPBearer(
    scheme_name="Bearer",
    description="The same API key, as `Authorization: Bearer <key>`.",
    auto_error=False,
)
_QUERY_NAMES = frozenset({"apikey", "api_key", "api-key"})


async def require_api_key(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    header_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The authenticated caller; every refusal is a ``DomainError`` (CONTRACT §3)."""
    # Checked first and regardless of headers: a key in a URL is already in someone's logs.
    if any(name.lower() in _QUERY_NAMES for name in request.query_params):
        raise ApiKeyInQuery()
    bearer_key = bearer.credentials if bearer is not None else None
    if header_key and bearer_key and header_key != bearer_key:
        raise AmbiguousApiKey()
    presented = header_key or bearer_key
    if not presented:
        raise MissingApiKey()
    return await runtime.keys.authenticate(session, presented)


ApiKeyDep = Annotated[Principal, Depends(require_api_key)]
# The same caller, named for routes about the customer rather than the key.
CustomerDep = Annotated[Principal, Depends(require_api_key)]
