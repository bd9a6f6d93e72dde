"""MQTT faults against the real `possync serve` subprocess and a real Mosquitto.

(a) kill -9 between receipt and the durable write. The store's spool cap is small, so once
    it is reached every further message is received but refused by the spool (`SpoolFull`,
    transient): the source holds it un-acked and retries locally. The worker is killed
    with SIGKILL while those messages are held, then restarted with room in the spool. The
    broker re-sends every un-acked message on the resumed session; every QoS 1 message ends
    up in the spool, and after a window commit in the sink, exactly once.
(b) the broker is restarted (SIGTERM, persistence on) under load from a paho publisher
    thread that re-publishes each id until it gets a PUBACK. Afterwards every published id
    is in the spool, and after a commit in the sink, exactly once.

Quick mode in `make test`; long mode (`POSSYNC_LONG=1`, marker `long`) has more messages and
more broker restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.peek import column
from tests.procserver import ADMIN, ServerProcess, free_port, sale_body, write_config

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.mosquitto"]

ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
TOPIC = "pos/canonical/S1/sale"


def _config(tmp: Path, port: int, broker_port: int, cap: int) -> Path:
    return write_config(
        tmp,
        port,
        spool={"max_records_per_store": cap, "retry_after_s": 1},
        mqtt={
            "enabled": True,
            "host": "127.0.0.1",
            "port": broker_port,
            "client_id": "possync-chaos",
            "reconnect_max_s": 1.0,
        },
    )


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/status", headers=ADMIN_H) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def _until(
    session: aiohttp.ClientSession,
    url: str,
    cond: Callable[[dict[str, Any]], bool],
    limit_s: float = 30.0,
) -> dict[str, Any]:
    """Poll /status until `cond` holds (a subprocess offers no event); bounded."""

    async def poll() -> dict[str, Any]:
        while True:
            st = await _status(session, url)
            # A dead subscriber never recovers: fail now instead of at the time limit.
            assert not st.get("mqtt", {}).get("failure"), st["mqtt"]
            if cond(st):
                return st
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(poll(), limit_s)
    except TimeoutError:
        raise AssertionError(f"condition not reached: {await _status(session, url)}") from None


async def _commit(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(f"{url}/v1/admin/commit?store=S1", headers=ADMIN_H) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return int(body["stores"]["S1"]["committed"])


def _tally(tmp: Path, ids: list[str]) -> tuple[Counter[str], Counter[str], set[str], int]:
    """Spool rows and sink rows by id, the ids the sink lacks, and the extra sink copies."""
    spooled = Counter(column(tmp / "data" / "spool.db", "SELECT rid FROM spool"))
    sink = Counter(column(tmp / "data" / "clientbook.db", "SELECT id FROM sales WHERE store='S1'"))
    return spooled, sink, set(ids) - set(sink), sum(c - 1 for c in sink.values() if c > 1)


def _exactly_once(tmp: Path, ids: list[str], committed: int, figures: str) -> None:
    """Every id in the spool once and in the sink once, none lost, none doubled, all committed.
    The run's `figures` are printed first, with the commit's, so a failure shows them."""
    spooled, sink, lost, duplicated = _tally(tmp, ids)
    print(f"{figures} committed={committed} lost={len(lost)} duplicated={duplicated}")
    assert set(spooled) == set(ids) and max(spooled.values()) == 1, spooled
    assert not lost, sorted(lost)[:10]
    assert not duplicated, sink.most_common(3)
    assert committed == len(ids)


def _publish_all(port: int, ids: list[str]) -> None:
    """Publish each id at QoS 1 and wait for the broker's PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pos-gateway-a")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(TOPIC, sale_body(sid), qos=1) for sid in ids]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def test_kill9_between_receipt_and_durable_write(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    total, cap = 40, 10
    port = free_port()
    log = tmp_path / "server.log"
    server = ServerProcess(_config(tmp_path, port, mosquitto.port, cap), port, log)
    ids = [f"MQ-{n}" for n in range(total)]
    try:
        await server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await _until(session, server.url, lambda s: s["mqtt"]["subscribed"])
            await asyncio.to_thread(_publish_all, mosquitto.port, ids)
            # The spool took `cap`; later arrivals are held un-acked and retried.
            st = await _until(
                session,
                server.url,
                lambda s: (
                    s["mqtt"]["received"] > cap  # broker sends <= 20 un-acked at a time
                    and s["spool"]["pending"] >= cap
                    and s["mqtt"]["retries"] >= 1
                ),
            )
            # Acks go out in arrival order: a durable message behind a held one stays un-acked.
            assert st["mqtt"]["acked"] <= cap, st["mqtt"]
            held = st["mqtt"]["received"] - st["mqtt"]["acked"]
            server.kill9()
            await server.wait()
        spooled_at_kill = column(tmp_path / "data" / "spool.db", "SELECT rid FROM spool")
        assert len(spooled_at_kill) == cap

        # Restart with room in the spool: the broker re-sends what was never acked.
        _config(tmp_path, port, mosquitto.port, 10_000)
        await server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            st = await _until(
                session,
                server.url,
                lambda s: (
                    s["stores"]["S1"]["pending"] >= total and s["mqtt"]["acked"] >= total - cap
                ),
            )
            redelivered = st["mqtt"]["redelivered"]
            committed = await _commit(session, server.url)
        _exactly_once(
            tmp_path,
            ids,
            committed,
            f"mqtt-kill9: published={total} spooled_before_kill={cap} held_unacked={held}"
            f" redelivered={redelivered}",
        )
        assert redelivered >= 1
    finally:
        await server.stop()


