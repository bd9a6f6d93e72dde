"""The MQTT source against a real Mosquitto (tests/plugins/mosquitto.py).

The intake is a small real fake (`FakeIntake`): it decodes JSON, keeps records by
(store, kind, id) in memory, and so deduplicates redeliveries the way the real intake does
by natural key. Publishers and the rejected-topic subscriber are real aiomqtt clients.
Every wait is on a condition with a bound; nothing sleeps to wait for background work.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiomqtt
import msgspec
import pytest

from worker.adapters.base import Rejection
from worker.clock import Clock, FakeClock, SystemClock
from worker.config import Config, MqttConfig
from worker.errors import (
    NotFound,
    PossyncError,
    RecordInvalid,
    SinkError,
    SpoolFull,
    StorageFull,
    Unavailable,
)
from worker.health import Health
from worker.intake import Envelope, IngestOutcome
from worker.sources.mqtt import MqttSource, MqttState, is_transient, open_mqtt_source
from worker.sources.mqtt_route import JSON, NDJSON, content_type_for, parse_topic

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

WAIT_S = 10.0


class Call(msgspec.Struct, kw_only=True):
    source: str
    store: str
    body: bytes
    content_type: str
    headers: dict[str, str]
    topic: str | None
    authorized: bool
    doc_id: str | None


class FakeIntake:
    """Test double for worker.intake.Intake: in-memory, deduplicating, controllable."""

    def __init__(self, stores: tuple[str, ...] = ("s1", "s2")) -> None:
        self.stores = set(stores)
        self.calls: list[Call] = []
        self.stored: dict[tuple[str, str | None, str], bytes] = {}
        self.gates: dict[str, asyncio.Event] = {}  # doc id -> ingest waits on it
        self.failures: dict[str, list[PossyncError]] = defaultdict(list)  # doc id -> raise, FIFO
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self.cond = asyncio.Condition()

    async def ingest(self, envelope: Envelope) -> IngestOutcome:
        source, store_id, body = envelope.source, envelope.store, envelope.body
        topic, headers = envelope.topic, envelope.headers
        content_type, authorized = envelope.content_type, envelope.authorized
        doc_id: str | None = None
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            doc_id = doc["id"]
        self.calls.append(
            Call(
                source=source,
                store=store_id,
                body=body,
                content_type=content_type,
                headers=dict(headers or {}),
                topic=topic,
                authorized=authorized,
                doc_id=doc_id,
            )
        )
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await self._notify()
        try:
            if doc_id in self.gates:
                await self.gates[doc_id].wait()
            if doc_id is not None and self.failures[doc_id]:
                raise self.failures[doc_id].pop(0)
            if store_id not in self.stores:
                raise NotFound("unknown store", field="store")
            if doc is None:
                raise RecordInvalid("payload is not JSON", field="$")
            if doc_id is None:
                raise RecordInvalid("missing id", field="$.id")
            key = (store_id, topic, doc_id)
            duplicate = key in self.stored
            self.stored[key] = body
            bad = doc.get("bad_items", [])  # item-level refusals inside an accepted payload
            return IngestOutcome(
                accepted=0 if duplicate else 1,
                duplicates=int(duplicate),
                rejected=[Rejection(i, "bad line", f"$[{i}].qty") for i in bad],
                dropped={},
                visible_at=None,
            )
        finally:
            self.active -= 1
            self.completed += 1
            await self._notify()

    async def ingest_batch(self, envelopes: Sequence[Envelope]) -> list[IngestOutcome | Exception]:
        """Each envelope through `ingest`, concurrently (Intake's own batch is tested apart)."""
        got = await asyncio.gather(*(self.ingest(e) for e in envelopes), return_exceptions=True)
        out: list[IngestOutcome | Exception] = []
        for res in got:
            if isinstance(res, BaseException) and not isinstance(res, Exception):
                raise res
            out.append(res)
        return out

    async def _notify(self) -> None:
        async with self.cond:
            self.cond.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (bounded) until `predicate()` holds."""
        async with asyncio.timeout(WAIT_S):
            async with self.cond:
                await self.cond.wait_for(predicate)

    def calls_for(self, doc_id: str) -> list[Call]:
        """Every ingest call that carried this record id."""
        return [c for c in self.calls if c.doc_id == doc_id]


def config(broker: MosquittoServer, **mqtt: Any) -> Config:
    """A Config whose [mqtt] points at the test broker."""
    opts: dict[str, Any] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "client_id": "possync-test",
        "keepalive_s": 5,
        "reconnect_max_s": 0.2,
    }
    opts.update(mqtt)
    return Config(mqtt=MqttConfig(**opts))


def source(
    cfg: Config, intake: FakeIntake, clock: Clock | None = None, drain_timeout_s: float = 5.0
) -> AbstractAsyncContextManager[MqttSource]:
    """open_mqtt_source with a seeded jitter."""
    return open_mqtt_source(
        cfg,
        intake,
        clock or SystemClock(),
        drain_timeout_s=drain_timeout_s,
        rng=random.Random(7),
    )


async def until(src: MqttSource, predicate: Callable[[MqttState], bool]) -> None:
    """Wait (bounded) until the source state satisfies `predicate`."""
    await asyncio.wait_for(src.wait_for(predicate), WAIT_S)


@asynccontextmanager
async def publisher(broker: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    """A real MQTT 5 client to publish with."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="test-publisher", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        yield client


@asynccontextmanager
async def rejected_watcher(broker: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    """A real MQTT 5 client subscribed (SUBACKed) to every rejection notice, `pos/rejected/#`."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="test-watcher", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("pos/rejected/#", qos=1)
        yield client


async def publish(broker: MosquittoServer, *items: tuple[str, bytes]) -> None:
    """Publish QoS 1 messages; returns once the broker PUBACKed each."""
    async with publisher(broker) as pub:
        for topic, payload in items:
            await pub.publish(topic, payload, qos=1)


def doc(doc_id: str, **extra: Any) -> bytes:
    """A JSON payload carrying a record id."""
    return msgspec.json.encode({"id": doc_id, **extra})


async def assert_nothing_unacked(broker: MosquittoServer, cfg: Config) -> None:
    """Start a fresh source on the same session, publish a marker: the fresh intake sees
    only the marker.

    The broker re-sends un-acked messages of a resumed session before anything newer, so
    whatever the fresh intake saw besides the marker was not acknowledged before.
    """
    intake = FakeIntake()
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(broker, ("pos/canonical/s1/sale", doc("marker")))
        await intake.until(lambda: any(c.doc_id == "marker" for c in intake.calls))
        await until(src, lambda s: s.acked >= 1)
    assert [c.doc_id for c in intake.calls] == ["marker"]


# -- pure pieces ---------------------------------------------------------------------


def test_topic_routes() -> None:
    r = parse_topic("pos", "pos/canonical/s1/sale")
    assert (r.source, r.store, r.kind, r.topic) == ("canonical", "s1", "sale", "sale")
    r = parse_topic("pos", "pos/shopify/s1/orders%2Fcreate")
    assert (r.source, r.kind, r.topic) == ("shopify", "orders%2Fcreate", "orders/create")
    r = parse_topic("org/pos", "org/pos/lightspeed/s2/sale.update")
    assert (r.source, r.store, r.topic) == ("lightspeed", "s2", "sale.update")
    for bad in ("pos/canonical/s1/widget", "pos//s1/sale", "other/canonical/s1/sale"):
        for _ in range(2):  # routes are cached, refusals are not: the second one raises too
            with pytest.raises(RecordInvalid) as exc:
                parse_topic("pos", bad)
            assert exc.value.field == "topic"
    assert parse_topic("pos", "pos/canonical/s1/sale") == parse_topic(
        "pos", "pos/canonical/s1/sale"
    )
    assert parse_topic("org", "org/canonical/s1/sale").store == "s1"  # the prefix is in the key
    with pytest.raises(RecordInvalid):
        parse_topic("org", "pos/canonical/s1/sale")


def test_content_type_decision() -> None:
    assert content_type_for("sale", b'{"id": "a"}') == JSON
    assert content_type_for("batch", b' [{"id": "a"}, {"id": "b"}]') == JSON
    assert content_type_for("batch", b'{"id": "a"}\n{"id": "b"}\n') == NDJSON
    assert content_type_for("batch", b'\n{"id": "a"}\r\n{"id": "b"}') == NDJSON
    assert content_type_for("sale", b'\n{"id": "a"}\n') == JSON
    assert content_type_for("sale", b'{\n  "lines": [\n    {"sku": "x"}\n  ]\n}') == JSON
    assert content_type_for("ndjson", b'{"id": "a"}') == NDJSON
    assert content_type_for("sale", b"x", "Application/JSON; charset=utf-8") == JSON
    assert content_type_for("CustomerList", b"Cust Num,Name\n1,Ann\n") == "text/csv"
    assert content_type_for("sale.update", b"payload=%7B%7D&type=sale.update") == (
        "application/x-www-form-urlencoded"
    )
    assert content_type_for("Transaction", b"<Transaction/>") == "application/xml"


def test_transient_classification() -> None:
    assert is_transient(SpoolFull("full"))
    assert is_transient(Unavailable("down"))
    assert is_transient(StorageFull("disk"))
    assert is_transient(SinkError("locked", retriable=True))
    assert not is_transient(SinkError("constraint", retriable=False))
    assert not is_transient(RecordInvalid("bad", field="$.total"))
    assert not is_transient(NotFound("store", field="store"))


# -- against the broker --------------------------------------------------------------


async def test_publish_is_ingested_then_acked(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        assert src.ready
        await src.check()
        async with publisher(mosquitto) as pub:
            await pub.publish(
                "pos/canonical/s1/sale",
                doc("a1"),
                qos=1,
                properties=_user_props({"X-Relay": "edge-7"}),
            )
        await until(src, lambda s: s.acked == 1)
        [call] = intake.calls
        assert (call.source, call.store, call.topic) == ("canonical", "s1", "sale")
        assert call.content_type == JSON
        assert call.authorized is True
        assert call.headers == {"x-relay": "edge-7"}
        assert intake.stored == {("s1", "sale", "a1"): doc("a1")}
        snap = src.snapshot()
        assert snap["received"] == 1 and snap["acked"] == 1 and snap["connected"] is True
    await assert_nothing_unacked(mosquitto, cfg)


async def test_ack_waits_for_ingest_restart_redelivers(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    intake.gates["slow"] = asyncio.Event()  # never set: ingest of "slow" never completes here
    async with source(cfg, intake, drain_timeout_s=0.2) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/sale", doc("slow")))
        await intake.until(lambda: len(intake.calls) == 1)
        assert src.state.acked == 0
    # Shut down with the ingest still blocked: it is cancelled, nothing was acked.
    assert intake.stored == {}
    intake2 = FakeIntake()
    async with source(cfg, intake2) as src2:
        await until(src2, lambda s: s.acked == 1)
        assert src2.state.redelivered == 1
        assert src2.state.session_present is True
    assert [c.doc_id for c in intake2.calls] == ["slow"]
    await assert_nothing_unacked(mosquitto, cfg)


async def test_connection_drop_during_ingest_acks_only_the_new_copy(
    mosquitto: MosquittoServer,
) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    gate = intake.gates["g"] = asyncio.Event()
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/sale", doc("g")))
        await intake.until(lambda: len(intake.calls_for("g")) == 1)
        src.drop_connection()  # as a network fault would, while the ingest is still running
        # The broker re-sends the un-acked message on the resumed session.
        await intake.until(lambda: len(intake.calls_for("g")) == 2)
        assert src.state.redelivered == 1 and src.state.reconnects >= 1
        gate.set()
        await intake.until(lambda: intake.completed == 2)
        await until(src, lambda s: s.acked == 1)
        assert intake.stored == {("s1", "sale", "g"): doc("g")}  # deduplicated, not doubled
    await assert_nothing_unacked(mosquitto, cfg)


async def test_shutdown_lets_running_ingest_finish_and_ack(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    gate = intake.gates["late"] = asyncio.Event()
    ctx = source(cfg, intake, drain_timeout_s=WAIT_S)
    src = await ctx.__aenter__()
    closing: asyncio.Task[Any] | None = None
    try:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/sale", doc("late")))
        await intake.until(lambda: len(intake.calls) == 1)
        closing = asyncio.create_task(ctx.__aexit__(None, None, None))
        await until(src, lambda s: s.stopping)
        assert src.state.acked == 0 and not closing.done()
        gate.set()  # the ingest completes during the drain; its ack goes out before DISCONNECT
        await asyncio.wait_for(closing, WAIT_S)
    finally:
        if closing is None:
            await ctx.__aexit__(None, None, None)
    assert src.state.acked == 1 and not src.state.connected
    await assert_nothing_unacked(mosquitto, cfg)


async def test_transient_failure_held_then_retried(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto, reconnect_max_s=30.0)
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    intake = FakeIntake()
    intake.failures["t1"] = [SpoolFull("spool over cap", retry_after_s=5)]
    async with source(cfg, intake, clock) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/sale", doc("t1")))
        await until(src, lambda s: s.retries == 1)
        await asyncio.wait_for(clock.waiting.wait(), WAIT_S)  # held, backing off on the clock
        assert src.state.acked == 0
        assert src.state.last_error is not None and "SpoolFull" in src.state.last_error
        clock.advance(30)
        await until(src, lambda s: s.acked == 1)
    assert len(intake.calls_for("t1")) == 2
    assert intake.stored == {("s1", "sale", "t1"): doc("t1")}
    await assert_nothing_unacked(mosquitto, cfg)


async def test_transient_failure_is_not_acked_and_redelivered(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto, reconnect_max_s=30.0)
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    intake = FakeIntake()
    intake.failures["t2"] = [StorageFull("disk full"), Unavailable("spool writer down")]
    async with source(cfg, intake, clock) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/void", doc("t2")))
        await until(src, lambda s: s.retries == 1)
        clock.advance(30)
        await until(src, lambda s: s.retries == 2)
        assert src.state.acked == 0
    # Stopped while holding it: abandoned un-acked, so the broker still owns it.
    assert src.state.abandoned == 1
    async with source(cfg, intake) as src2:
        await until(src2, lambda s: s.acked == 1)
        assert src2.state.redelivered == 1
    assert len(intake.calls_for("t2")) == 3
    assert intake.stored == {("s1", "void", "t2"): doc("t2")}


async def test_permanent_failures_go_to_rejected_topic(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    async with rejected_watcher(mosquitto) as watcher, source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(
            mosquitto,
            ("pos/canonical/s1/sale", b"\xff not json"),
            ("pos/canonical/nowhere/customer", doc("c1")),
            ("pos/canonical/s1/widget", doc("w1")),
            ("pos/canonical/s1/product", b'{"name": "no id"}'),
        )
        notices: dict[str, Any] = {}
        async with asyncio.timeout(WAIT_S):
            async for message in watcher.messages:
                notices[str(message.topic)] = msgspec.json.decode(bytes(message.payload))
                if len(notices) == 4:
                    break
        await until(src, lambda s: s.acked == 4)
        assert src.state.rejected == 4
    assert notices == {
        "pos/rejected/canonical/s1/sale": {
            "error": "payload is not JSON",
            "field": "$",
            "topic": "pos/canonical/s1/sale",
        },
        "pos/rejected/canonical/nowhere/customer": {
            "error": "unknown store",  # named by the field, never echoed
            "field": "store",
            "topic": "pos/canonical/nowhere/customer",
        },
        "pos/rejected/canonical/s1/widget": {
            "error": notices["pos/rejected/canonical/s1/widget"]["error"],
            "field": "topic",
            "topic": "pos/canonical/s1/widget",
        },
        "pos/rejected/canonical/s1/product": {
            "error": "missing id",
            "field": "$.id",
            "topic": "pos/canonical/s1/product",
        },
    }
    # The rule, not the value: RecordInvalid scrubs quoted input from its message (issue 12).
    assert notices["pos/rejected/canonical/s1/widget"]["error"].startswith("unknown kind <value>")
    assert [c.doc_id for c in intake.calls if c.doc_id] == ["c1"]  # the bad topic never ingested
    await assert_nothing_unacked(mosquitto, cfg)


async def test_item_rejections_are_published_and_payload_acked(
    mosquitto: MosquittoServer,
) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    async with rejected_watcher(mosquitto) as watcher, source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/batch", doc("p1", bad_items=[2, 5])))
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(watcher.messages))
        await until(src, lambda s: s.acked == 1)
        assert src.state.items_rejected == 2 and src.state.rejected == 0
    assert str(message.topic) == "pos/rejected/canonical/s1/batch"
    notice = msgspec.json.decode(bytes(message.payload))
    assert notice["topic"] == "pos/canonical/s1/batch"
    assert notice["field"] == "$[2].qty"
    assert [r["index"] for r in notice["rejected"]] == [2, 5]


async def test_broker_restart_reconnects_and_keeps_consuming(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    intake = FakeIntake()
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, ("pos/canonical/s1/sale", doc("before")))
        await until(src, lambda s: s.acked == 1)
        await asyncio.to_thread(mosquitto.stop)
        await until(src, lambda s: not s.connected)
        with pytest.raises(Unavailable):
            await src.check()
        assert src.state.last_error is not None
        await asyncio.to_thread(mosquitto.start)
        await until(src, lambda s: s.subscribed and s.reconnects >= 1)
        assert src.state.session_present is True
        await publish(mosquitto, ("pos/canonical/s2/customer", doc("after")))
        await until(src, lambda s: s.acked == 2)
    assert set(intake.stored) == {("s1", "sale", "before"), ("s2", "customer", "after")}


async def test_messages_published_while_down_are_delivered(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto)
    async with source(cfg, FakeIntake()) as src:  # first run creates the persistent session
        await until(src, lambda s: s.subscribed)
    await publish(
        mosquitto,
        ("pos/canonical/s1/sale", doc("d1")),
        ("pos/canonical/s1/sale", doc("d2")),
    )
    await asyncio.to_thread(mosquitto.restart)  # the queue survives a broker restart too
    intake = FakeIntake()
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.acked == 2)
        assert src.state.session_present is True
    assert [c.doc_id for c in intake.calls] == ["d1", "d2"]


async def test_inflight_is_bounded(mosquitto: MosquittoServer) -> None:
    cfg = config(mosquitto, max_inflight=2)
    intake = FakeIntake()
    ids = [f"b{i}" for i in range(6)]
    gates = {i: asyncio.Event() for i in ids}
    intake.gates.update(gates)
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        await publish(mosquitto, *[("pos/canonical/s1/sale", doc(i)) for i in ids])
        await intake.until(lambda: intake.active == 2)
        assert src.state.inflight == 2
        for i in ids:
            gates[i].set()
        await until(src, lambda s: s.acked == len(ids))
    assert intake.max_active == 2  # concurrent, and never more than the bound
    assert sorted(key[2] for key in intake.stored) == ids


async def test_reads_pause_while_messages_wait_for_a_slot(mosquitto: MosquittoServer) -> None:
    # QoS 0 deliveries are not limited by Receive Maximum: the local bound must hold them.
    cfg = config(mosquitto, max_inflight=1)
    intake = FakeIntake()
    gate = asyncio.Event()
    ids = [f"q{i}" for i in range(4)]
    intake.gates.update({i: gate for i in ids})
    async with source(cfg, intake) as src:
        await until(src, lambda s: s.subscribed)
        async with publisher(mosquitto) as pub:
            for i in ids:
                await pub.publish("pos/canonical/s1/sale", doc(i), qos=0)
        await until(src, lambda s: s.paused and s.queued >= 1 and s.inflight == 1)
        gate.set()
        await intake.until(lambda: intake.completed == len(ids))
        await until(src, lambda s: not s.paused and s.queued == 0 and s.inflight == 0)
    assert intake.max_active == 1
    assert src.state.acked == 0  # QoS 0: nothing to acknowledge
    assert sorted(key[2] for key in intake.stored) == ids


async def test_dead_loop_is_visible() -> None:
    # An empty host makes paho raise ValueError: a bug-class failure, not a network one.
    cfg = Config(mqtt=MqttConfig(enabled=True, host="", port=1))
    health = Health()
    async with open_mqtt_source(cfg, FakeIntake(), SystemClock(), health=health) as src:
        with pytest.raises(RuntimeError, match="died"):
            await asyncio.wait_for(src.wait_for(lambda s: s.subscribed), WAIT_S)
        assert not src.ready
        assert src.state.failure is not None and "ValueError" in src.state.failure
        with pytest.raises(Unavailable, match="died"):
            await src.check()
        # The loop is the app registry's owned task: /readyz reports it dead, not just "mqtt".
        checks = await health.run()
        assert checks["task:mqtt"].startswith("dead:") and "ValueError" in checks["task:mqtt"]
    assert "mqtt" not in health.tasks  # cancelled and awaited with the context


async def test_disabled_source_is_inert() -> None:
    async with open_mqtt_source(Config(), FakeIntake(), SystemClock()) as src:
        assert src.ready
        assert src.snapshot()["enabled"] is False


def _user_props(headers: Mapping[str, str]) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = list(headers.items())
    return props
