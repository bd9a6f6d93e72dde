"""Two `possync serve` instances on one PostgreSQL and one Mosquitto; kill -9 the one committing.

Both instances configure the same stores (S1, S2), the PostgreSQL sink on one database, a
shared MQTT subscription (`[mqtt] shared_group`, so the broker splits `pos/...` between them)
and `[instance] lock_wait_s`, so a window that finds the store's lock held waits its turn.
Each round: sales are pushed over HTTP to both instances (some of the same sales to both) and
published over MQTT (split by the broker); once both instances acknowledged every MQTT
message (their /status, a bounded poll across the process boundary) a window is triggered
on both at once (`POST /v1/admin/commit`). The instance PostgreSQL names as the holder of a
store's advisory lock (`pg_locks` + `application_name`) is killed with SIGKILL while it holds
it; the other waits on the lock, takes it when the dead session ends and commits its part.
The killed one restarts (same client id: the broker re-sends what it never acked), and
windows run on both until their spools are empty.

Oracle: every sale that got a 202 or a broker PUBACK is in `sales` exactly once, and every
sale has exactly one trigger event in the outbox and one delivered event. Quick mode: 2
kills; long mode (`POSSYNC_LONG=1`, marker `long`): 20.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.factories import one_line_sale
from tests.procserver import ADMIN, ServerProcess, free_port
from tests.support.config import config_dict, store, write_toml

if TYPE_CHECKING:
    from tests.plugins.mosquitto import MosquittoServer

pytest_plugins = ["tests.plugins.postgres", "tests.plugins.mosquitto"]

LONG = bool(os.environ.get("POSSYNC_LONG"))
STORES = {"S1": "tok-s1-instances", "S2": "tok-s2-instances"}
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
CUSTOMER = "C-1"
GROUP = "possync"


def _config(tmp: Path, name: str, port: int, dsn: str, broker: int) -> Path:
    raw = config_dict(
        tmp / name / "data",
        admin_token=ADMIN,
        stores=[store(sid, tok) for sid, tok in STORES.items()],
        http={"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 5},
        # Small pages make a window long enough (many sink transactions) to be killed in.
        windows={"batch_size": 25, "commit_retry_max_s": 1, "admin_commit_timeout_s": 120},
        sink={"kind": "postgres", "dsn": dsn, "pool_max": 4, "command_timeout_s": 10},
        mqtt={
            "enabled": True,
            "port": broker,
            "client_id": f"possync-{name}",
            "shared_group": GROUP,
            "reconnect_max_s": 1,
        },
        instance={"id": name, "lock_wait_s": 60},
        inbox={"enabled": False},
        triggers=[{"name": "thank-you", "days_after": 0}],
    )
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return write_toml(tmp / name / "possync.toml", raw)


def _sale(sid: str) -> bytes:
    return orjson.dumps(
        one_line_sale(sid, "2026-11-20T10:00:00-05:00", price="100.00", customer_id=CUSTOMER)
    )


async def _post(session: aiohttp.ClientSession, url: str, sid: str, body: bytes) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {STORES[sid]}", "Content-Type": "application/x-ndjson"}
    async with session.post(f"{url}/v1/push/canonical/{sid}", data=body, headers=h) as resp:
        got: dict[str, Any] = await resp.json()
        assert resp.status == 202, got
        return got


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/status", headers=ADMIN_H) as resp:
        got: dict[str, Any] = await resp.json()
        return got


async def _commit(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.post(f"{url}/v1/admin/commit", headers=ADMIN_H) as resp:
        got: dict[str, Any] = await resp.json()
        assert resp.status == 200, got
        return got


def _publish_all(broker: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 from one gateway connection; returns once the broker PUBACKed all."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pos-gateway-instances")
    client.connect("127.0.0.1", broker)
    client.loop_start()
    try:
        infos = [client.publish(topic, body, qos=1) for topic, body in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


async def _mqtt(session: aiohttp.ClientSession, servers: list[ServerProcess], key: str) -> int:
    total = 0
    for s in servers:
        total += int((await _status(session, s.url))["mqtt"][key])
    return total


async def _mqtt_reaches(
    session: aiohttp.ClientSession, servers: list[ServerProcess], key: str, total: int
) -> None:
    """Poll both /status until `mqtt.<key>` sums to `total` (bounded by the caller; a
    subprocess's counters have no event to wait on)."""
    while await _mqtt(session, servers, key) < total:  # noqa: ASYNC110 - see docstring
        await asyncio.sleep(0.05)


async def _holder(dsn: str) -> str:
    """Poll PostgreSQL until an instance holds a window lock; its id (bounded by the caller)."""
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            name = await conn.fetchval(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND a.application_name LIKE 'possync:%' LIMIT 1"
            )
            if isinstance(name, str):
                return name.removeprefix("possync:")
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def _drain(session: aiohttp.ClientSession, servers: list[ServerProcess]) -> None:
    """Windows on every instance until no spool holds a pending sale."""
    for _ in range(10):
        await asyncio.gather(*(_commit(session, s.url) for s in servers))
        pending = 0
        for s in servers:
            st = await _status(session, s.url)
            pending += sum(int(v["pending"]) for v in st["stores"].values())
        if pending == 0:
            return
    raise AssertionError(f"spools not drained: {pending} pending")


async def _sink(dsn: str) -> tuple[Counter[str], Counter[str], Counter[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        sales = Counter(
            f"{r['store']}/{r['id']}" for r in await conn.fetch("SELECT store, id FROM sales")
        )
        outbox = Counter(
            f"{r['store']}/{r['sale_id']}"
            for r in await conn.fetch("SELECT store, sale_id FROM trigger_outbox")
        )
        events = Counter(
            f"{r['store']}/{r['sale_id']}"
            for r in await conn.fetch("SELECT store, sale_id FROM trigger_events")
        )
        return sales, outbox, events
    finally:
        await conn.close()


async def _run(tmp_path: Path, dsn: str, mosquitto: MosquittoServer, kills: int) -> None:
    servers = {}
    for name in ("a", "b"):
        port = free_port()
        cfg = _config(tmp_path, name, port, dsn, mosquitto.port)
        servers[name] = ServerProcess(cfg, port, tmp_path / f"{name}.log")
    both = list(servers.values())
    accepted: set[str] = set()
    published = 0
    mid_window = 0
    got_here = dict.fromkeys(servers, 0)
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        await asyncio.gather(*(s.start() for s in both))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # Both members of the group subscribed before the first publish.
            await asyncio.wait_for(_mqtt_reaches(session, both, "subscribed", 2), 60)
            for s in both:  # the customer is upserted into PostgreSQL at once
                customer = orjson.dumps({"type": "customer", "id": CUSTOMER, "first_name": "A"})
                for sid in STORES:
                    await _post(session, s.url, sid, customer)
            for rnd in range(kills):
                for sid in STORES:
                    shared = [f"R{rnd}-both-{n}" for n in range(20)]
                    for name, s in servers.items():
                        ids = [f"R{rnd}-{name}-{n}" for n in range(150)] + shared
                        got = await _post(session, s.url, sid, b"\n".join(map(_sale, ids)))
                        assert got["accepted"] == len(ids), got
                        accepted |= {f"{sid}/{i}" for i in ids}
                mqtt_ids = [(sid, f"R{rnd}-mqtt-{n}") for sid in STORES for n in range(100)]
                messages = [(f"pos/canonical/{sid}/sale", _sale(i)) for sid, i in mqtt_ids]
                before = await _mqtt(session, both, "acked")
                each = {n: await _mqtt(session, [s], "acked") for n, s in servers.items()}
                await asyncio.to_thread(_publish_all, mosquitto.port, messages)
                accepted |= {f"{sid}/{i}" for sid, i in mqtt_ids}
                published += len(messages)
                await asyncio.wait_for(
                    _mqtt_reaches(session, both, "acked", before + len(messages)), 60
                )
                for n, s in servers.items():  # the broker split the group's messages
                    got_here[n] += await _mqtt(session, [s], "acked") - each[n]

                # The window on both at once; kill -9 whichever holds a store's lock.
                commits = {
                    n: asyncio.create_task(_commit(session, s.url)) for n, s in servers.items()
                }
                victim_name = await asyncio.wait_for(_holder(dsn), 60)
                victim = servers[victim_name]
                victim.kill9()  # it holds a store's lock: its commit has not answered
                await victim.wait()
                killed = commits.pop(victim_name)
                try:
                    await killed
                except aiohttp.ClientError:
                    mid_window += 1
                # The survivor waited on the lock and now commits its own part.
                (survivor,) = commits.values()
                res = await asyncio.wait_for(survivor, 120)
                assert all(v["skipped"] is None for v in res["stores"].values()), res
                await victim.start()
                # The restarted instance's MQTT session resumes: the broker re-sends what it
                # never acked; its spool kept everything it did.
            await _drain(session, both)
            status = {n: await _status(session, s.url) for n, s in servers.items()}
        for name, st in status.items():
            assert st["instance"]["id"] == name
            assert st["instance"]["locks_held"] == []
            assert st["instance"]["locks_waiting"] == []
    finally:
        for s in both:
            await s.stop()

    sales, outbox, events = await _sink(dsn)
    lost = accepted - set(sales)
    doubled = {k: c for k, c in sales.items() if c > 1}
    print(
        f"instances: kills={mid_window} accepted={len(accepted)} published_mqtt={published}"
        f" mqtt_split={got_here} in_sink={len(sales)} lost={len(lost)} duplicated={len(doubled)}"
        f" trigger_outbox={sum(outbox.values())} trigger_events={sum(events.values())}"
    )
    assert mid_window >= 1  # a kill that came after the answer is counted, not hidden
    assert not lost, sorted(lost)[:10]
    assert all(n > 0 for n in got_here.values()), got_here  # a shared, not a doubled, feed
    assert sum(got_here.values()) == published
    assert not doubled
    assert set(sales) == accepted
    assert outbox == Counter(dict.fromkeys(accepted, 1))
    assert events == Counter(dict.fromkeys(accepted, 1))


async def test_two_instances_kill9_mid_window_commit_each_sale_once(
    tmp_path: Path, postgres_dsn: str, mosquitto: MosquittoServer
) -> None:
    await _run(tmp_path, postgres_dsn, mosquitto, kills=2)


@pytest.mark.long
@pytest.mark.timeout(1800)
async def test_two_instances_kill9_mid_window_long(
    tmp_path: Path, postgres_dsn: str, mosquitto: MosquittoServer
) -> None:
    await _run(tmp_path, postgres_dsn, mosquitto, kills=20)
