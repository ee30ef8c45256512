"""A small in-process metrics registry, rendered in Prometheus' text format at ``/metrics``.

Counters and histograms only, labelled by a few fixed names; nothing here does I/O.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Labels = tuple[tuple[str, str], ...]


def _render_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self._values:
            yield f"{self.name} 0"
        for labels, value in sorted(self._values.items()):
            yield f"{self.name}{_render_labels(labels)} {value:g}"


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[key] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self._counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket_labels = _render_labels(labels, 'le="' + le + '"')
                yield f"{self.name}_bucket{bucket_labels} {running}"
            yield f"{self.name}_sum{_render_labels(labels)} {self._sums[labels]:g}"
            yield f"{self.name}_count{_render_labels(labels)} {running}"


class Gauge:
    """A value read when scraped (e.g. pending units, which live in the database)."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.value = 0.0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {self.value:g}"


class Registry:
    def __init__(self) -> None:
        self._metrics: list[Counter | Histogram | Gauge] = []

    def counter(self, name: str, help_text: str) -> Counter:
        metric = Counter(name, help_text)
        self._metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str) -> Histogram:
        metric = Histogram(name, help_text)
        self._metrics.append(metric)
        return metric

    def gauge(self, name: str, help_text: str) -> Gauge:
        metric = Gauge(name, help_text)
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class Metrics:
    """The service's metrics, one set per process."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.auth_outcomes = r.counter(
            "meterapi_auth_outcomes_total", "API key checks by outcome (ok or an error code)."
        )
        self.request_latency = r.histogram(
            "meterapi_request_duration_seconds", "Request latency by route template."
        )
        self.units_recorded = r.counter(
            "meterapi_usage_units_recorded_total", "Billable units written to the ledger."
        )
        self.reports_sent = r.counter(
            "meterapi_usage_reports_sent_total", "Meter events Stripe acknowledged."
        )
        self.reports_failed = r.counter(
            "meterapi_usage_reports_failed_total", "Meter event sends to retry later."
        )
        self.reports_parked = r.counter(
            "meterapi_usage_reports_parked_total", "Meter events parked for an operator."
        )
        self.pending_units = r.gauge(
            "meterapi_usage_pending_units", "Units in the ledger not yet acknowledged by Stripe."
        )
        self.oldest_unreported_age = r.gauge(
            "meterapi_usage_oldest_unreported_age_seconds",
            "Age of the oldest unacknowledged usage (0 when none).",
        )
        self.webhook_events = r.counter(
            "meterapi_webhook_events_total", "Stripe webhook deliveries by outcome."
        )
        self.outbound_deliveries = r.counter(
            "meterapi_outbound_webhook_deliveries_total",
            "Outbound webhook attempts by outcome (delivered, retry, failed, gone).",
        )
        self.parked_reports = r.gauge(
            "meterapi_usage_parked_reports", "Meter events waiting for an operator."
        )
