"""The key cache: bounds, lifetimes, invalidation and the stale-fill guard."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from meterapi.keys.cache import CustomerEntry, KeyCache, KeyEntry
from meterapi.keys.invalidation import Change
from meterapi.keys.last_used import LastUsedTracker

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _entry(cache: KeyCache, key_id: str, expires_at: datetime | None = None) -> KeyEntry:
    return KeyEntry(
        key_id=key_id,
        customer_id=1,
        expires_at=expires_at,
        valid_until=cache.lifetime(NOW, expires_at),
    )


def test_entries_live_for_the_ttl_but_never_past_expiry() -> None:
    clock = Clock()
    cache = KeyCache(ttl_s=60, clock=clock)
    cache.put_key("d1", _entry(cache, "k1"), generation=0)
    cache.put_key("d2", _entry(cache, "k2", NOW + timedelta(seconds=5)), generation=0)
    clock.t += 6
    assert cache.key("d1") is not None
    assert cache.key("d2") is None
    clock.t += 60
    assert cache.key("d1") is None


def test_keys_misses_and_customers_follow_one_lookup_rule() -> None:
    clock = Clock()
    cache = KeyCache(ttl_s=60, clock=clock)
    cache.put_key("d1", _entry(cache, "k1"), generation=0)
    cache.put_miss("m1", generation=0)
    cache.put_customer(CustomerEntry(1, "cus_1", "active", None, clock() + 60), generation=0)
    cache.trusted_until = clock.t  # the invalidation feed stopped vouching: no answers...
    assert cache.key("d1") is None and not cache.is_known_miss("m1") and cache.customer(1) is None
    cache.trusted_until = math.inf  # ...but nothing was dropped
    assert cache.key("d1") and cache.is_known_miss("m1") and cache.customer(1)
    clock.t += 61  # expired: no answer, and dropped
    assert cache.key("d1") is None and not cache.is_known_miss("m1") and cache.customer(1) is None
    assert repr(cache) == "KeyCache(keys=0, misses=0, customers=0, generation=0)"
    cache.put_key("d2", _entry(cache, "k1"), generation=0)  # the key's id, cached anew
    cache.invalidate(key_ids=["k1"])
    assert cache.key("d2") is None


def test_sizes_are_bounded_least_recently_used_first() -> None:
    cache = KeyCache(max_entries=3)
    for i in range(3):
        cache.put_key(f"d{i}", _entry(cache, f"k{i}"), generation=0)
    assert cache.key("d0") is not None  # now the most recently used
    cache.put_key("d3", _entry(cache, "k3"), generation=0)
    assert cache.key("d1") is None and cache.key("d0") is not None
    for i in range(10):
        cache.put_miss(f"m{i}", generation=0)
    assert [cache.is_known_miss(f"m{i}") for i in range(10)] == [False] * 7 + [True] * 3


def test_a_fill_that_raced_an_invalidation_is_dropped() -> None:
    cache = KeyCache()
    generation = cache.generation
    cache.invalidate(key_ids=["k1"])  # e.g. a revocation committed during the read
    cache.put_key("d1", _entry(cache, "k1"), generation=generation)
    cache.put_miss("d2", generation=generation)
    assert cache.key("d1") is None and not cache.is_known_miss("d2")


def test_invalidation_by_key_and_customer() -> None:
    cache = KeyCache()
    cache.put_key("d1", _entry(cache, "k1"), generation=0)
    cache.put_key("d2", _entry(cache, "k2"), generation=0)
    customer = CustomerEntry(1, "cus_1", "active", None, cache.clock() + 60)
    cache.put_customer(customer, generation=0)
    Change.from_payload(Change(revision=1, key_ids=("k1",), customer_ids=(1,)).payload()).apply(
        cache
    )
    assert cache.key("d1") is None and cache.key("d2") is not None
    assert cache.customer(1) is None


def test_revision_moves_clear_everything_unless_already_applied() -> None:
    cache = KeyCache()
    assert cache.observe_revision(5)
    cache.put_key("d1", _entry(cache, "k1"), generation=cache.generation)
    Change(revision=6, key_ids=("other",)).apply(cache)  # our own change, the very next one
    assert not cache.observe_revision(6)
    assert cache.key("d1") is not None
    assert cache.observe_revision(8)  # someone else's change we did not hear of
    assert cache.key("d1") is None


def test_last_used_is_noted_once_per_key_per_debounce_window() -> None:
    clock = Clock()
    tracker = LastUsedTracker(None, debounce_s=60, clock=clock)  # type: ignore[arg-type]
    tracker.note("k1", NOW)
    tracker.note("k1", NOW + timedelta(seconds=1))
    assert tracker._pending == {"k1": NOW}
    tracker._pending.clear()
    clock.t += 61
    tracker.note("k1", NOW + timedelta(seconds=61))
    assert tracker._pending == {"k1": NOW + timedelta(seconds=61)}
