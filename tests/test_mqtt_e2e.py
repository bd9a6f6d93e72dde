"""MQTT end to end: a real Mosquitto, the real app; a QoS 1 sale is spooled, then acked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tests.appserver import make_config, running
from tests.factories import sale_dict
from worker import keys

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)


async def test_sale_over_mqtt_is_spooled_before_puback(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    cfg = make_config(
        tmp_path, mqtt={"enabled": True, "port": mosquitto.port, "client_id": "possync-e2e"}
    )
    async with running(cfg, NOW) as h:
        source = h.app[keys.MQTT]
        await asyncio.wait_for(source.wait_for(lambda s: s.subscribed), 15)
        await asyncio.to_thread(
            mosquitto.publish,
            "pos/canonical/S1/sale",
            orjson.dumps(sale_dict("M-1", at=NOW)),
        )
        await asyncio.to_thread(mosquitto.publish, "pos/canonical/S1/sale", b"{not json")
        await asyncio.wait_for(source.wait_for(lambda s: s.acked >= 2), 15)
        assert h.spool.stats("S1").pending == 1
        assert source.state.rejected == 1
        ready = await (await h.client.get("/readyz", headers=h.admin())).json()
        assert ready["checks"]["mqtt"] == "ok"
        status = await (await h.client.get("/status", headers=h.admin())).json()
        assert status["mqtt"]["connected"] is True
