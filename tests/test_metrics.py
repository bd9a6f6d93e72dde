"""/metrics against the real server: every family exists, with its labels and the values of
what the test did; the Grafana dashboard uses only names a scrape has; names follow the
Prometheus conventions.

The scenario pushes over HTTP and MQTT (a real Mosquitto), locks the SQLite sink from another
connection for one push, runs windows on the fake clock (one paused), and streams a backfill
whose progress is scraped while it is still running.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.appserver import Harness
from tests.e2e.harness import NOW, STORE, push, run_window, store_app, store_auth
from tests.factories import sale_dict
from worker import keys
from worker.metrics import Metrics
from worker.sinks.sqlite import sink_path
from worker.sources.backfill import BACKFILLS

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
PUSH_ROUTE = "/v1/push/{source}/{store}"
AT = NOW - timedelta(hours=1)


def customer(cid: str) -> dict[str, Any]:
    """A canonical customer."""
    return {"type": "customer", "id": cid, "first_name": "Ada", "email": f"{cid}@example.com"}


PRODUCT = {"type": "product", "id": "P-1", "sku": "SKU-1", "name": "Ring", "price": "10.00"}
VOID = {"type": "void", "id": "S-OK", "occurred_at": AT.isoformat()}


def body(*records: dict[str, Any]) -> bytes:
    """A canonical JSON array."""
    return json.dumps(list(records)).encode()


async def scrape(h: Harness) -> dict[str, Metric]:
    """GET /metrics, parsed by prometheus-client's own parser, by family name."""
    resp = await h.client.get("/metrics", headers=h.admin())
    assert resp.status == 200
    text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """The one sample named `sample` whose labels are exactly `labels`."""
    family = families[_family_of(sample, families)]
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, [s for s in family.samples if s.name == sample])
    return found[0]


def samples(families: dict[str, Metric], sample: str) -> list[Sample]:
    """Every sample named `sample`."""
    family = families[_family_of(sample, families)]
    return [s for s in family.samples if s.name == sample]


def _family_of(sample: str, families: dict[str, Metric]) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created", ""):
        if sample.endswith(suffix) and sample.removesuffix(suffix) in families:
            return sample.removesuffix(suffix)
    raise AssertionError(f"no family for {sample}: {sorted(families)}")


