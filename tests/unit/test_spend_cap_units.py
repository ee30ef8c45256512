"""A cap in minor units as a number of units: the fewest whose rounded spend reaches it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterapi.metering.spend import cap_units, margin, spend_of


@pytest.mark.parametrize("unit_amount", ["0.5", "1", "3", "0.001", "0.333333", "2.5", "12"])
def test_cap_units_is_the_first_unit_count_reaching_the_cap(unit_amount: str) -> None:
    amount = Decimal(unit_amount)
    for cap in [*range(0, 300), 10**6 + 7, 10**12 + 1]:
        n = cap_units(cap, amount)
        assert n is not None
        assert spend_of(n, amount) >= cap
        assert n == 0 or spend_of(n - 1, amount) < cap


def test_a_free_price_never_reaches_a_positive_cap() -> None:
    assert cap_units(1, Decimal(0)) is None
    assert cap_units(0, Decimal(0)) == 0


def test_rounding_as_an_invoice_line() -> None:
    # 19 units at half a cent: 9.5, which an invoice line rounds to 10.
    assert cap_units(10, Decimal("0.5")) == 19


def test_margin_is_a_fifth_of_the_cap_and_at_least_a_hundred_units() -> None:
    assert margin(10) == 100 and margin(1000) == 200 and margin(1999) == 399