def _back_after(restarts: int) -> Callable[[dict[str, Any]], bool]:
    """Status predicate: subscribed again after `restarts` reconnects."""
    return lambda s: bool(s["mqtt"]["subscribed"] and s["mqtt"]["reconnects"] >= restarts)


class _Publisher(threading.Thread):
    """Publishes ids at QoS 1, re-publishing each one until the broker PUBACKs it.

    At `threshold` acks it sets `reached` and waits for `resume` (the test raises the
    threshold, then resumes it as it restarts the broker): so every restart falls while ids
    are still to be published, however fast the broker acks (without the pause, a fast run
    published everything before the later restarts and the test waited for nothing).
    """

    def __init__(self, port: int, ids: list[str], threshold: int) -> None:
        super().__init__(daemon=True, name="mqtt-publisher")
        self.port = port
        self.ids = ids
        self.threshold = threshold
        self.acked: list[str] = []
        self.republished = 0
        self.reached = threading.Event()
        self.resume = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pos-gateway-b")
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        try:
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            for sid in self.ids:
                while not self.stop.is_set():
                    if not client.is_connected():
                        # Publishing while paho reconnects only queues copies behind copies:
                        # wait for the connection (stop-aware), then send once.
                        self.stop.wait(0.05)
                        continue
                    info = client.publish(TOPIC, sale_body(sid), qos=1)
                    with contextlib.suppress(RuntimeError, ValueError):
                        info.wait_for_publish(timeout=2)
                    if info.is_published():
                        break
                    self.republished += 1  # no PUBACK (broker away): send it again
                self.acked.append(sid)
                if len(self.acked) >= self.threshold:
                    self.reached.set()
                    self.resume.wait()  # set by the test (or by its cleanup, with `stop`)
                    self.resume.clear()
        except BaseException as exc:
            self.error = exc
        finally:
            self.reached.set()
            client.disconnect()
            client.loop_stop()


async def _broker_restart_under_load(
    tmp_path: Path, mosquitto: MosquittoServer, total: int, restarts: int
) -> None:
    port = free_port()
    server = ServerProcess(
        _config(tmp_path, port, mosquitto.port, 1_000_000), port, tmp_path / "server.log"
    )
    ids = [f"BR-{n}" for n in range(total)]
    publisher: _Publisher | None = None
    try:
        await server.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await _until(session, server.url, lambda s: s["mqtt"]["subscribed"])
            step = total // (restarts + 1)
            publisher = _Publisher(mosquitto.port, ids, step)
            publisher.start()
            for k in range(restarts):
                reached = await asyncio.to_thread(publisher.reached.wait, 60)
                assert reached, (k, len(publisher.acked), publisher.republished, publisher.error)
                publisher.reached.clear()
                # The last step runs to the end: no pause after the last restart.
                publisher.threshold = step * (k + 2) if k + 1 < restarts else total + 1
                publisher.resume.set()
                await asyncio.to_thread(mosquitto.restart)
                # The worker must be back before the next restart, or restarts blur into one.
                await _until(session, server.url, _back_after(k + 1))
            await asyncio.to_thread(publisher.join, 120)
            assert not publisher.is_alive()
            assert publisher.error is None, publisher.error
            assert publisher.acked == ids
            st = await _until(
                session,
                server.url,
                lambda s: s["stores"]["S1"]["pending"] >= total and s["mqtt"]["connected"],
                limit_s=60,
            )
            committed = await _commit(session, server.url)
        _exactly_once(
            tmp_path,
            ids,
            committed,
            f"mqtt-broker-restart: published={total} broker_restarts={restarts}"
            f" republished={publisher.republished} reconnects={st['mqtt']['reconnects']}"
            f" redelivered={st['mqtt']['redelivered']}",
        )
        assert st["mqtt"]["reconnects"] >= restarts
    finally:
        if publisher is not None:
            publisher.stop.set()
            publisher.resume.set()
            await asyncio.to_thread(publisher.join, 10)
        await server.stop()


async def test_broker_restart_under_load(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    await _broker_restart_under_load(tmp_path, mosquitto, total=3000, restarts=6)


@pytest.mark.long
@pytest.mark.timeout(900)
async def test_broker_restart_under_load_long(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    await _broker_restart_under_load(tmp_path, mosquitto, total=30_000, restarts=10)
