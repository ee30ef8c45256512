"""``Usage.charge``: what a paid route may charge, refused at the call site."""

from __future__ import annotations

import pytest

from meterapi.api.paid import MAX_CHARGE, MAX_REQUEST_UNITS, Caller, UsageMeter
from meterapi.metering.ledger import MAX_ROW_UNITS, Usage, merge
from meterapi.models import utcnow

CALLER = Caller(customer_id="cus_1", key_id="key_1", key_name="default", customer_pk=1)


def meter() -> UsageMeter:
    m = UsageMeter()
    m.caller = CALLER
    return m


def test_charges_add_up() -> None:
    m = meter()
    m.charge(3)
    m.charge(0)
    m.charge(MAX_CHARGE)
    assert m.units == 3 + MAX_CHARGE


@pytest.mark.parametrize("units", [1.0, 1.5, "3", None, True, False])
def test_only_ints(units: object) -> None:
    with pytest.raises(TypeError, match="int"):
        meter().charge(units)  # type: ignore[arg-type]


@pytest.mark.parametrize("units", [-1, MAX_CHARGE + 1, 10**30])
def test_no_negative_or_absurd_units(units: int) -> None:
    m = meter()
    with pytest.raises(ValueError, match="units"):
        m.charge(units)
    assert m.units == 0


def test_a_request_total_fits_a_ledger_row() -> None:
    m = meter()
    m.charge(MAX_CHARGE)
    m.charge(MAX_CHARGE)
    with pytest.raises(ValueError, match=str(MAX_REQUEST_UNITS)):
        m.charge(MAX_CHARGE)
    assert m.units == 2 * MAX_CHARGE


def test_no_charge_without_a_caller_or_after_the_response_started() -> None:
    with pytest.raises(RuntimeError, match="PaidCaller"):
        UsageMeter().charge(1)
    m = meter()
    m.sealed = True
    with pytest.raises(RuntimeError, match="started"):
        m.charge(1)


def test_merging_never_overflows_a_row() -> None:
    now = utcnow()
    usages = [Usage(1, "k", "/r", MAX_CHARGE, now) for _ in range(5)]
    merged = merge(usages)
    assert sum(u.units for u in merged) == 5 * MAX_CHARGE
    assert all(u.units <= MAX_ROW_UNITS for u in merged)
    assert len(merged) == 3
