"""MQTT output: committed events published QoS 1 to `{topic_prefix}/{store}/{kind}`.

One `MqttOutput` per `[[outputs]] kind = "mqtt"`, opened by `open_mqtt_output` (the
`OutputFactory` of `worker.sinks.outputs`). The outbox's delivery task calls `deliver(page)`;
it returns only once the broker PUBACKed every event of the page, else raises `SinkError`.

Wire format
-----------
Topic `{topic_prefix}/{store}/{kind}`; payload the JSON object `{"event_id", "kind", "store",
"at", "body"}` with `body` the committed JSON verbatim (`msgspec.Raw`); MQTT 5 properties
Content Type `application/json`, Payload Format Indicator 1 (UTF-8) and a User Property
`event_id` (consumers can dedup without parsing). Not retained.

Invariants
----------
1. At least once: `deliver` returns only after every PUBLISH of the page got its PUBACK on
   the current connection; any timeout or disconnect raises a retriable `SinkError` and the
   outbox re-delivers the whole page, so a consumer may see an event twice and dedups by
   `event_id` (stable per fact, see `OutEvent`).
2. One connection at a time, a fresh aiomqtt client per connection (clean start, no session
   kept): a dead client's paho queue still holds un-acked messages and would re-send them on
   its own reconnect; a fresh one sends exactly the page being delivered. The next `deliver`
   after a loss connects again; a failed connect is a retriable `SinkError` naming the
   config field. No background task of ours outlives a `deliver`: nothing can die silently.
3. At most `max_inflight` PUBLISHes un-acked (our semaphore, and paho's own in-flight window
   set to the same value, whose default of 20 would otherwise queue the rest inside paho).
4. Bad topic segments (a wildcard, a `/`, NUL, empty) are fatal: retrying cannot help.

What aiomqtt 2.5.1's `publish(qos=1)` does (read in its source and paho 2.2's): it calls
paho's `publish`, then waits on an `asyncio.Event` set by paho's `on_publish`, which fires on
the PUBACK, bounded by `timeout` (`MqttError("Operation timed out")`). Two gaps we handle or
document: (a) a lost connection does not wake pending publishes (they wait for the timeout),
so each page races its publishes against `client.messages`, which raises `MqttError` as soon
as the client is disconnected; (b) aiomqtt's `on_publish` ignores the PUBACK reason code, so
a broker refusing a PUBLISH with an MQTT 5 reason >= 0x80 (0x87 not authorized by an ACL,
0x97 quota exceeded) is reported as published. There is no public way around it in 2.x
(aiomqtt 3 raises `NegativeAckError`); grant the output's client id publish rights on its
prefix. See docs/mqtt_output.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Final

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from worker.config import Config, MqttOutputConfig, RecordKind
from worker.errors import SinkError
from worker.sinks.outputs import OutEvent

log = logging.getLogger("possync.outputs.mqtt")

CONTENT_TYPE: Final = "application/json"
_MAX_TOPIC_BYTES: Final = 65535  # MQTT's UTF-8 string limit
_FORBIDDEN: Final = ("+", "#", "/", "\x00")
_KINDS: Final[frozenset[str]] = frozenset(
    ("customer", "product", "sale", "void", "trigger", "manifest")
)


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """The payload as consumers receive it (fixed here, not by `OutEvent`'s field list)."""

    event_id: str
    kind: RecordKind
    store: str
    at: datetime
    body: msgspec.Raw


_encode = msgspec.json.Encoder().encode


def default_client_id(cfg: Config, out: MqttOutputConfig) -> str:
    """`possync-out-<name>-<instance id or hostname-pid>`, unless `client_id` is set."""
    if out.client_id:
        return out.client_id
    instance = cfg.instance.id or f"{socket.gethostname()}-{os.getpid()}"
    return f"possync-out-{out.name}-{instance}"


def check_prefix(prefix: str) -> str | None:
    """Why `prefix` cannot start a topic, or None (levels: no wildcard, NUL, empty, `$`)."""
    if not prefix:
        return "must not be empty"
    if prefix.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    for level in prefix.split("/"):
        if not level:
            return "must not have an empty level"
        if any(c in level for c in ("+", "#", "\x00")):
            return "must not contain a wildcard or NUL"
    return None


def topic_of(prefix: str, event: OutEvent) -> str:
    """`{prefix}/{store}/{kind}`; fatal `SinkError` naming the field if a segment is unsafe."""
    if not event.store or any(c in event.store for c in _FORBIDDEN):
        raise SinkError("store is not a safe topic level", retriable=False, field="store")
    if event.kind not in _KINDS:
        raise SinkError("kind is not a record kind", retriable=False, field="kind")
    topic = f"{prefix}/{event.store}/{event.kind}"
    if len(topic.encode()) > _MAX_TOPIC_BYTES:
        raise SinkError("topic longer than 65535 bytes", retriable=False, field="store")
    return topic


def payload_of(event: OutEvent) -> bytes:
    """The JSON payload of one event (body verbatim)."""
    return _encode(
        Wire(
            event_id=event.event_id,
            kind=event.kind,
            store=event.store,
            at=event.at,
            body=event.body,
        )
    )


def properties_of(event: OutEvent) -> Properties:
    """MQTT 5 PUBLISH properties: content type, UTF-8 payload, `event_id` user property."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = CONTENT_TYPE
    props.PayloadFormatIndicator = 1
    props.UserProperty = [("event_id", event.event_id)]
    return props


class MqttOutput:
    """Publishes pages of committed events QoS 1; one aiomqtt client at a time."""

    def __init__(self, cfg: Config, out: MqttOutputConfig, index: int) -> None:
        self.name = out.name
        self.out = out
        self.client_id = default_client_id(cfg, out)
        self.field = f"$.outputs[{index}]"
        self.timeout_s = float(out.keepalive_s)
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()  # one page at a time: pages stay in order per output
        self.connects = 0  # successful connections (a reconnect shows as > 1)

    @property
    def connected(self) -> bool:
        """A client is open (it may have been lost since the last page)."""
        return self._client is not None

    async def deliver(self, events: Sequence[OutEvent]) -> None:
        """Publish every event QoS 1; return once every PUBACK arrived, else raise SinkError."""
        if not events:
            return
        prefix = self.out.topic_prefix
        msgs = [(topic_of(prefix, e), payload_of(e), properties_of(e)) for e in events]
        async with self._lock:
            client = await self._connect()
            try:
                await self._page(client, msgs)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                await self._drop()
                raise SinkError(
                    f"MQTT output {self.name}: page not acknowledged ({type(exc).__name__})",
                    retriable=True,
                    field=f"{self.field}.host",
                ) from None

    async def _page(
        self, client: aiomqtt.Client, msgs: list[tuple[str, bytes, Properties]]
    ) -> None:
        sem = asyncio.Semaphore(self.out.max_inflight)

        async def one(topic: str, payload: bytes, props: Properties) -> None:
            async with sem:
                await client.publish(
                    topic, payload, qos=1, properties=props, timeout=self.timeout_s
                )

        # A lost connection never wakes aiomqtt's pending publishes: race them against the
        # message iterator, which raises as soon as the client is disconnected.
        lost: asyncio.Future[None] = asyncio.ensure_future(_until_lost(client))
        pubs = [asyncio.ensure_future(one(*m)) for m in msgs]
        page: asyncio.Future[list[None]] = asyncio.gather(*pubs)
        try:
            waiters: list[asyncio.Future[object]] = [page, lost]  # type: ignore[list-item]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if page.done():
                page.result()  # raises the first publish error
                return
            lost.result()  # raises MqttError (the connection is gone)
            raise aiomqtt.MqttError("disconnected")
        finally:
            for fut in (*pubs, lost):
                fut.cancel()
            await asyncio.gather(*pubs, lost, page, return_exceptions=True)

    async def _connect(self) -> aiomqtt.Client:
        if self._client is not None:
            return self._client
        out = self.out
        client = aiomqtt.Client(
            out.host,
            out.port,
            username=out.username,
            password=out.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
            keepalive=out.keepalive_s,
            timeout=self.timeout_s,
            max_inflight_messages=min(out.max_inflight, 65535),
        )
        try:
            await client.__aenter__()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise SinkError(
                f"MQTT output {self.name}: cannot connect to the broker "
                f"({type(exc).__name__}); check host and port",
                retriable=True,
                field=f"{self.field}.port",
            ) from None
        self._client = client
        self.connects += 1
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # A lost client's __aexit__ returns at once; a live one (a timeout) sends DISCONNECT.
        try:
            await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            log.warning("MQTT output %s: disconnect failed (%s)", self.name, type(exc).__name__)

    async def close(self) -> None:
        """Disconnect (waits for any page being delivered)."""
        async with self._lock:
            await self._drop()


async def _until_lost(client: aiomqtt.Client) -> None:
    # We subscribe to nothing, so the iterator yields nothing until it raises on disconnect.
    async for _ in client.messages:
        pass


@contextlib.asynccontextmanager
async def open_mqtt_output(cfg: Config, out: MqttOutputConfig) -> AsyncIterator[MqttOutput]:
    """The `OutputFactory` for kind "mqtt": validate, try a first connect, yield, disconnect.

    A broker down at start-up does not fail the start: the outbox holds the events and the
    first `deliver` reports the connect failure as a retriable `SinkError`.
    """
    index = next((i for i, o in enumerate(cfg.outputs) if o.name == out.name), 0)
    why = check_prefix(out.topic_prefix)
    if why is not None:
        raise SinkError(
            f"topic_prefix {why}", retriable=False, field=f"$.outputs[{index}].topic_prefix"
        )
    output = MqttOutput(cfg, out, index)
    try:
        await output._connect()
    except SinkError as exc:
        log.warning("MQTT output %s: %s (retried on delivery)", out.name, exc.message)
    try:
        yield output
    finally:
        await output.close()
