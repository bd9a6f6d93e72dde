"""Prometheus metrics, one registry per app (no module-level globals).

prometheus-client does the exposition format and histogram bucketing; writing our own
would only re-derive its text format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Callback(Collector):
    """Gauges read at scrape time (spool depth per store, quarantine size)."""

    def __init__(self, fn: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._fn()


class Metrics:
    """Every metric possync exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "possync_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "possync_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.records = Counter(
            "possync_records", "Records by source and outcome", ["source", "outcome"], registry=r
        )
        self.window_commits = Counter(
            "possync_window_commits", "Store-window commits by result", ["result"], registry=r
        )
        self.committed = Counter(
            "possync_sales_committed", "Sales committed to the sink", registry=r
        )
        self.quarantined = Counter(
            "possync_sales_quarantined", "Sales moved to quarantine", registry=r
        )
        self.triggers = Counter(
            "possync_trigger_events", "Trigger events written / delivered", ["stage"], registry=r
        )
        self.commit_seconds = Histogram(
            "possync_window_commit_seconds",
            "Duration of one store-window commit",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        self.sink_errors = Counter(
            "possync_sink_errors", "Sink failures by retriable", ["retriable"], registry=r
        )
        self.spool_pending = Gauge(
            "possync_spool_pending_total", "Pending spooled records, all stores", registry=r
        )

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """The labelled child of a metric, cached (labels() takes a lock on every call)."""
        key = (id(metric), labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*labels)
        return got

    def add_collector(self, fn: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Register a scrape-time collector."""
        self.registry.register(_Callback(fn))

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)
