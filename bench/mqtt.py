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

Both consumers are connected for the whole measure, each on its own topic, and drain
backlogs the same way, so the publisher's own speed is in neither figure: a warm-up
(`warmup` messages, waited for until all are acked), then per round and per consumer
(baseline first): the consumer process is paused (SIGSTOP, by its pid), the bench's paho
publisher publishes the round's `messages` at QoS 1 (the broker queues them on the
consumer's session), the clock starts and the consumer resumes (SIGCONT); the clock stops
at its last ack. Same payloads (canonical single-sale JSON, `bench.data`, new ids every
round), same count, same broker, same run; the median round of each consumer counts.

The baseline's stop time is taken by the subscriber itself, at its last `on_message`
(paho sends that PUBACK as the callback returns; CLOCK_MONOTONIC is one clock for every
process). possync's is its own PUBACK counter, `/status` -> `mqtt.acked`; but `/status`
costs possync ~3 ms of work per call, so it is asked only once the spool holds every
message (`GET /v1/stores/LIVE/spool` every `poll_s`; a PUBACK follows its fsync at once,
in order), then every 2 ms until the count is reached. The stop time is late by up to about
one `poll_s` plus two answers, and the polls cost possync work: both count against possync,
never for it. `poll_s` is 50 ms: each spool answer runs a query (the oldest pending row) on
the spool's own connection thread, the one that group-commits, and at 10 ms those queries
took 17% of that thread during the drain (py-spy, `bench.profile mqtt`), where a 50 ms poll
costs at most 1-2% of a several-second drain in lateness.

The spool groups' count, size and commit time are read from possync's /metrics before and
after the rounds (`spool_groups`): the share of the drain the writer spent committing says
whether the fsync pipeline (bounded by Receive Maximum messages in flight) or the event
loop is the limit.
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
from bench.procs import ADMIN, free_port, possync_proc, spool_pending, wait_ready, write_config
from bench.report import Row, fmt_rate
from worker.config import MqttConfig, load

HOST = "127.0.0.1"
TARGET = 0.7  # issue 11: MQTT QoS 1 intake >= 0.7x the auto-acking client
POSSYNC_TOPIC = "pos/canonical/LIVE/sale"
BASELINE_TOPIC = "bench/canonical/LIVE/sale"  # outside possync's subscription pos/+/+/+
_ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}


@dataclass(frozen=True)
class MqttSettings:
    """How many messages each consumer drains per round (measured), after the warm-up."""

    messages: int
    warmup: int
    rounds: int = 1  # interleaved drains (baseline, possync); the median of each counts
    poll_s: float = 0.05


def payloads(n: int) -> list[bytes]:
    """`n` canonical single-sale records (distinct ids), the same bytes for both consumers."""
    stream = data.SaleStream(
        "MQ-", n, seed=8, origin=None, returns=0.0, location="LIVE",
        start=data.HISTORY_END, end=data.HISTORY_END,
    )  # fmt: skip
    return list(stream)


_OUTSTANDING = 50_000


