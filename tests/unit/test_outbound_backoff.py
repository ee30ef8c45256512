"""The outbound retry schedule (CONTRACT §8): the first retry within 10 s, then doubling up to an
hour between tries, for up to three days."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meterapi.outbound.delivery import FIRST_RETRY_S, MAX_BACKOFF_S, backoff_s
from meterapi.outbound.outbox import DELIVERY_WINDOW


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_first_retry_comes_within_ten_seconds(rand: float) -> None:
    assert 0 < backoff_s(1, rand=lambda: rand) <= 10


def test_steps_double_up_to_an_hour() -> None:
    top = [backoff_s(n, rand=lambda: 1.0) for n in range(1, 16)]
    assert top[:4] == [FIRST_RETRY_S, 2 * FIRST_RETRY_S, 4 * FIRST_RETRY_S, 8 * FIRST_RETRY_S]
    assert max(top) == MAX_BACKOFF_S == 3600
    assert top == sorted(top)
    assert backoff_s(10_000, rand=lambda: 1.0) == MAX_BACKOFF_S  # no overflow after many tries


def test_jitter_stays_within_a_quarter_below_the_step() -> None:
    for attempts in (1, 3, 12):
        low, high = backoff_s(attempts, rand=lambda: 0.0), backoff_s(attempts, rand=lambda: 1.0)
        assert low == pytest.approx(0.75 * high)
        assert low <= backoff_s(attempts) <= high


def test_the_schedule_spans_three_days_in_hour_steps_at_most() -> None:
    """Following the schedule (with the lowest jitter, i.e. the most tries), the last try before
    the window closes is within three days, and no gap exceeds an hour."""
    elapsed, attempts, gaps = 0.0, 1, []
    window = DELIVERY_WINDOW.total_seconds()
    while True:
        wait = backoff_s(attempts, rand=lambda: 0.0)
        if elapsed + wait > window:
            break
        elapsed += wait
        gaps.append(wait)
        attempts += 1
    assert max(gaps) <= 3600
    assert window - 3600 <= elapsed <= window
    assert timedelta(days=3) == DELIVERY_WINDOW
    assert 70 <= attempts <= 110  # about one try an hour for three days
