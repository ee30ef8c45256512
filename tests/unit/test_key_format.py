"""The key format, its checksum, the keyed hash and the access policy: no I/O."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterapi.config import Settings
from meterapi.errors import InvalidApiKey
from meterapi.keys import access_policy, hashing
from meterapi.keys import format as key_format
from meterapi.keys.cache import KeyCache
from meterapi.keys.guard import KeyGuard
from meterapi.keys.policy import KeyPolicy


def test_generated_keys_have_the_documented_shape() -> None:
    test_key = key_format.generate(live=False)
    live_key = key_format.generate(live=True)
    assert test_key.startswith("mk_test_") and live_key.startswith("mk_live_")
    for key in (test_key, live_key):
        assert len(key) == key_format.KEY_LENGTH == 46
        assert set(key[8:]) <= set(string.ascii_letters + string.digits)
        assert key_format.looks_valid(key)
    assert key_format.RANDOM_LENGTH * 5.954 >= 128  # log2(62) ≈ 5.954 bits per character


def test_keys_are_distinct() -> None:
    assert len({key_format.generate(live=False) for _ in range(2000)}) == 2000


def test_every_one_character_typo_is_refused() -> None:
    key = key_format.generate(live=False)
    for position in range(len(key)):
        for replacement in "0aZ_":
            if key[position] == replacement:
                continue
            typo = key[:position] + replacement + key[position + 1 :]
            assert not key_format.looks_valid(typo), (position, replacement)


def test_swapped_neighbours_are_refused() -> None:
    key = key_format.generate(live=False)
    for i in range(len(key) - 1):
        if key[i] != key[i + 1]:
            swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
            assert not key_format.looks_valid(swapped)


@pytest.mark.parametrize(
    "text",
    ["", "mk_test_", "sk_test_" + "a" * 38, "mk_prod_" + "a" * 38, "x" * 10_000, "mk_test_é" * 5],
)
def test_malformed_strings_are_refused(text: str) -> None:
    assert not key_format.looks_valid(text)
    assert key_format.parse(text) is None


def test_parse_shows_no_secret_in_repr() -> None:
    key = key_format.generate(live=True)
    parsed = key_format.parse(key)
    assert parsed is not None and parsed.live and parsed.last4 == key[-4:]
    assert parsed.prefix == key[:12]
    assert key not in repr(parsed) and key[12:-4] not in repr(parsed)


@pytest.mark.parametrize(
    ("stripe_key", "live"),
    [
        (None, False),
        ("sk_test_x", False),
        ("rk_test_x", False),
        ("sk_live_x", True),
        ("rk_live_x", True),
    ],
)
def test_live_keys_follow_the_stripe_key(stripe_key: str | None, live: bool) -> None:
    assert key_format.is_live_stripe_key(stripe_key) is live


def test_the_key_policy_follows_the_settings_and_hides_the_pepper() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="sqlite+aiosqlite://",
        stripe_secret_key="sk_live_x",
        stripe_webhook_secret="whsec_x",
        key_pepper="pepper-" + "x" * 40,
    )
    policy = KeyPolicy.from_settings(settings)
    assert policy.live and policy.pepper == settings.pepper_bytes()
    assert "pepper-" not in repr(policy)
    assert policy.digest("mk_test_x") == hashing.digest("mk_test_x", pepper=policy.pepper)


def test_digest_is_keyed() -> None:
    key = key_format.generate(live=False)
    one = hashing.digest(key, pepper=b"one")
    assert one == hashing.digest(key, pepper=b"one")
    assert one != hashing.digest(key, pepper=b"two")
    assert len(one) == 64 and key not in one
    assert hashing.same_digest(one, one) and not hashing.same_digest(one, "0" * 64)


class _NoDatabase:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the database was touched ({name})")


@pytest.mark.parametrize("mangle", [lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), str.upper])
async def test_a_typo_is_refused_without_the_database(mangle: Any) -> None:
    typo = mangle(key_format.generate(live=False))
    nothing: Any = _NoDatabase()
    guard = KeyGuard(
        policy=KeyPolicy(pepper=b"p", live=False),
        past_due_grace_s=0,
        cache=KeyCache(),  # trusted: nobody invalidates it
        invalidator=nothing,
        last_used=nothing,
        sessionmaker=nothing,
        engine=nothing,
    )
    with pytest.raises(InvalidApiKey):
        await guard.authenticate(typo)


NOW = datetime(2030, 1, 1, tzinfo=UTC)


class _State:
    def __init__(self, status: str | None, since: datetime | None = None) -> None:
        self.subscription_status = status
        self.past_due_since = since


@pytest.mark.parametrize(
    ("status", "since", "grace", "allowed"),
    [
        ("active", None, 0, True),
        ("trialing", None, 0, True),
        ("past_due", NOW - timedelta(seconds=10), 0, False),
        ("past_due", NOW - timedelta(seconds=10), 60, True),
        ("past_due", NOW - timedelta(seconds=61), 60, False),
        ("past_due", None, 60, False),
        ("unpaid", None, 60, False),
        ("canceled", None, 60, False),
        ("paused", None, 60, False),
        ("incomplete", None, 60, False),
        ("incomplete_expired", None, 60, False),
        (None, None, 60, False),
    ],
)
def test_access_policy(
    status: str | None, since: datetime | None, grace: int, allowed: bool
) -> None:
    assert access_policy.allows(_State(status, since), NOW, grace) is allowed
