"""A cap in minor units as a number of units: the fewest whose rounded spend reaches it; the
customer's rate the far-from-the-cap check extrapolates with."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from meterapi.metering.spend import Tally, _rate, cap_units, margin, spend_of
from meterapi.metering.usage import Period, UsageTotals


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


def test_the_rate_rises_at_once_and_falls_by_half_at_most() -> None:
    period = Period(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))

    def read(units: int) -> UsageTotals:
        return UsageTotals(period, units, 0, [])

    def tally(rate: float | None, at: float, units: int) -> Tally:
        return Tally(period, units, 0, 0, at, rate, at, units)

    assert _rate(None, read(10), 0.0) == (None, 0.0, 10)  # a first read: not known
    assert _rate(tally(None, 0.0, 10), read(110), 1.0) == (100.0, 1.0, 110)
    assert _rate(tally(100.0, 1.0, 110), read(120), 1.2) == (100.0, 1.0, 110)  # too soon
    assert _rate(tally(100.0, 1.0, 110), read(110), 2.0) == (50.0, 2.0, 110)  # a stall: half
    assert _rate(tally(50.0, 2.0, 110), read(510), 3.0) == (400.0, 3.0, 510)  # back: at once
    assert _rate(tally(400.0, 3.0, 510), read(510), 9.0) == (None, 9.0, 510)  # a long pause
