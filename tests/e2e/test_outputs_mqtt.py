"""`[[outputs]] kind = "mqtt"` end to end against a real Mosquitto: customers published at
once, the window's sales, their due triggers and the window manifest after the commit, each
on `{prefix}/{store}/{kind}` with the committed body verbatim; deduplicated by `event_id`,
every fact exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from tests.e2e import harness as e2e
from tests.e2e.test_outputs import DAY, customers, sales

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]
PREFIX = "clientbook/events"


class Consumer:
    """A QoS 1 subscriber of the output's topics, as a consumer of the app would be."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self, port: int) -> None:
        """Subscribe, then record every message until cancelled."""
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="app-consumer", protocol=aiomqtt.ProtocolVersion.V5
        ) as sub:
            await sub.subscribe(f"{PREFIX}/#", qos=1)
            self.ready.set()
            async for msg in sub.messages:
                self.messages.append((str(msg.topic), json.loads(bytes(msg.payload))))
                self.changed.set()

    async def wait_for(self, done: Callable[[], bool], timeout_s: float = 30) -> None:
        """Until `done()` holds after a message (bounded)."""
        async with asyncio.timeout(timeout_s):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def ids(self, kind: str) -> set[str]:
        """Distinct event ids of a kind (the consumer's dedup)."""
        return {m["event_id"] for _, m in self.messages if m["kind"] == kind}


async def test_mqtt_output_end_to_end(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    consumer = Consumer()
    task = asyncio.create_task(consumer.run(mosquitto.port))
    try:
        await consumer.ready.wait()
        out = {
            "kind": "mqtt",
            "name": "bus",
            "records": ["customer", "sale", "trigger", "manifest"],
            "port": mosquitto.port,
            "topic_prefix": PREFIX,
        }
        async with e2e.store_app(tmp_path, "canonical", config={"outputs": [out]}) as h:
            await e2e.push(h, json.dumps(customers()).encode())
            await consumer.wait_for(lambda: len(consumer.ids("customer")) == 2)
            assert consumer.ids("sale") == set()  # sales wait for their window
            await e2e.push(h, json.dumps(sales()).encode())
            result = await e2e.run_window(h)
            assert result.committed == 5
            await consumer.wait_for(
                lambda: (
                    len(consumer.ids("sale")) == 5
                    and len(consumer.ids("trigger")) == 5
                    and len(consumer.ids("manifest")) >= 1
                )
            )
            log = await e2e.sales_log(h, DAY)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert consumer.ids("customer") == {"customer:S1:C1:1", "customer:S1:C2:4"}
    assert {i.rsplit(":", 1)[0] for i in consumer.ids("sale")} == {
        f"sale:S1:10{i}" for i in range(5)
    }
    assert consumer.ids("trigger") == {f"trigger:S1:10{i}:thank-you" for i in range(5)}
    for topic, m in consumer.messages:
        assert topic == f"{PREFIX}/S1/{m['kind']}"
        assert m["store"] == "S1"
    # The body is what the sink committed: the POS's figures, not recomputed.
    sale = next(m for _, m in consumer.messages if m["event_id"].startswith("sale:S1:100:"))
    assert sale["body"]["id"] == "100" and sale["body"]["total"] == "404.95"
    assert len(log) == 5
    assert {row["id"]: row["total"] for row in log}["100"] == sale["body"]["total"]