def _published(info: paho.MQTTMessageInfo, topic: str) -> None:
    info.wait_for_publish(timeout=300)
    if not info.is_published():
        raise RuntimeError(f"publish to {topic}: no PUBACK from the broker")


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
        # Message ids are 16 bits: at most _OUTSTANDING unacknowledged at once, or paho
        # refuses a publish whose id is still in flight (ERR_QUEUE_SIZE; the full run's
        # 100,000-message rounds hit it).
        infos: list[paho.MQTTMessageInfo] = []
        for i, body in enumerate(bodies):
            if i >= _OUTSTANDING:
                _published(infos[i - _OUTSTANDING], topic)
            infos.append(client.publish(topic, body, qos=1))
        for info in infos[-_OUTSTANDING:]:
            _published(info, topic)
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

    @classmethod
    async def start(cls, port: int, marks: list[int], mqtt_cfg: MqttConfig) -> _Subscriber:
        argv = [
            sys.executable, "-m", "bench.mqtt", "subscribe", "--port", str(port),
            "--topic", BASELINE_TOPIC, "--marks", ",".join(map(str, marks)),
            "--receive-max", str(mqtt_cfg.max_inflight),
            "--keepalive", str(mqtt_cfg.keepalive_s),
        ]  # fmt: skip
        sub = cls(await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE))
        try:
            if (await sub._line(60))[0] != "subscribed":
                raise RuntimeError("baseline subscriber: no SUBACK")
        except BaseException:
            await sub.stop()
            raise
        return sub

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _line(self, timeout_s: float) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not raw:
            raise RuntimeError("baseline subscriber exited early")
        return raw.decode().split()

    async def drained(self, count: int) -> float:
        """The monotonic time of the subscriber's `count`-th message."""
        mark = await self._line(1200)
        if mark[0] != "mark" or int(mark[1]) != count:
            raise RuntimeError(f"baseline subscriber: {mark}, expected mark {count}")
        return float(mark[2])

    async def finish(self, total: int) -> int:
        """Its closing line: every message received, no disconnect; the count."""
        tail = await self._line(30)
        if tail[0] != "done" or int(tail[1]) != total or int(tail[2]) != 0:
            raise RuntimeError(f"baseline subscriber: {tail}, expected done {total} 0")
        return int(tail[1])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


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
    """Poll until possync has sent `count` PUBACKs; (monotonic time seen, mqtt state).

    Another process's counters: polling is the only view. The cheap spool count first,
    the costly `/status` only for the last few ms (see the module docstring).
    """
    deadline = time.monotonic() + timeout_s
    seen, moved = -1, time.monotonic()
    while (pending := await spool_pending(session, base)) < count:
        now = time.monotonic()
        if pending != seen:
            seen, moved = pending, now
        elif now - moved > 5.0 or now > deadline:  # stuck: say why rather than wait it out
            state = await _mqtt_state(session, base)
            if state["rejected"] or state["retries"] or now > deadline:
                raise RuntimeError(f"possync spooled {pending} of {count} messages: {state}")
            moved = now
        await asyncio.sleep(s.poll_s)
    while True:
        state = await _mqtt_state(session, base)
        if state["acked"] >= count:
            return time.monotonic(), state
        if state["rejected"] or state["retries"] or time.monotonic() > deadline:
            raise RuntimeError(f"possync MQTT intake: {state}")
        await asyncio.sleep(0.002)


async def spool_groups(session: aiohttp.ClientSession, base: str) -> tuple[float, float, float]:
    """(records, groups, seconds) the spool has group-committed so far, from /metrics."""
    async with session.get(f"{base}/metrics", headers=_ADMIN_H) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"/metrics: {resp.status}")
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (
            "possync_spool_group_size_records_sum",
            "possync_spool_group_size_records_count",
            "possync_spool_group_commit_duration_seconds_sum",
        ):
            found[name] = float(value)
    return (
        found.get("possync_spool_group_size_records_sum", 0.0),
        found.get("possync_spool_group_size_records_count", 0.0),
        found.get("possync_spool_group_commit_duration_seconds_sum", 0.0),
    )


class _Possync:
    """possync as a consumer: its pid, and its own PUBACK count as the stop time."""

    def __init__(
        self, pid: int, session: aiohttp.ClientSession, base: str, s: MqttSettings
    ) -> None:
        self.pid, self.session, self.base, self.s = pid, session, base, s
        self.state: dict[str, Any] = {}

    async def drained(self, count: int) -> float:
        t1, self.state = await _acked(self.session, self.base, count, self.s, 1200)
        return t1


async def _drain(
    consumer: _Subscriber | _Possync, port: int, topic: str, bodies: list[bytes], count: int
) -> tuple[float, float]:
    """Queue `bodies` while the consumer is paused, resume it, time it to its `count`-th ack."""
    with paused(consumer.pid):
        pub_s = await asyncio.to_thread(publish_all, port, topic, bodies)
        t0 = time.monotonic()  # before SIGCONT: the resume itself is in the figure
    return await consumer.drained(count) - t0, pub_s


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


# ---------------------------------------------------------------------------- run


