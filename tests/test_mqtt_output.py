"""The MQTT output (`worker.sinks.mqtt`) against a real Mosquitto: every event of a page
arrives with its topic, payload and `event_id` property; a stopped broker makes `deliver`
raise a retriable SinkError; after a restart the next `deliver` reconnects and the page
arrives (at least once; deduplicated by `event_id`, exactly once); unsafe topics are fatal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import msgspec
import pytest

from worker.config import Config, MqttOutputConfig, decode
from worker.errors import SinkError
from worker.sinks.mqtt import open_mqtt_output
from worker.sinks.outputs import OutEvent, open_output

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]
PREFIX = "possync/out"


def _config(tmp_path: Path, port: int) -> tuple[Config, MqttOutputConfig]:
    cfg = decode(
        {
            "data_dir": str(tmp_path / "data"),
            "instance": {"id": "test-1"},
            "outputs": [
                {
                    "kind": "mqtt",
                    "name": "bus",
                    "records": ["sale", "customer", "trigger"],
                    "port": port,
                    "topic_prefix": PREFIX,
                    "keepalive_s": 5,
                }
            ],
        }
    )
    out = cfg.outputs[0]
    assert isinstance(out, MqttOutputConfig)
    return cfg, out


def _events(n: int, store: str = "S1") -> list[OutEvent]:
    at = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    return [
        OutEvent(
            event_id=f"sale:{store}:s{i}:1",
            kind="sale",
            store=store,
            at=at,
            # The committed body verbatim: money as the POS's text, key order kept.
            body=msgspec.Raw(f'{{"id":"s{i}","total":"10.{i % 100:02d}","z":1,"a":2}}'.encode()),
        )
        for i in range(n)
    ]


async def _collect(port: int, want: int, ready: asyncio.Event) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="consumer", protocol=aiomqtt.ProtocolVersion.V5
    ) as sub:
        await sub.subscribe(f"{PREFIX}/#", qos=1)
        ready.set()
        async with asyncio.timeout(30):
            async for msg in sub.messages:
                got.append(msg)
                if len(got) >= want:
                    break
    return got


async def test_a_page_arrives_whole_with_topic_payload_and_event_id(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    cfg, out = _config(tmp_path, mosquitto.port)
    events = _events(300)
    ready = asyncio.Event()
    consumer = asyncio.create_task(_collect(mosquitto.port, len(events), ready))
    await ready.wait()
    async with open_output(cfg, out) as output:
        assert output.name == "bus"
        await output.deliver(events)
    got = await consumer
    assert len(got) == len(events)
    by_id = {e.event_id: e for e in events}
    seen = set()
    for msg in got:
        wire = msgspec.json.decode(bytes(msg.payload), type=dict[str, object])
        event = by_id[str(wire["event_id"])]
        seen.add(event.event_id)
        assert str(msg.topic) == f"{PREFIX}/S1/sale"
        assert msg.qos == 1
        assert wire["kind"] == "sale" and wire["store"] == "S1"
        assert wire["at"] == "2026-12-02T03:00:00Z"
        # The body is the committed JSON byte for byte (never re-encoded).
        raw = bytes(msg.payload)
        assert bytes(event.body) in raw
        props = msg.properties
        assert props is not None
        assert getattr(props, "ContentType", None) == "application/json"
        assert ("event_id", event.event_id) in getattr(props, "UserProperty", [])
    assert seen == set(by_id)


async def test_a_stopped_broker_is_retriable_and_a_restart_delivers(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    cfg, out = _config(tmp_path, mosquitto.port)
    async with open_mqtt_output(cfg, out) as output:
        await output.deliver(_events(5))  # connected and working
        mosquitto.stop()
        with pytest.raises(SinkError) as exc:
            await output.deliver(_events(20))
        assert exc.value.retriable
        assert exc.value.field is not None and exc.value.field.startswith("$.outputs[0].")
        # Still down: the reconnect fails, retriable, naming the config field.
        with pytest.raises(SinkError) as again:
            await output.deliver(_events(20))
        assert again.value.retriable
        mosquitto.start()
        ready = asyncio.Event()
        consumer = asyncio.create_task(_collect(mosquitto.port, 20, ready))
        await ready.wait()
        await output.deliver(_events(20))  # the page the outbox re-delivers whole
        got = await consumer
        assert output.connects == 2
    ids = {
        msgspec.json.decode(bytes(m.payload), type=dict[str, str | dict[str, object]])["event_id"]
        for m in got
    }
    assert ids == {e.event_id for e in _events(20)}


async def test_an_unsafe_topic_level_is_fatal(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    cfg, out = _config(tmp_path, mosquitto.port)
    async with open_mqtt_output(cfg, out) as output:
        for store in ("a/b", "+", "#", ""):
            with pytest.raises(SinkError) as exc:
                await output.deliver(_events(1, store=store))
            assert not exc.value.retriable
            assert exc.value.field == "store"


async def test_a_broker_down_at_start_does_not_fail_the_start(tmp_path: Path) -> None:
    from tests.plugins.mosquitto import free_port

    cfg, out = _config(tmp_path, free_port())
    async with open_mqtt_output(cfg, out) as output:
        with pytest.raises(SinkError) as exc:
            await output.deliver(_events(1))
        assert exc.value.retriable
        assert exc.value.field == "$.outputs[0].port"
