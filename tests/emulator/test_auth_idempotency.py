"""Authentication, Request-Id, unknown URLs and Idempotency-Key replay."""

from __future__ import annotations

import httpx
import pytest
import stripe

from meterapi.stripe_emulator import EmulatorServer

from .conftest import MakeClient


@pytest.mark.parametrize("key", ["sk_live_123456789", "rk_test_123456789", "sk_test_"])
async def test_keys_other_than_sk_test_get_401(make_client: MakeClient, key: str) -> None:
    client = make_client(api_key=key)
    with pytest.raises(stripe.AuthenticationError) as caught:
        await client.v1.customers.list_async()
    assert caught.value.http_status == 401
    assert caught.value.error is not None
    assert caught.value.error.type == "invalid_request_error"
    assert caught.value.user_message is not None
    assert caught.value.user_message.startswith("Invalid API Key provided")


async def test_missing_key_is_401_with_stripe_error_shape(
    emulator: EmulatorServer, web: httpx.AsyncClient
) -> None:
    response = await web.get(emulator.url + "/v1/customers")
    assert response.status_code == 401
    assert response.headers["request-id"].startswith("req_")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "did not provide an API key" in response.json()["error"]["message"]


async def test_any_sk_test_key_and_stripe_version_are_accepted(
    emulator: EmulatorServer, web: httpx.AsyncClient
) -> None:
    response = await web.post(
        emulator.url + "/v1/customers",
        data={"email": "x@example.com", "metadata[a]": "1"},
        headers={"Authorization": "Bearer sk_test_anything", "Stripe-Version": "2026-10-28.endive"},
    )
    assert response.status_code == 200
    assert response.json()["metadata"] == {"a": "1"}
    assert response.headers["request-id"].startswith("req_")
    assert (
        response.headers["request-id"]
        != (await web.get(emulator.url + "/v1/customers", auth=("sk_test_basic", ""))).headers[
            "request-id"
        ]
    )


async def test_unknown_url_is_404_invalid_request(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.raw_request_async("get", "/v1/nothing_here")
    assert caught.value.http_status == 404
    assert "Unrecognized request URL" in str(caught.value.user_message)


async def test_same_key_same_params_replays_the_saved_response(
    client: stripe.StripeClient,
) -> None:
    first = await client.v1.customers.create_async(
        params={"email": "a@example.com"}, options={"idempotency_key": "idem-1"}
    )
    second = await client.v1.customers.create_async(
        params={"email": "a@example.com"}, options={"idempotency_key": "idem-1"}
    )
    assert second.id == first.id
    assert second.last_response is not None
    assert second.last_response.headers.get("idempotent-replayed") == "true"
    assert first.last_response is not None
    assert "idempotent-replayed" not in first.last_response.headers
    listed = await client.v1.customers.list_async()
    assert len(listed.data) == 1


async def test_same_key_other_params_is_an_idempotency_error(
    client: stripe.StripeClient,
) -> None:
    await client.v1.customers.create_async(
        params={"email": "a@example.com"}, options={"idempotency_key": "idem-2"}
    )
    with pytest.raises(stripe.IdempotencyError) as caught:
        await client.v1.customers.create_async(
            params={"email": "b@example.com"}, options={"idempotency_key": "idem-2"}
        )
    assert caught.value.http_status == 400
    assert "same parameters" in str(caught.value.user_message)


async def test_refused_request_is_not_saved_under_its_key(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.products.create_async(params={}, options={"idempotency_key": "idem-3"})  # type: ignore[typeddict-item]
    product = await client.v1.products.create_async(
        params={"name": "ok"}, options={"idempotency_key": "idem-3"}
    )
    assert product.name == "ok"