async def _until(cond: Callable[[], bool]) -> None:
    """Yield to the loop until `cond()` holds (no sleeping: each turn runs pending I/O)."""
    for _ in range(2_000_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def _app(tmp_path: Path, mosquitto: MosquittoServer) -> Any:
    return store_app(
        tmp_path,
        "canonical",
        config={
            "mqtt": {"enabled": True, "port": mosquitto.port, "client_id": "possync-metrics"},
            # A short busy timeout: the locked-sink push fails fast instead of after 5 s.
            "sink": {"kind": "sqlite", "busy_timeout_ms": 50},
        },
    )


async def _mqtt_up(h: Harness) -> Any:
    source = h.app[keys.MQTT]
    await asyncio.wait_for(source.wait_for(lambda s: s.subscribed), 15)
    return source


async def test_every_family_counts_what_was_done(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with _app(tmp_path, mosquitto) as h:
        source = await _mqtt_up(h)
        # -- real-time records: customers, a repeat, a mixed customer+product repeat
        await push(h, body(customer("C-1"), customer("C-2")))
        out = await push(h, body(customer("C-1")))
        assert out["duplicates"] == 1
        await push(h, body(PRODUCT))
        out = await push(h, body(customer("C-1"), PRODUCT))
        assert out["duplicates"] == 2
        # -- sales: one valid with a customer, one whose total is wrong, one whose customer
        # is unknown (held), a walk-in, and an unreadable item
        bad = sale_dict("S-BAD", at=AT, customer_id="C-2", total="999.00")
        sales = [
            sale_dict("S-OK", at=AT, customer_id="C-1"),
            bad,
            sale_dict("S-HELD", at=AT, customer_id="C-404"),
            sale_dict("S-WALK", at=AT),
            {"type": "sale", "id": "S-REJ"},
        ]
        out = await push(h, body(*sales))
        assert (out["accepted"], len(out["rejected"])) == (4, 1)
        out = await push(h, body(sale_dict("S-OK", at=AT, customer_id="C-1")))
        assert out["duplicates"] == 1
        await push(h, body({"type": "sale", "id": "S-NONE"}), expect=400)
        # -- MQTT: one walk-in sale, acked once durable
        payload = orjson.dumps(sale_dict("M-1", at=AT))
        await asyncio.to_thread(mosquitto.publish, "pos/canonical/S1/sale", payload)
        await asyncio.wait_for(source.wait_for(lambda s: s.acked >= 1), 15)
        # -- the sink locked by another connection: the customer push fails retriably
        locker = sqlite3.connect(sink_path(h.app[keys.CONFIG]), isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            await push(h, body(customer("C-9")), expect=503)
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        m = await scrape(h)
        pending = await h.spool.pending_entries(STORE)
        assert len(pending) == 5  # S-OK, S-BAD, S-HELD, S-WALK, M-1
        assert value(m, "possync_spool_pending_records", store=STORE) == 5
        assert value(m, "possync_spool_pending_bytes", store=STORE) == sum(
            len(e.body) for e in pending
        )
        assert value(m, "possync_mqtt_connected") == 1
        assert value(m, "possync_mqtt_messages_received_total") == 1
        assert value(m, "possync_mqtt_messages_acked_total") == 1
        assert value(m, "possync_mqtt_messages_rejected_total") == 0
        assert value(m, "possync_sink_errors_total", kind="retriable", operation="upsert") == 1
        assert samples(m, "possync_sink_errors_total") == [
            Sample("possync_sink_errors_total", {"kind": "retriable", "operation": "upsert"}, 1.0)
        ]
        route = {"route": PUSH_ROUTE}
        assert value(m, "possync_http_requests_total", **route, status="202") == 6
        assert value(m, "possync_http_requests_total", **route, status="400") == 1
        assert value(m, "possync_http_requests_total", **route, status="503") == 1
        assert value(m, "possync_http_request_duration_seconds_count", **route) == 8

        # -- window 1: commits S-OK, S-WALK, M-1; quarantines S-BAD; holds S-HELD
        first = await run_window(h)
        assert (first.committed, first.quarantined, first.held) == (3, 1, 1)
        assert (first.triggers, first.triggers_skipped) == (2, {"no_customer": 4})
        # -- a paused store's window is skipped, and counted as such
        resp = await h.client.post(f"/v1/admin/stores/{STORE}/pause", headers=h.admin())
        assert resp.status == 200
        assert (await run_window(h)).skipped == "paused"
        resp = await h.client.post(f"/v1/admin/stores/{STORE}/resume", headers=h.admin())
        assert resp.status == 200
        # -- window 2: the void of S-OK; S-HELD held a second time
        await push(h, body(VOID))
        second = await run_window(h)
        assert (second.committed, second.voids, second.held) == (0, 1, 1)
        # a sale and a void the spool already holds, in one write: typed "sale+void"
        out = await push(h, body(sale_dict("S-OK", at=AT, customer_id="C-1"), VOID))
        assert out["duplicates"] == 2

        # -- a backfill, scraped while it runs
        lines = [orjson.dumps(sale_dict(f"B-{n}", at=AT)) + b"\n" for n in range(3)]
        chunk = b"".join(lines)
        feed: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def stream() -> AsyncIterator[bytes]:
            while (part := await feed.get()) is not None:
                yield part

        feed.put_nowait(chunk)
        backfill = asyncio.ensure_future(
            h.client.post(
                f"/v1/backfill/canonical/{STORE}",
                data=stream(),
                headers={**h.admin(), "Content-Type": "application/x-ndjson"},
            )
        )
        runs = h.app[BACKFILLS].running
        await _until(lambda: any(r.records == 3 for r in runs.values()))
        during = await scrape(h)
        feed.put_nowait(None)
        resp = await backfill
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"] == 3
        assert value(during, "possync_backfill_running", store=STORE) == 1
        assert value(during, "possync_backfill_received_records", store=STORE) == 3
        assert value(during, "possync_backfill_received_bytes", store=STORE) == len(chunk)

        m = await scrape(h)
        assert value(m, "possync_backfill_running", store=STORE) == 0
        assert value(m, "possync_backfill_received_records", store=STORE) == 0

        # -- intake, by source, store and type
        canon = {"source": "canonical", "store": STORE}
        received = {
            t: value(m, "possync_records_received_total", **canon, type=t)
            for t in ("customer", "product", "sale", "void")
        }
        # customers: C-1, C-2; C-1; C-1 (+P-1). C-9 failed (503): not counted.
        # sales: 4 readable of push E, S-OK again, M-1 over MQTT, S-OK with the void again.
        assert received == {"customer": 4, "product": 2, "sale": 7, "void": 2}
        duplicates = {
            s.labels["type"]: s.value
            for s in samples(m, "possync_records_duplicate_total")
            if s.labels["source"] == "canonical" and s.labels["store"] == STORE
        }
        assert duplicates == {"customer": 1, "customer+product": 2, "sale": 1, "sale+void": 2}
        assert value(m, "possync_records_rejected_total", **canon) == 2
        assert samples(m, "possync_records_dropped_total") == []

        # -- group commits: one histogram observation per committed spool group
        spool = h.spool
        assert value(m, "possync_spool_group_size_records_count") == spool.groups
        # rows written: push E 4, S-OK 1, M-1 1, void 1, sale+void 2, backfill 3
        assert value(m, "possync_spool_group_size_records_sum") == 12
        assert value(m, "possync_spool_group_commit_duration_seconds_count") == spool.groups
        assert value(m, "possync_spool_group_commit_duration_seconds_sum") > 0
        assert value(m, "possync_spool_group_size_records_bucket", le="+Inf") == spool.groups

        # -- windows and their sales, by store
        store = {"store": STORE}
        assert value(m, "possync_window_commits_total", **store, result="ok") == 2
        assert value(m, "possync_window_commits_total", **store, result="skipped_paused") == 1
        assert {s.labels["result"] for s in samples(m, "possync_window_commits_total")} == {
            "ok",
            "skipped_paused",
        }
        assert value(m, "possync_window_duration_seconds_count", result="ok") == 2
        assert value(m, "possync_sales_committed_total", **store) == 3
        assert value(m, "possync_voids_committed_total", **store) == 1
        assert value(m, "possync_sales_quarantined_total", **store) == 1
        assert len(await _quarantine(h)) == 1
        assert value(m, "possync_sales_held_total", **store) == 2
        assert value(m, "possync_sales_superseded_total", **store) == 0

        # -- triggers: S-OK with C-1 emits two; the two walk-ins skip two each
        assert value(m, "possync_trigger_events_emitted_total", **store) == 2
        skipped = value(m, "possync_trigger_events_skipped_total", **store, reason="no_customer")
        assert skipped == 4
        delivered = await _triggers(h, "delivered")
        assert delivered >= 1  # the same-day thank-you is due at once
        assert value(m, "possync_trigger_events_delivered_total") == delivered


async def _quarantine(h: Harness) -> list[dict[str, Any]]:
    resp = await h.client.get(f"/v1/admin/quarantine?store={STORE}", headers=h.admin())
    assert resp.status == 200
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def _triggers(h: Harness, state: str) -> int:
    resp = await h.client.get(f"/v1/stores/{STORE}/triggers?state={state}", headers=h.admin())
    out = await resp.json()
    assert resp.status == 200, out
    return len(out["events"])


# ---------------------------------------------------------------------- dashboard

_NAME = re.compile(r"\bpossync_[a-z0-9_]+")
_SELECTOR = re.compile(r"(possync_[a-z0-9_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)\s*\((?:rate|increase|deriv)?\(?\s*(possync_[a-z0-9_]+)")


def _exprs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from _exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _exprs(v)


def _declared_labels(families: dict[str, Metric]) -> dict[str, set[str]]:
    """Label names per exposed sample name: from the metric objects and the scraped samples."""
    out: dict[str, set[str]] = {}
    for fam in families.values():
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    metrics = Metrics()
    for attr in vars(metrics).values():
        if isinstance(attr, MetricWrapperBase):
            base = attr._name  # the family name prometheus-client exposes
            names = {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
            for name in names:
                out.setdefault(name, set()).update(attr._labelnames)
    for name in list(out):
        if name.endswith("_bucket"):
            out[name].add("le")
    return out


async def test_dashboard_uses_only_names_and_labels_a_scrape_has(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (ds,) = dashboard["__inputs"]
    assert (ds["name"], ds["type"], ds["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]
    exprs = list(_exprs(dashboard))
    assert exprs, "the dashboard has no queries"
    async with _app(tmp_path, mosquitto) as h:
        await _mqtt_up(h)
        families = await scrape(h)
    labels = _declared_labels(families)
    used = {n for e in exprs for n in _NAME.findall(e)}
    missing = sorted(n for n in used if n not in labels)
    assert missing == [], f"dashboard names no scrape has: {missing}"
    for expr in exprs:
        for name, selector in _SELECTOR.findall(expr):
            for label in re.findall(r"([a-z_]+)\s*=~?", selector):
                assert label in labels[name], (expr, label)
        for by, name in _BY.findall(expr):
            for label in (x.strip() for x in by.split(",")):
                assert label in labels[name], (expr, label)
    # Every panel the issue asks for is there, each on the family it is about.
    for family in (
        "possync_records_received_total",
        "possync_records_rejected_total",
        "possync_spool_pending_records",
        "possync_spool_group_size_records_bucket",
        "possync_spool_group_commit_duration_seconds_bucket",
        "possync_window_commits_total",
        "possync_window_duration_seconds_bucket",
        "possync_sales_quarantined_total",
        "possync_trigger_events_emitted_total",
        "possync_trigger_events_delivered_total",
        "possync_trigger_events_skipped_total",
        "possync_sink_errors_total",
        "possync_mqtt_connected",
        "possync_backfill_running",
        "possync_backfill_received_records",
        "possync_backfill_received_bytes",
    ):
        assert family in used, family


# ---------------------------------------------------------------------- naming

_SNAKE = re.compile(r"^possync_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# What a gauge or histogram name may end with: a base unit, or the thing it counts.
_UNITS = ("_seconds", "_bytes", "_records", "_running", "_connected")


async def test_names_follow_the_prometheus_conventions(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with _app(tmp_path, mosquitto) as h:
        await _mqtt_up(h)
        await push(h, body(customer("C-1")))
        resp = await h.client.get("/metrics", headers=h.admin())
        text = await resp.text()
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 25
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))
    counters = {name.removesuffix("_total") for name, kind in types.items() if kind == "counter"}
    for fam in families:
        base = fam.name.removesuffix("_created")
        if base != fam.name and (base in counters or types.get(base) == "histogram"):
            continue  # prometheus-client's creation time of a counter or histogram child
        assert _SNAKE.match(fam.name), fam.name
        assert fam.documentation, fam.name
        for banned in ("_ms", "_milliseconds", "_minutes", "_kb", "_mb"):
            assert banned not in fam.name, fam.name
        if fam.type == "counter":
            assert types.get(f"{fam.name}_total") == "counter" or types.get(fam.name) == "counter"
            for s in fam.samples:
                assert s.name in (f"{fam.name}_total", f"{fam.name}_created"), s.name
        else:
            assert not fam.name.endswith("_total"), fam.name
            assert fam.name.endswith(_UNITS), fam.name
        if "duration" in fam.name or "latency" in fam.name:
            assert fam.name.endswith("_seconds"), fam.name
        for s in fam.samples:
            assert set(s.labels) <= {
                "source",
                "store",
                "type",
                "reason",
                "result",
                "kind",
                "operation",
                "route",
                "status",
                "le",
            }, (s.name, s.labels)
    # The push of one customer is counted under its own labels, not under the payload's.
    received = next(f for f in families if f.name == "possync_records_received")
    assert [s.labels for s in received.samples if s.name.endswith("_total")] == [
        {"source": "canonical", "store": STORE, "type": "customer"}
    ]
    assert store_auth()["Authorization"] not in text


async def test_manual_sales_count_as_committed_at_once(tmp_path: Path) -> None:
    manual = sale_dict("MAN-1", at=AT, customer_id="C-1", origin="manual")
    async with store_app(tmp_path, "canonical") as h:
        await push(h, body(customer("C-1")))
        out = await push(h, body(manual))
        assert (out["accepted"], out["duplicates"]) == (1, 0)
        again = await push(h, body(manual))
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        m = await scrape(h)
    store = {"store": STORE}
    canon = {"source": "canonical", "store": STORE}
    assert value(m, "possync_sales_committed_total", **store) == 1
    assert value(m, "possync_trigger_events_emitted_total", **store) == 2
    assert value(m, "possync_records_received_total", **canon, type="sale") == 2
    assert value(m, "possync_records_duplicate_total", **canon, type="sale") == 1
    assert samples(m, "possync_window_commits_total") == []  # no window ran
    assert samples(m, "possync_spool_group_size_records_count")[0].value == 0  # never spooled
