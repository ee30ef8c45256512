"""Self-service key management: list, create, rotate, revoke; last_used_at."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from meterapi.api.deps import get_key_policy
from meterapi.config import Settings
from meterapi.keys.policy import KeyPolicy
from tests.integration import internals
from tests.integration.keys_support import Seeder, headers

PUBLIC_FIELDS = {
    "id",
    "name",
    "prefix",
    "last4",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
}


async def test_list_shows_public_fields_only(client: httpx.AsyncClient, seed: Seeder) -> None:
    _, key = await seed.customer_with_key()
    response = await client.get("/v1/keys", headers=headers(key))
    assert response.status_code == 200
    [listed] = response.json()["data"]
    assert set(listed) == PUBLIC_FIELDS
    assert listed["prefix"] == key[:12] and listed["last4"] == key[-4:]
    assert key not in response.text and "digest" not in response.text


async def test_create_returns_the_key_once(client: httpx.AsyncClient, seed: Seeder) -> None:
    _, key = await seed.customer_with_key()
    response = await client.post(
        "/v1/keys", headers=headers(key), json={"name": "ci", "expires_at": "2999-01-01T00:00:00Z"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"api_key", "key"} and set(body["key"]) == PUBLIC_FIELDS
    assert body["key"]["name"] == "ci" and body["key"]["expires_at"].startswith("2999-01-01")
    assert (await client.get("/v1/data", headers=headers(body["api_key"]))).status_code == 200
    listing = await client.get("/v1/keys", headers=headers(key))
    assert len(listing.json()["data"]) == 2 and body["api_key"] not in listing.text
    no_body = await client.post("/v1/keys", headers=headers(key))
    assert no_body.status_code == 201 and no_body.json()["key"]["name"] == "default"


async def test_create_refuses_bad_bodies(client: httpx.AsyncClient, seed: Seeder) -> None:
    _, key = await seed.customer_with_key()
    past = await client.post(
        "/v1/keys", headers=headers(key), json={"expires_at": "2001-01-01T00:00:00Z"}
    )
    assert past.status_code == 422 and past.json()["error"]["code"] == "validation_error"
    broken = await client.post(
        "/v1/keys", headers={**headers(key), "Content-Type": "application/json"}, content=b"{"
    )
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "validation_error"
    listing = await client.get("/v1/keys", headers=headers(key))
    assert len(listing.json()["data"]) == 1  # nothing was created


async def test_rotate_keeps_the_old_key_for_the_grace(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, old = await seed.customer_with_key()
    [listed] = (await client.get("/v1/keys", headers=headers(old))).json()["data"]
    rotated = await client.post(f"/v1/keys/{listed['id']}/rotate", headers=headers(old))
    assert rotated.status_code == 201
    new = rotated.json()["api_key"]
    assert (await client.get("/v1/data", headers=headers(old))).status_code == 200
    assert (await client.get("/v1/data", headers=headers(new))).status_code == 200
    # A second rotation with a one-second grace: refused once the grace has passed.
    second = await client.post(
        f"/v1/keys/{listed['id']}/rotate", headers=headers(new), json={"grace_seconds": 1}
    )
    assert second.status_code == 201
    assert (await client.get("/v1/data", headers=headers(old))).status_code == 200
    await asyncio.sleep(1.1)
    late = await client.get("/v1/data", headers=headers(old))
    assert late.status_code == 401 and late.json()["error"]["code"] == "invalid_api_key"


async def test_rotate_with_no_grace_refuses_the_old_key_at_once(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, old = await seed.customer_with_key()
    assert (await client.get("/v1/data", headers=headers(old))).status_code == 200  # cached
    [listed] = (await client.get("/v1/keys", headers=headers(old))).json()["data"]
    rotated = await client.post(
        f"/v1/keys/{listed['id']}/rotate", headers=headers(old), json={"grace_seconds": 0}
    )
    assert rotated.status_code == 201
    assert (await client.get("/v1/data", headers=headers(old))).status_code == 401
    assert (await client.get("/v1/data", headers=headers(rotated.json()["api_key"]))).is_success
    negative = await client.post(
        f"/v1/keys/{listed['id']}/rotate",
        headers=headers(rotated.json()["api_key"]),
        json={"grace_seconds": -1},
    )
    assert negative.status_code == 422


async def test_revoke_takes_effect_on_the_next_request(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    created = (await client.post("/v1/keys", headers=headers(key))).json()
    second = created["api_key"]
    assert (await client.get("/v1/data", headers=headers(second))).status_code == 200  # cached
    response = await client.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
    assert response.status_code == 204 and response.content == b""
    refused = await client.get("/v1/data", headers=headers(second))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    again = await client.delete(f"/v1/keys/{created['key']['id']}", headers=headers(key))
    assert again.status_code == 204
    listing = (await client.get("/v1/keys", headers=headers(key))).json()["data"]
    assert {k["id"]: k["revoked_at"] is not None for k in listing}[created["key"]["id"]]


async def test_the_only_active_key_cannot_be_revoked(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    [listed] = (await client.get("/v1/keys", headers=headers(key))).json()["data"]
    response = await client.delete(f"/v1/keys/{listed['id']}", headers=headers(key))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_active_key"
    assert (await client.get("/v1/data", headers=headers(key))).status_code == 200


async def test_a_key_in_its_rotation_grace_does_not_count_as_another_active_key(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    # The old key ends with its grace and may not manage keys: revoking its successor would
    # leave the customer locked out within the hour, so the successor is the last active key.
    _, old = await seed.customer_with_key()
    [listed] = (await client.get("/v1/keys", headers=headers(old))).json()["data"]
    rotated = (await client.post(f"/v1/keys/{listed['id']}/rotate", headers=headers(old))).json()
    new = rotated["api_key"]
    refused = await client.delete(f"/v1/keys/{rotated['key']['id']}", headers=headers(new))
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "last_active_key"
    assert (await client.get("/v1/data", headers=headers(new))).status_code == 200
    # The old key itself may be revoked early: the successor stays.
    early = await client.delete(f"/v1/keys/{listed['id']}", headers=headers(new))
    assert early.status_code == 204
    assert (await client.get("/v1/data", headers=headers(old))).status_code == 401


async def test_another_customers_key_is_not_found(client: httpx.AsyncClient, seed: Seeder) -> None:
    _, mine = await seed.customer_with_key()
    _, theirs = await seed.customer_with_key(stripe_customer_id="cus_beta")
    created = (await client.post("/v1/keys", headers=headers(theirs))).json()
    their_id = created["key"]["id"]
    for response in (
        await client.delete(f"/v1/keys/{their_id}", headers=headers(mine)),
        await client.post(f"/v1/keys/{their_id}/rotate", headers=headers(mine)),
        await client.delete("/v1/keys/key_doesnotexist", headers=headers(mine)),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.get("/v1/data", headers=headers(created["api_key"]))).status_code == 200
    mine_listed = (await client.get("/v1/keys", headers=headers(mine))).json()["data"]
    assert their_id not in {k["id"] for k in mine_listed}


async def test_last_used_at_is_written_in_the_background(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    [before] = (await client.get("/v1/keys", headers=headers(key))).json()["data"]
    # The request only noted the use; the row is written by the flusher, off the request path.
    assert before["last_used_at"] is None
    assert await internals.flush_last_used(app) == 1
    [after] = (await client.get("/v1/keys", headers=headers(key))).json()["data"]
    assert after["last_used_at"] is not None
    assert await internals.flush_last_used(app) == 0  # debounced: once a minute per key


async def test_a_key_name_with_control_characters_is_refused(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    for name in ("\x00", "tab\there", "bell\x07"):
        response = await client.post("/v1/keys", headers=headers(key), json={"name": name})
        assert response.status_code == 422, name
        assert response.json()["error"]["code"] == "validation_error"
    listed = (await client.get("/v1/keys", headers=headers(key))).json()["data"]
    assert len(listed) == 1  # nothing was created


async def test_a_malformed_key_id_is_refused_before_the_database(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    for path in ("/v1/keys/%00", "/v1/keys/key%20x", "/v1/keys/%00/rotate"):
        if path.endswith("rotate"):
            response = await client.post(path, headers=headers(key), json={})
        else:
            response = await client.delete(path, headers=headers(key))
        assert response.status_code == 422, path
        assert response.json()["error"]["code"] == "validation_error"


async def test_responses_that_can_reveal_a_key_are_not_stored(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, key = await seed.customer_with_key()
    created = await client.post("/v1/keys", headers=headers(key))
    rotated = await client.post(
        f"/v1/keys/{created.json()['key']['id']}/rotate", headers=headers(key)
    )
    assert (created.status_code, rotated.status_code) == (201, 201)
    refused = [
        await client.post("/v1/keys", headers=headers(key), json={"expires_at": "2001-01-01"}),
        await client.post("/v1/keys"),
        await client.post("/v1/keys/key_nope/rotate", headers=headers(key)),
        await client.post("/v1/keys/claim", json={"checkout_session_id": "not a session id"}),
    ]
    assert [r.status_code for r in refused] == [422, 401, 404, 422]
    for response in [created, rotated, *refused]:
        assert response.headers["cache-control"] == "no-store"
    # Only those: a listing reveals no key.
    assert "cache-control" not in (await client.get("/v1/keys", headers=headers(key))).headers


async def test_a_rotated_key_in_its_grace_may_call_and_read_only(
    client: httpx.AsyncClient, seed: Seeder
) -> None:
    _, old = await seed.customer_with_key()
    [listed] = (await client.get("/v1/keys", headers=headers(old))).json()["data"]
    rotated = await client.post(f"/v1/keys/{listed['id']}/rotate", headers=headers(old))
    assert rotated.status_code == 201
    new, new_id = rotated.json()["api_key"], rotated.json()["key"]["id"]
    # Still in its grace: the paid API and the reading routes.
    for path in ("/v1/data", "/v1/keys", "/v1/usage"):
        assert (await client.get(path, headers=headers(old))).status_code == 200, path
    # Everything else is refused: no permanent key, no revoking or rotating its successor.
    refused = [
        await client.post("/v1/keys", headers=headers(old)),
        await client.delete(f"/v1/keys/{new_id}", headers=headers(old)),
        await client.post(f"/v1/keys/{new_id}/rotate", headers=headers(old)),
        await client.post(f"/v1/keys/{listed['id']}/rotate", headers=headers(old)),
        await client.post("/v1/billing/portal", headers=headers(old)),
    ]
    for response in refused:
        assert response.status_code == 403, response.request.url
        assert response.json()["error"]["code"] == "key_rotated"
    assert len((await client.get("/v1/keys", headers=headers(new))).json()["data"]) == 2
    # The successor has every right, and so has a key that merely expires one day.
    expiring = await client.post(
        "/v1/keys", headers=headers(new), json={"expires_at": "2999-01-01T00:00:00Z"}
    )
    assert expiring.status_code == 201
    also = await client.post("/v1/keys", headers=headers(expiring.json()["api_key"]))
    assert also.status_code == 201
    revoke = await client.delete(f"/v1/keys/{also.json()['key']['id']}", headers=headers(new))
    assert revoke.status_code == 204


async def test_a_rotated_key_is_refused_from_a_cold_cache_too(app: FastAPI, seed: Seeder) -> None:
    """The grace is known from the database row, not from the process that rotated."""
    _, old = await seed.customer_with_key()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        [listed] = (await client.get("/v1/keys", headers=headers(old))).json()["data"]
        await client.post(f"/v1/keys/{listed['id']}/rotate", headers=headers(old))
        internals.key_cache(app).clear()
        refused = await client.post("/v1/keys", headers=headers(old))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "key_rotated"
        assert (await client.get("/v1/data", headers=headers(old))).status_code == 200


async def test_routes_take_the_key_policy_as_a_dependency(
    app: FastAPI, client: httpx.AsyncClient, seed: Seeder, settings: Settings
) -> None:
    """``KeyPolicyDep`` is one provider: overriding it changes what every route mints."""
    _, key = await seed.customer_with_key()
    test_mode = await client.post("/v1/keys", headers=headers(key))
    assert test_mode.json()["api_key"].startswith("mk_test_")
    pepper = settings.pepper_bytes()
    app.dependency_overrides[get_key_policy] = lambda: KeyPolicy(pepper=pepper, live=True)
    try:
        live = await client.post("/v1/keys", headers=headers(key))
        rotated = await client.post(
            f"/v1/keys/{test_mode.json()['key']['id']}/rotate", headers=headers(key)
        )
    finally:
        app.dependency_overrides.clear()
    assert live.status_code == rotated.status_code == 201
    assert live.json()["api_key"].startswith("mk_live_")
    assert rotated.json()["api_key"].startswith("mk_live_")
    # Minted under the same pepper, so the service knows the live key.
    assert (
        await client.get("/v1/data", headers=headers(live.json()["api_key"]))
    ).status_code == 200
    again = await client.post("/v1/keys", headers=headers(key))
    assert again.json()["api_key"].startswith("mk_test_")
