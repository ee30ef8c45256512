"""The service's metrics, rendered by ``prometheus-client`` in Prometheus' text format.

Counters and histograms live in ``prometheus-client``. With several worker processes
(``meterapi serve --workers N``) it runs in its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``
is set before the workers start, each worker writes its figures there, and ``/metrics``, in
whichever worker answers, adds up every worker's. Without it, one process counts alone.

Gauges here are read from the database when scraped (pending units…): they are the service's
whole state already, so they are reported as they are, never summed across workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    """Where workers share their figures, when several serve together."""
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


class Counter:
    """A counter; label names are declared up front, their values given to ``inc``."""

    def __init__(
        self, name: str, help_text: str, registry: CollectorRegistry, labels: Sequence[str] = ()
    ) -> None:
        self.name, self.help = name, help_text
        self._registry = registry
        self._counter = prometheus_client.Counter(
            name, help_text, labelnames=tuple(labels), registry=registry
        )
        self._children = _Children(self._counter)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._children.of(labels) if labels else self._counter).inc(amount)

    def value(self, **labels: str) -> float:
        """This process's count (tests and diagnostics)."""
        return self._registry.get_sample_value(self.name, labels) or 0.0


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        registry: CollectorRegistry,
        labels: Sequence[str] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS_S,
    ) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self._histogram = prometheus_client.Histogram(
            name, help_text, labelnames=tuple(labels), registry=registry, buckets=buckets
        )
        self._children = _Children(self._histogram)

    def observe(self, value: float, **labels: str) -> None:
        (self._children.of(labels) if labels else self._histogram).observe(value)


class _Children:
    """A labelled metric's child per label values, found once: ``prometheus-client``'s
    ``labels()`` checks the names and takes a lock on every call, over twice the cost of the
    increment itself, on every request. Keyed by the labels as given (names and values in
    the caller's order), so a key never names another child; the values are as bounded as
    the metric's own children (route templates, status codes, error codes)."""

    def __init__(self, metric: prometheus_client.Counter | prometheus_client.Histogram) -> None:
        self._metric = metric
        self._found: dict[tuple[tuple[str, str], ...], Any] = {}

    def of(self, labels: dict[str, str]) -> Any:
        key = tuple(labels.items())
        child = self._found.get(key)
        if child is None:
            child = self._found[key] = self._metric.labels(**labels)
        return child


class Gauge:
    """A value read when scraped (e.g. pending units, which live in the database)."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.value = 0.0


class _Gauges(Collector):
    """Reports the scraped gauges as they are (not per process, not summed)."""

    def __init__(self, gauges: list[Gauge]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for gauge in self.gauges:
            yield GaugeMetricFamily(gauge.name, gauge.help, value=gauge.value)


class Registry:
    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self._gauges: list[Gauge] = []
        self._gauge_collector = _Gauges(self._gauges)
        self._registry.register(self._gauge_collector)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, help_text, self._registry, labels)

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Histogram:
        return Histogram(name, help_text, self._registry, labels)

    def gauge(self, name: str, help_text: str) -> Gauge:
        metric = Gauge(name, help_text)
        self._gauges.append(metric)
        return metric

    def render(self) -> str:
        """The text format: every worker's counters and histograms when several serve."""
        shared = multiprocess_dir()
        if shared is None:
            return generate_latest(self._registry).decode()
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=shared)  # type: ignore[no-untyped-call]
        combined.register(self._gauge_collector)
        return generate_latest(combined).decode()


class Metrics:
    """The service's metrics, one set per process."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.auth_outcomes = r.counter(
            "meterapi_auth_outcomes_total",
            "API key checks by outcome (ok or an error code).",
            labels=("code",),
        )
        self.request_latency = r.histogram(
            "meterapi_request_duration_seconds",
            "Request latency by route template.",
            labels=("route", "status"),
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
            "meterapi_webhook_events_total",
            "Stripe webhook deliveries by outcome.",
            labels=("outcome",),
        )
        self.outbound_deliveries = r.counter(
            "meterapi_outbound_webhook_deliveries_total",
            "Outbound webhook attempts by outcome (delivered, retry, failed, gone).",
            labels=("outcome",),
        )
        self.rate_limit_unchecked = r.counter(
            "meterapi_rate_limit_unchecked_total",
            "Paid requests let through without their own rate-limit count: Redis's reply came "
            "after the timeout (late; the count still lands), Redis failed (error), or was "
            "being left alone after a failure (backoff).",
            labels=("reason",),
        )
        self.parked_reports = r.gauge(
            "meterapi_usage_parked_reports", "Meter events waiting for an operator."
        )
