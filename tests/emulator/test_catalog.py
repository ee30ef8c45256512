"""Customers, products and prices."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from .conftest import Catalog


async def test_customer_lifecycle(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async(
        params={"email": "c@example.com", "metadata": {"plan": "pro"}}
    )
    assert isinstance(customer, stripe.Customer)
    assert customer.id.startswith("cus_") and customer.livemode is False
    updated = await client.v1.customers.update_async(
        customer.id, params={"name": "C", "metadata": {"plan": "", "team": "x"}}
    )
    assert updated.name == "C" and updated.metadata.to_dict() == {"team": "x"}
    found = await client.v1.customers.list_async(params={"email": "c@example.com"})
    assert [c.id for c in found.data] == [customer.id]
    deleted = await client.v1.customers.delete_async(customer.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.customers.retrieve_async(customer.id)
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    assert caught.value.user_message == f"No such customer: '{customer.id}'"


async def test_list_pagination(client: stripe.StripeClient) -> None:
    ids = [(await client.v1.customers.create_async()).id for _ in range(5)]
    page = await client.v1.customers.list_async(params={"limit": 2})
    assert [c.id for c in page.data] == ids[::-1][:2] and page.has_more
    rest = await client.v1.customers.list_async(
        params={"limit": 10, "starting_after": page.data[-1].id}
    )
    assert [c.id for c in rest.data] == ids[::-1][2:] and not rest.has_more


async def test_metered_price_shape(client: stripe.StripeClient, catalog: Catalog) -> None:
    price = await client.v1.prices.retrieve_async(catalog.price.id, params={"expand": ["product"]})
    assert isinstance(price, stripe.Price)
    assert price.type == "recurring" and price.unit_amount is None
    assert price.unit_amount_decimal == Decimal("0.5")
    assert price.recurring is not None
    assert price.recurring.usage_type == "metered" and price.recurring.meter == catalog.meter.id
    assert isinstance(price.product, stripe.Product) and price.product.name == "API requests"


async def test_metered_price_needs_a_meter(client: stripe.StripeClient) -> None:
    product = await client.v1.products.create_async(params={"name": "P"})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await client.v1.prices.create_async(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product": product.id,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert caught.value.param == "recurring[meter]"


async def test_lookup_keys(client: stripe.StripeClient, catalog: Catalog) -> None:
    price = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 100,
            "product": catalog.price.product,  # type: ignore[typeddict-item]
            "lookup_key": "basic",
        }
    )
    found = await client.v1.prices.list_async(params={"lookup_keys": ["basic"]})
    assert [p.id for p in found.data] == [price.id]
    with pytest.raises(stripe.InvalidRequestError):
        await client.v1.prices.create_async(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "product_data": {"name": "x"},
                "lookup_key": "basic",
            }
        )
