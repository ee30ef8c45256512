"""The customer's own keys: list, create, rotate, revoke (authenticated with one of them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel.ext.asyncio.session import AsyncSession

from meterapi.api.bodies import RequestBody
from meterapi.api.deps import (
    CustomerDep,
    CustomerReadDep,
    KeyGuardDep,
    KeyPolicyDep,
    SessionDep,
)
from meterapi.api.responses import (
    KEY_REFUSED,
    KEY_ROTATED,
    SUBSCRIPTION_INACTIVE,
    Descriptions,
    responses,
)
from meterapi.db import commit_before_announcing
from meterapi.keys import service
from meterapi.keys.guard import KeyGuard
from meterapi.models import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_READING: Descriptions = {**KEY_REFUSED, **SUBSCRIPTION_INACTIVE}
_MANAGING: Descriptions = {**_READING, **KEY_ROTATED}


class KeyPublic(BaseModel):
    """A key as listings show it: never the key itself, never its hash."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    last4: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyList(BaseModel):
    data: list[KeyPublic]


# Key ids are ``key_`` and letters and digits; other text cannot name a key (and a NUL byte
# would reach PostgreSQL, which refuses it).
KeyIdPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_]{1,40}$", description="The key's id (key_…).")
]


class KeyCreated(BaseModel):
    """The new key's plaintext (shown this once only) and its public description."""

    api_key: str = Field(description="The key itself. Store it now: it is never shown again.")
    key: KeyPublic

    @classmethod
    def of(cls, key: ApiKey, plaintext: str) -> KeyCreated:
        return cls(api_key=plaintext, key=KeyPublic.model_validate(key))


class KeyCreate(RequestBody):
    # No control characters: PostgreSQL refuses NUL in text, and none belongs in a label.
    name: str = Field(
        default="default", min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"
    )
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working; a time without zone is UTC."
    )

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            # 9999-12-31T23:59:59-14:00 is a valid input whose UTC time is past year 9999.
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None


class KeyRotate(RequestBody):
    grace_seconds: int = Field(
        default=service.DEFAULT_GRACE_SECONDS,
        ge=0,
        le=30 * 86_400,
        description="How long the old key keeps working; 0 expires it now.",
    )


@router.get(
    "",
    summary="List your keys, revoked and expired ones included",
    response_model=KeyList,
    responses=responses(_READING),
)
async def list_keys(caller: CustomerReadDep, session: SessionDep) -> KeyList:
    keys = await service.list_keys(session, customer_id=caller.customer_id)
    return KeyList(data=[KeyPublic.model_validate(k) for k in keys])


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create another key; its plaintext is in this response only",
    responses=responses(_MANAGING, {422: "Malformed body, or expires_at in the past"}),
)
async def create_key(
    caller: CustomerDep,
    session: SessionDep,
    policy: KeyPolicyDep,
    body: Annotated[KeyCreate | None, Body()] = None,
) -> KeyCreated:
    body = body or KeyCreate()
    key, plaintext = await service.issue(
        session,
        customer_id=caller.customer_id,
        name=body.name,
        expires_at=body.expires_at,
        policy=policy,
    )
    return KeyCreated.of(key, plaintext)


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=KeyCreated,
    summary="Replace a key; the old one keeps working for grace_seconds (default 3600)",
    responses=responses(_MANAGING, {404: "No active key of yours with this id"}),
)
async def rotate_key(
    key_id: KeyIdPath,
    caller: CustomerDep,
    session: SessionDep,
    policy: KeyPolicyDep,
    keys: KeyGuardDep,
    body: Annotated[KeyRotate | None, Body()] = None,
) -> KeyCreated:
    body = body or KeyRotate()
    key, plaintext = await service.rotate(
        session,
        customer_id=caller.customer_id,
        key_id=key_id,
        grace_seconds=body.grace_seconds,
        policy=policy,
    )
    if body.grace_seconds == 0:  # the old key ends now, as if revoked: everywhere, then answer
        await commit_before_announcing(session)
        await keys.propagate()
    return KeyCreated.of(key, plaintext)


@router.delete(
    "/{key_id}",
    status_code=204,
    summary="Revoke a key now, in every worker and replica",
    responses=responses(
        _MANAGING,
        {
            404: "No key of yours with this id",
            409: "Your only active key: rotate it instead (grace_seconds: 0)",
        },
    ),
)
async def revoke_key(
    key_id: KeyIdPath, caller: CustomerDep, session: SessionDep, keys: KeyGuardDep
) -> Response:
    await revoke_everywhere(session, keys, key_id=key_id, customer_id=caller.customer_id)
    return Response(status_code=204)


async def revoke_everywhere(
    session: AsyncSession,
    keys: KeyGuard,
    *,
    key_id: str,
    customer_id: int | None,
    allow_last: bool = False,
) -> None:
    """Revoke, commit, and return once no worker or replica serves the key (CONTRACT §3): the
    customer's ``DELETE /v1/keys/{id}`` and the operator's revoke alike."""
    await service.revoke(session, key_id=key_id, customer_id=customer_id, allow_last=allow_last)
    await commit_before_announcing(session)
    await keys.propagate()
