"""Measure P8: MQTT QoS 1 intake (PUBACK after the fsync) vs the same paho client auto-acking.

One real Mosquitto for the whole measure, started as `tests/plugins/mosquitto.py` starts
one (`MosquittoServer`: generated config in the work directory, a free port on 127.0.0.1,
persistence in the work directory, readiness from its own "running" log line, stopped by
pid), and two consumers of it, one after the other:

* baseline: `python -m bench.mqtt subscribe`, a paho client (MQTT 5, with the Receive
  Maximum and keepalive possync announces, read from the config possync runs with) that subscribes at QoS 1 and lets paho ack each message
  as it is received (`manual_ack=False`): the whole job of an MQTT consumer, receive and
  ack, with no spool;
* possync: `possync serve` with `[mqtt]` enabled on the same broker; each message is
  decoded, spooled and fsynced (group commit), and only then acked.

Both drain the same backlog the same way, so the publisher's own speed is in neither
figure: a warm-up (`warmup` messages, waited for until all are acked), then the consumer
process is paused (SIGSTOP, by its pid), the bench's paho publisher publishes the
`messages` measured ones at QoS 1 (the broker queues them on the consumer's session), the
clock starts and the consumer resumes (SIGCONT); the clock stops at its last ack. Same
payloads (canonical single-sale JSON, `bench.data`), same count, same broker, same run.

The baseline's stop time is taken by the subscriber itself, at its last `on_message`
(paho sends that PUBACK as the callback returns; CLOCK_MONOTONIC is one clock for every
process). possync's is its own PUBACK counter (`/status` -> `mqtt.acked`) polled every
`poll_s`: late by at most one interval plus one answer, which counts against possync.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench import data
from bench.procs import ADMIN, free_port, possync_proc, wait_ready, write_config
from bench.report import Row, fmt_rate
from worker.config import MqttConfig, load

HOST = "127.0.0.1"
TARGET = 0.7  # issue 11: MQTT QoS 1 intake >= 0.7x the auto-acking client
POSSYNC_TOPIC = "pos/canonical/LIVE/sale"
BASELINE_TOPIC = "bench/canonical/LIVE/sale"  # outside possync's subscription pos/+/+/+
_ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


@dataclass(frozen=True)
class MqttSettings:
    """How many messages each consumer drains (measured), after how many warm-up ones."""

    messages: int
    warmup: int
    poll_s: float = 0.01


def payloads(n: int) -> list[bytes]:
    """`n` canonical single-sale records (distinct ids), the same bytes for both consumers."""
    stream = data.SaleStream(
        "MQ-", n, seed=8, origin=None, returns=0.0, location="LIVE",
        start=data.HISTORY_END, end=data.HISTORY_END,
    )  # fmt: skip
    return list(stream)


def publish_all(port: int, topic: str, bodies: list[bytes]) -> float:
    """Publish every body at QoS 1 and wait for the broker's PUBACKs; seconds it took."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(256)
    client.max_queued_messages_set(0)  # paho queues what exceeds the in-flight window
    t0 = time.monotonic()
    client.connect(HOST, port)
    client.loop_start()
    try:
        infos = [client.publish(topic, body, qos=1) for body in bodies]
        for info in infos:
            info.wait_for_publish(timeout=300)
            if not info.is_published():
                raise RuntimeError(f"publish to {topic}: no PUBACK from the broker")
        return time.monotonic() - t0
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` (a process this run started) for the block; SIGCONT on every exit."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------------------- baseline


class _Subscriber:
    """The baseline consumer's child process: prints `mark COUNT MONOTONIC` per mark."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout_s: float) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not raw:
            raise RuntimeError("baseline subscriber exited early")
        return raw.decode().split()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _baseline(
    port: int, warm: list[bytes], bodies: list[bytes], mqtt_cfg: MqttConfig
) -> dict[str, Any]:
    marks = f"{len(warm)},{len(warm) + len(bodies)}"
    argv = [
        sys.executable, "-m", "bench.mqtt", "subscribe", "--port", str(port),
        "--topic", BASELINE_TOPIC, "--marks", marks,
        "--receive-max", str(mqtt_cfg.max_inflight), "--keepalive", str(mqtt_cfg.keepalive_s),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    sub = _Subscriber(proc)
    try:
        if (await sub.line(60))[0] != "subscribed":
            raise RuntimeError("baseline subscriber: no SUBACK")
        await asyncio.to_thread(publish_all, port, BASELINE_TOPIC, warm)
        await sub.line(300)  # the warm-up is received and acked
        with paused(proc.pid):
            pub_s = await asyncio.to_thread(publish_all, port, BASELINE_TOPIC, bodies)
            t0 = time.monotonic()
        mark = await sub.line(600)
        seconds = float(mark[2]) - t0
        tail = await sub.line(30)
        if tail[0] != "done" or int(tail[1]) != len(warm) + len(bodies) or int(tail[2]) != 0:
            raise RuntimeError(f"baseline subscriber: {tail}")
        return {"seconds": seconds, "publish_seconds": pub_s, "received": int(tail[1])}
    finally:
        await sub.stop()


def subscribe_main(argv: list[str]) -> int:
    """`python -m bench.mqtt subscribe`: the auto-acking paho consumer (the baseline)."""
    p = argparse.ArgumentParser(prog="python -m bench.mqtt subscribe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--marks", required=True, help="comma-separated counts to report")
    p.add_argument("--receive-max", type=int, required=True)
    p.add_argument("--keepalive", type=int, required=True)
    args = p.parse_args(argv)
    marks = [int(x) for x in args.marks.split(",")]
    state = {"count": 0, "disconnects": 0}
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-autoack", protocol=paho.MQTTv5
    )

    def on_connect(c: paho.Client, u: object, f: object, rc: object, pr: object) -> None:
        c.subscribe(args.topic, qos=1)

    def on_subscribe(c: paho.Client, u: object, mid: int, codes: list[Any], pr: object) -> None:
        print("subscribed", flush=True)

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        state["count"] += 1  # paho sends the PUBACK as this returns (manual_ack=False)
        if state["count"] in marks:
            print(f"mark {state['count']} {time.monotonic():.6f}", flush=True)

    def on_disconnect(c: paho.Client, u: object, f: object, rc: object, pr: object) -> None:
        if state["count"] < marks[-1]:
            state["disconnects"] += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = args.receive_max
    client.connect(HOST, args.port, keepalive=args.keepalive, properties=props)
    # paho's own network loop, one step at a time (what loop_forever does), until the last
    # message is in; one more step writes its PUBACK before the DISCONNECT.
    while state["count"] < marks[-1]:
        if client.loop(timeout=1.0) != paho.MQTT_ERR_SUCCESS:
            state["disconnects"] += 1
            break
    client.loop(timeout=0.05)
    client.disconnect()
    print(f"done {state['count']} {state['disconnects']}", flush=True)
    return 0


# ---------------------------------------------------------------------------- possync


async def _mqtt_state(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/status", headers=_ADMIN_H) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"/status: {resp.status} {body}")
        state: dict[str, Any] = body["mqtt"]
        return state


async def _acked(
    session: aiohttp.ClientSession, base: str, count: int, s: MqttSettings, timeout_s: float
) -> tuple[float, dict[str, Any]]:
    """Poll until possync has sent `count` PUBACKs; (monotonic time seen, mqtt state)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await _mqtt_state(session, base)
        if state["acked"] >= count:
            return time.monotonic(), state
        if state["rejected"] or state["retries"]:
            raise RuntimeError(f"possync MQTT intake: {state}")
        await asyncio.sleep(s.poll_s)  # another process's counter: polling is the only view
    raise RuntimeError(f"possync acked fewer than {count} messages in {timeout_s:g} s")


async def _possync(
    workdir: Path,
    cfg: Path,
    broker_port: int,
    warm: list[bytes],
    bodies: list[bytes],
    s: MqttSettings,
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{load(cfg).http.port}"
    total = len(warm) + len(bodies)
    with possync_proc(cfg, workdir / "server.log") as proc:
        await wait_ready(proc, f"{base}/readyz", headers=_ADMIN_H)  # MQTT subscribed
        async with aiohttp.ClientSession() as session:
            await asyncio.to_thread(publish_all, broker_port, POSSYNC_TOPIC, warm)
            await _acked(session, base, len(warm), s, 300)
            before = await _mqtt_state(session, base)
            with paused(proc.pid):
                pub_s = await asyncio.to_thread(publish_all, broker_port, POSSYNC_TOPIC, bodies)
                t0 = time.monotonic()
            t1, state = await _acked(session, base, total, s, 1200)
            async with session.get(f"{base}/v1/stores/LIVE/spool", headers=_ADMIN_H) as resp:
                spool = await resp.json()
    if state["reconnects"] != before["reconnects"]:
        raise RuntimeError("possync reconnected during the measure (keepalive lost while paused)")
    if int(spool["pending"]) < total:
        raise RuntimeError(f"spool holds {spool['pending']} sales but {total} were acked")
    return {
        "seconds": t1 - t0,
        "publish_seconds": pub_s,
        "acked": state["acked"],
        "spool_pending": spool["pending"],
        "mqtt": state,
    }


# ---------------------------------------------------------------------------- run


async def run(workdir: Path, s: MqttSettings) -> list[Row]:
    """P8: one broker, the baseline drain then possync's; one row."""
    from tests.plugins.mosquitto import MosquittoServer

    broker = MosquittoServer(
        workdir / "mosquitto",
        # The backlog is queued on the paused consumer's session: room for all of it.
        extra_conf=[f"max_queued_messages {2 * (s.warmup + s.messages)}"],
    )
    d = workdir / "possync"
    d.mkdir()
    cfg = write_config(d / "possync.toml", d / "data", free_port(), ["LIVE"], mqtt_port=broker.port)
    mqtt_cfg = load(cfg).mqtt
    everything = payloads(s.warmup + s.messages)
    warm, bodies = everything[: s.warmup], everything[s.warmup :]
    size = sum(map(len, bodies)) / len(bodies)
    print(f"  {len(bodies):,} messages of {size:,.0f} bytes (+{len(warm):,} warm-up)", flush=True)
    broker.start()
    try:
        base = await _baseline(broker.port, warm, bodies, mqtt_cfg)
        base_rate = s.messages / base["seconds"]
        print(f"  baseline (paho auto-ack): {base_rate:,.0f} msg/s {base}", flush=True)
        ours = await _possync(d, cfg, broker.port, warm, bodies, s)
        rate = s.messages / ours["seconds"]
        print(f"  possync (PUBACK after fsync): {rate:,.0f} msg/s {ours}", flush=True)
    finally:
        broker.stop()
    ratio = rate / base_rate
    return [
        Row(
            "mqtt",
            f"P8 MQTT QoS 1 intake, PUBACK after the fsync, {s.messages:,} messages "
            f"(Mosquitto, Receive Maximum {mqtt_cfg.max_inflight})",
            rate,
            fmt_rate(rate, "msg/s"),
            base_rate,
            fmt_rate(base_rate, "msg/s") + " paho auto-ack",
            ratio,
            f">= {TARGET}x",
            ratio >= TARGET,
            {"possync": ours, "baseline": base, "bytes_per_message": size},
        )
    ]


def main() -> int:
    """`python -m bench.mqtt subscribe ...` (the baseline consumer, run by `run`)."""
    if len(sys.argv) > 1 and sys.argv[1] == "subscribe":
        return subscribe_main(sys.argv[2:])
    print("usage: python -m bench.mqtt subscribe --port N --topic T --marks A,B", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
