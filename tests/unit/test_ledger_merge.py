"""How a committed batch folds its usage into ledger rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from meterapi.metering.ledger import Usage, merge

T = datetime(2026, 11, 25, 10, 0, 10, tzinfo=UTC)


def at(second: int, minute: int = 0) -> datetime:
    return T.replace(minute=minute, second=second)


def test_same_customer_key_route_and_minute_fold_into_one_row() -> None:
    usages = [
        Usage(1, "key_a", "/v1/data", 1, at(10)),
        Usage(1, "key_a", "/v1/data", 2, at(40)),
        Usage(1, "key_a", "/v1/data", 1, at(20)),
    ]
    assert merge(usages) == [Usage(1, "key_a", "/v1/data", 4, at(40))]


def test_rows_differing_in_any_part_stay_apart() -> None:
    usages = [
        Usage(1, "key_a", "/v1/data", 1, at(10)),
        Usage(2, "key_a", "/v1/data", 1, at(10)),  # another customer
        Usage(1, "key_b", "/v1/data", 1, at(10)),  # another key
        Usage(1, "key_a", "/v1/other", 1, at(10)),  # another route
        Usage(1, "key_a", "/v1/data", 1, at(0, minute=1)),  # the next minute
        Usage(1, "key_a", "/v1/data", 1, at(59)),  # same minute as the first
    ]
    merged = merge(usages)
    assert sorted(
        (u.customer_id, u.api_key_id, u.route, u.units, u.occurred_at) for u in merged
    ) == [
        (1, "key_a", "/v1/data", 1, at(0, minute=1)),
        (1, "key_a", "/v1/data", 2, at(59)),
        (1, "key_a", "/v1/other", 1, at(10)),
        (1, "key_b", "/v1/data", 1, at(10)),
        (2, "key_a", "/v1/data", 1, at(10)),
    ]
    assert sum(u.units for u in merged) == sum(u.units for u in usages)


def test_a_single_usage_is_its_own_row() -> None:
    usage = Usage(1, "key_a", "/v1/data", 3, at(5))
    assert merge([usage]) == [usage]


def test_the_minute_is_the_utc_minute_whatever_the_offset_given() -> None:
    plus_one = timezone(timedelta(hours=1))
    usages = [
        Usage(1, "key_a", "/v1/data", 1, at(10)),
        Usage(1, "key_a", "/v1/data", 2, at(30).astimezone(plus_one)),  # the same UTC minute
    ]
    merged = merge(usages)
    assert [(u.units, u.occurred_at) for u in merged] == [(3, at(30))]
