"""Prometheus metrics, one registry per app (no module-level globals).

prometheus-client does the exposition format and histogram bucketing; writing our own
would only re-derive its text format.

Names are `possync_<thing>_<unit>`: counters are exposed with `_total`, durations are
`_seconds`, sizes `_bytes`, counts of things name the thing (`_records`). Labels are
bounded: `store` comes from config, `source` from the adapter registry, `type` is a record
type, `reason`/`result`/`operation` are fixed sets in code. Nothing from a payload (sale,
customer, topic text) is ever a label.

Records (intake, per push):

* `possync_records_received_total{source,store,type}`: records read from pushes (before
  dedup: duplicates included), by type customer|product|sale|void. Counted once the push is
  written: a push answered 5xx counts nothing (its retry will). Backfills count in the
  `possync_backfill_*` gauges instead.
* `possync_records_duplicate_total{source,store,type}`: of those, what the sink or spool
  already held at the same or a newer version (or a redelivered webhook). The sink and the
  spool answer one count per write, not per type: when one write mixes two types (a batch
  of customers and products, or sales and voids) the type is `customer+product` /
  `sale+void`.
* `possync_records_rejected_total{source,store}`: payload items that could not be read (an
  unreadable item has no type).
* `possync_records_dropped_total{source,store,reason}`: items the adapter skipped by rule.

Scrape-time collectors read in-memory state only (no SQL per scrape): the spool's pending
counts per store, the MQTT subscriber's state (its families exist only while MQTT is
enabled), the running backfills (0 per store when none runs). Counters and histograms also
carry prometheus-client's `_created` series (the child's creation time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.errors import SinkError
from worker.records import Customer, Product, Record, Sale, Void

if TYPE_CHECKING:
    from worker.buffers.base import Buffer
    from worker.intake import IngestOutcome

RECORD_TYPES = ("customer", "product", "sale", "void")
SINK_OPERATIONS = ("upsert", "lookup", "commit", "deliver")

_GROUP_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_GROUP_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Callback(Collector):
    """Families produced at scrape time by a function."""

    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self._fn = fn

    def collect(self) -> Iterable[Metric]:
        return self._fn()


class MqttStateLike(Protocol):
    """What the MQTT collector reads of `worker.sources.mqtt.MqttState`."""

    connected: bool
    received: int
    acked: int
    rejected: int
    reconnects: int


class MqttSourceLike(Protocol):
    """An MQTT source: its live state object."""

    @property
    def state(self) -> MqttStateLike: ...


class BackfillLike(Protocol):
    """What the backfill collector reads of a running `BackfillRun`."""

    store: str
    records: int
    bytes: int


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
            "possync_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        # -- intake
        self.received = Counter(
            "possync_records_received",
            "Records read from pushes (duplicates included), by source, store and type",
            ["source", "store", "type"],
            registry=r,
        )
        self.duplicates = Counter(
            "possync_records_duplicate",
            "Records the sink or spool already held at the same or a newer version",
            ["source", "store", "type"],
            registry=r,
        )
        self.rejected = Counter(
            "possync_records_rejected",
            "Payload items that could not be read",
            ["source", "store"],
            registry=r,
        )
        self.dropped = Counter(
            "possync_records_dropped",
            "Payload items the adapter skipped by rule, by reason",
            ["source", "store", "reason"],
            registry=r,
        )
        # -- spool group commit
        self.group_records = Histogram(
            "possync_spool_group_size_records",
            "Records written per spool group commit",
            buckets=_GROUP_SIZES,
            registry=r,
        )
        self.group_seconds = Histogram(
            "possync_spool_group_commit_duration_seconds",
            "Duration of one spool group commit (write + fsync)",
            buckets=_GROUP_SECONDS,
            registry=r,
        )
        # -- windows
        self.window_commits = Counter(
            "possync_window_commits",
            "Store-window commits by store and result (ok, error, skipped_paused, skipped_busy, skipped_locked)",
            ["store", "result"],
            registry=r,
        )
        self.window_locked = Counter(
            "possync_window_locked",
            "Store-windows skipped because another instance held the store's window lock",
            ["store"],
            registry=r,
        )
        self.window_seconds = Histogram(
            "possync_window_duration_seconds",
            "Duration of one store-window commit, by result",
            ["result"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        self.committed = Counter(
            "possync_sales_committed",
            "Sales committed to the sink (window and manual), by store",
            ["store"],
            registry=r,
        )
        self.voids = Counter(
            "possync_voids_committed",
            "Voids committed to the sink, by store",
            ["store"],
            registry=r,
        )
        self.quarantined = Counter(
            "possync_sales_quarantined",
            "Spooled records (sales and voids) moved to quarantine, by store",
            ["store"],
            registry=r,
        )
        self.held = Counter(
            "possync_sales_held",
            "Sales held back by a window (customer or original not yet seen), by store",
            ["store"],
            registry=r,
        )
        self.superseded = Counter(
            "possync_sales_superseded",
            "Sale versions a newer version in the same window replaced, by store",
            ["store"],
            registry=r,
        )
        # -- triggers
        self.triggers_emitted = Counter(
            "possync_trigger_events_emitted",
            "Trigger events written to the outbox, by store",
            ["store"],
            registry=r,
        )
        self.triggers_delivered = Counter(
            "possync_trigger_events_delivered",
            "Trigger events delivered from the outbox",
            registry=r,
        )
        self.triggers_skipped = Counter(
            "possync_trigger_events_skipped",
            "Trigger events not written, by store and reason (no_customer: nobody to receive it)",
            ["store", "reason"],
            registry=r,
        )
        # -- sink
        self.sink_errors = Counter(
            "possync_sink_errors",
            "Sink failures by kind (retriable or fatal) and operation",
            ["kind", "operation"],
            registry=r,
        )
        # -- outputs (the outbox, worker.sinks.outbox); `output` is a configured name
        self.outbox_appended = Counter(
            "possync_outbox_appended_events",
            "Events offered to an output's outbox queue (re-appends included), by output, type",
            ["output", "type"],
            registry=r,
        )
        self.outbox_delivered = Counter(
            "possync_outbox_delivered_events",
            "Events an output confirmed, by output",
            ["output"],
            registry=r,
        )
        self.outbox_parked = Counter(
            "possync_outbox_parked_events",
            "Events parked after a fatal output error, by output",
            ["output"],
            registry=r,
        )
        self.outbox_retries = Counter(
            "possync_outbox_retries",
            "Page deliveries retried after a retriable output error, by output",
            ["output"],
            registry=r,
        )

    # ------------------------------------------------------------------ hot path helpers

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """The labelled child of a metric, cached (labels() takes a lock on every call)."""
        key = (id(metric), labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(*labels)
        return got

    def count_push(
        self, source: str, store: str, records: Sequence[Record], outcome: IngestOutcome | None
    ) -> None:
        """Received records by type; duplicates by the type of the write that found them.

        `outcome` None: the whole push was a redelivery (every record a duplicate).
        """
        c, p, s, v = count_types(records)
        child, received, dup = self.child, self.received, self.duplicates
        for kind, n in zip(RECORD_TYPES, (c, p, s, v), strict=True):
            if n:
                child(received, source, store, kind).inc(n)
                if outcome is None:
                    child(dup, source, store, kind).inc(n)
        if outcome is None or not outcome.duplicates:
            return
        if outcome.realtime_duplicates:
            kind = group_type("customer", c, "product", p)
            child(dup, source, store, kind).inc(outcome.realtime_duplicates)
        if outcome.spooled_duplicates:
            kind = group_type("sale", outcome.spooled - v, "void", v)
            child(dup, source, store, kind).inc(outcome.spooled_duplicates)
        manual = outcome.duplicates - outcome.realtime_duplicates - outcome.spooled_duplicates
        if manual:
            child(dup, source, store, "sale").inc(manual)

    def count_page(
        self,
        store: str,
        committed: int,
        voids: int,
        quarantined: int,
        held: int,
        superseded: int,
        triggers: int,
        *,
        skipped: Mapping[str, int],
    ) -> None:
        """One committed window page (or manual commit) of a store."""
        child = self.child
        child(self.committed, store).inc(committed)
        child(self.voids, store).inc(voids)
        child(self.quarantined, store).inc(quarantined)
        child(self.held, store).inc(held)
        child(self.superseded, store).inc(superseded)
        child(self.triggers_emitted, store).inc(triggers)
        for reason, n in skipped.items():
            child(self.triggers_skipped, store, reason).inc(n)

    def sink_error(self, retriable: bool, operation: str) -> None:
        """Count one failed sink call."""
        self.child(self.sink_errors, "retriable" if retriable else "fatal", operation).inc()

    @contextlib.contextmanager
    def sink_call(self, operation: str) -> Iterator[None]:
        """Count a `SinkError` raised inside the block (it propagates unchanged)."""
        try:
            yield
        except SinkError as exc:
            self.sink_error(exc.retriable, operation)
            raise

    def observe_group(self, records: int, seconds: float) -> None:
        """One spool group commit: its size and how long it took."""
        self.group_records.observe(records)
        self.group_seconds.observe(seconds)

    # ------------------------------------------------------------------ scrape-time state

    def add_collector(self, fn: Callable[[], Iterable[Metric]]) -> None:
        """Register a scrape-time collector."""
        self.registry.register(_Callback(fn))

    def watch_spool(self, spool: Buffer, stores: Sequence[str]) -> None:
        """Pending records and bytes per store (the spool's in-memory counts) and group commits."""
        spool.on_group = self.observe_group
        ids = tuple(stores)

        def collect() -> Iterator[Metric]:
            rows = GaugeMetricFamily(
                "possync_spool_pending_records", "Pending spooled records", labels=["store"]
            )
            size = GaugeMetricFamily(
                "possync_spool_pending_bytes", "Pending spooled bytes", labels=["store"]
            )
            for store in ids:
                stats = spool.stats(store)
                rows.add_metric([store], stats.pending)
                size.add_metric([store], stats.bytes)
            yield rows
            yield size

        self.add_collector(collect)

    def watch_mqtt(self, source: MqttSourceLike) -> None:
        """The MQTT subscriber's connection state and message counts."""

        def collect() -> Iterator[Metric]:
            state = source.state
            yield GaugeMetricFamily(
                "possync_mqtt_connected",
                "1 while connected to the broker, else 0",
                value=1 if state.connected else 0,
            )
            for name, text, value in (
                ("received", "PUBLISH packets received (redeliveries included)", state.received),
                ("acked", "PUBACKs sent (only after the records were durable)", state.acked),
                ("rejected", "Messages refused for good (published to rejected/)", state.rejected),
            ):
                yield CounterMetricFamily(f"possync_mqtt_messages_{name}", text, value=value)
            yield CounterMetricFamily(
                "possync_mqtt_reconnects", "Broker reconnections", value=state.reconnects
            )

        self.add_collector(collect)

    def watch_backfills(
        self, running: Callable[[], Iterable[BackfillLike]], stores: Sequence[str]
    ) -> None:
        """Running backfills per store and what they have received so far (0 when none runs)."""
        ids = tuple(stores)

        def collect() -> Iterator[Metric]:
            count = dict.fromkeys(ids, 0)
            records = dict.fromkeys(ids, 0)
            nbytes = dict.fromkeys(ids, 0)
            for run in running():
                count[run.store] = count.get(run.store, 0) + 1
                records[run.store] = records.get(run.store, 0) + run.records
                nbytes[run.store] = nbytes.get(run.store, 0) + run.bytes
            families = (
                ("possync_backfill_running", "Backfills running, by store", count),
                (
                    "possync_backfill_received_records",
                    "Records read so far by the running backfills, by store",
                    records,
                ),
                (
                    "possync_backfill_received_bytes",
                    "Body bytes read so far by the running backfills, by store",
                    nbytes,
                ),
            )
            for name, text, values in families:
                fam = GaugeMetricFamily(name, text, labels=["store"])
                for store, value in values.items():
                    fam.add_metric([store], value)
                yield fam

        self.add_collector(collect)

    def render(self) -> bytes:
        """Text exposition format."""
        return generate_latest(self.registry)


def count_types(records: Iterable[Record]) -> tuple[int, int, int, int]:
    """Customers, products, sales and voids among `records` (one pass, no allocation)."""
    customers = products = sales = voids = 0
    for r in records:
        if isinstance(r, Sale):
            sales += 1
        elif isinstance(r, Customer):
            customers += 1
        elif isinstance(r, Product):
            products += 1
        elif isinstance(r, Void):
            voids += 1
    return customers, products, sales, voids


def group_type(first: str, first_n: int, second: str, second_n: int) -> str:
    """The `type` label of one write holding `first_n` of one type and `second_n` of another."""
    if not second_n:
        return first
    if not first_n:
        return second
    return f"{first}+{second}"