async def run(workdir: Path, s: MqttSettings) -> list[Row]:
    """P8: one broker, both consumers; `rounds` interleaved drains (baseline, possync)."""
    from tests.plugins.mosquitto import MosquittoServer

    n, total = s.messages, s.warmup + s.rounds * s.messages
    broker = MosquittoServer(
        workdir / "mosquitto",
        # Each backlog is queued on the paused consumer's session: room for all of it.
        extra_conf=[f"max_queued_messages {2 * total}"],
    )
    d = workdir / "possync"
    d.mkdir()
    cfg = write_config(d / "possync.toml", d / "data", free_port(), ["LIVE"], mqtt_port=broker.port)
    config = load(cfg)
    base_url = f"http://127.0.0.1:{config.http.port}"
    everything = payloads(total)  # distinct ids in every round: no duplicate is cheaper
    warm = everything[: s.warmup]
    rounds = [everything[s.warmup + i * n : s.warmup + (i + 1) * n] for i in range(s.rounds)]
    size = sum(map(len, everything)) / len(everything)
    print(
        f"  {s.rounds} x {n:,} messages of {size:,.0f} bytes (+{len(warm):,} warm-up)",
        flush=True,
    )
    marks = [s.warmup + i * n for i in range(s.rounds + 1)]
    base_s: list[float] = []
    ours_s: list[float] = []
    publish_s: list[float] = []
    broker.start()
    try:
        sub = await _Subscriber.start(broker.port, marks, config.mqtt)
        try:
            with possync_proc(cfg, d / "server.log") as proc:
                await wait_ready(proc, f"{base_url}/readyz", headers=_ADMIN_H)  # subscribed
                async with aiohttp.ClientSession() as session:
                    ours = _Possync(proc.pid, session, base_url, s)
                    await asyncio.to_thread(publish_all, broker.port, BASELINE_TOPIC, warm)
                    await sub.drained(s.warmup)
                    await asyncio.to_thread(publish_all, broker.port, POSSYNC_TOPIC, warm)
                    await ours.drained(s.warmup)
                    before = dict(ours.state)
                    groups_before = await spool_groups(session, base_url)
                    for i, bodies in enumerate(rounds):
                        count = marks[i + 1]
                        b, pb = await _drain(sub, broker.port, BASELINE_TOPIC, bodies, count)
                        o, po = await _drain(ours, broker.port, POSSYNC_TOPIC, bodies, count)
                        base_s.append(b)
                        ours_s.append(o)
                        publish_s += [pb, po]
                        print(
                            f"  round {i + 1}: baseline (paho auto-ack) {n / b:,.0f} msg/s, "
                            f"possync (PUBACK after fsync) {n / o:,.0f} msg/s",
                            flush=True,
                        )
                    pending = await spool_pending(session, base_url)
                    groups_after = await spool_groups(session, base_url)
            received = await sub.finish(total)
        finally:
            await sub.stop()
    finally:
        broker.stop()
    state = ours.state
    if state["reconnects"] != before["reconnects"]:
        raise RuntimeError("possync reconnected during the measure (keepalive lost while paused)")
    if pending < total or state["acked"] < total or state["rejected"] or state["retries"]:
        raise RuntimeError(f"spool holds {pending} sales, {total} were sent: {state}")
    rate, base_rate = n / _median(ours_s), n / _median(base_s)
    grouped = groups_after[0] - groups_before[0]
    groups = groups_after[1] - groups_before[1]
    per_group = grouped / groups if groups else 0.0
    committing = groups_after[2] - groups_before[2]  # summed over every round
    busy = committing / sum(ours_s)
    print(
        f"  possync: {groups:,.0f} spool groups, {per_group:,.1f} messages each, "
        f"{1000 * committing / groups if groups else 0.0:.1f} ms each; the spool writer "
        f"committed {100 * busy:.0f}% of the drain time",
        flush=True,
    )
    ratio = rate / base_rate
    how = f", median of {s.rounds} rounds" if s.rounds > 1 else ""
    return [
        Row(
            "mqtt",
            f"P8 MQTT QoS 1 intake, PUBACK after the fsync, {n:,} queued messages "
            f"(Mosquitto, Receive Maximum {config.mqtt.max_inflight}{how})",
            rate,
            fmt_rate(rate, "msg/s"),
            base_rate,
            fmt_rate(base_rate, "msg/s") + " paho auto-ack",
            ratio,
            f">= {TARGET}x",
            ratio >= TARGET,
            {
                "messages": n,
                "rounds": s.rounds,
                "possync_seconds": ours_s,
                "baseline_seconds": base_s,
                "publish_seconds": publish_s,
                "baseline_received": received,
                "possync_acked": state["acked"],
                "spool_pending": pending,
                "possync_mqtt": state,
                "bytes_per_message": size,
                "spool_groups": groups,
                "messages_per_group": per_group,
                "group_commit_seconds": committing,
            },
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
