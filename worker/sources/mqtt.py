"""MQTT source: `{prefix}/{source}/{store}/{kind}` in, PUBACK only once the intake made it durable.

Why paho-mqtt directly, not aiomqtt
-----------------------------------
aiomqtt 2.x (2.5.1 here) builds its paho client with the default `manual_ack=False`, so paho
sends the PUBACK as soon as `on_message` returns, i.e. before we have written anything; there
is no public switch (upstream empicano/aiomqtt#345, draft PR #346). The known workaround pokes
the private `client._client`. aiomqtt also reads the socket unconditionally into an unbounded
(or, when bounded, *silently dropping*) queue, so it cannot give backpressure either. We
therefore drive paho-mqtt 2.x ourselves with its documented external-event-loop API
(`on_socket_open/close/register_write/unregister_write` + `loop_read/loop_write/loop_misc`,
as in paho's `examples/loop_asyncio.py`) and its public `Client(manual_ack=True)` +
`Client.ack(mid, qos)`. Every line here uses paho's public API only.

Protocol and session
--------------------
MQTT 5, fixed `client_id`, `clean_start=False`, Session Expiry Interval = never
(`SESSION_EXPIRY_S`): the broker keeps our subscription and queues QoS 1 messages while we
are down, and re-sends every un-acknowledged one (DUP set) when the session resumes. We
subscribe `{prefix}/+/+/+` at QoS 1 on every connect (idempotent), with retain-handling
"only on a new subscription" so a resumed session does not replay retained messages.

Invariants
----------
1. A QoS 1 message is PUBACKed only after `intake.ingest` returned for it (records durable),
   or after it was refused for good and the refusal was published (see 4).
2. PUBACKs go out in the order the PUBLISHes arrived, as MQTT requires [MQTT-4.6.0-2]: a
   finished message waits for every earlier one on the same connection. Ingests still run
   concurrently (up to `max_inflight`); only the acknowledgement is ordered.
3. An acknowledgement belongs to the connection the message arrived on. Each connection is
   a fresh paho client; a message whose connection died is never acked (the broker has
   re-sent it on the new session, where its copy is acked on its own). Intake writes are
   idempotent by natural key and version, so such a copy is counted as a duplicate, never
   doubled.
4. Permanent refusal (4xx: `RecordInvalid`, `NotFound`, unreadable payload, bad topic):
   publish `{"error", "field", "topic"}` to `{prefix}/rejected/{source}/{store}/{kind}` at
   QoS 1, wait for the broker's PUBACK, then ack the original (so it is not redelivered
   forever). A crash in between re-sends the original and the refusal is published again.
5. Transient failure (the error's own `retriable` flag: `SpoolFull`, `Unavailable`,
   `StorageFull`, a retriable `SinkError`; or any unexpected exception): never ack. The
   message is *held* and ingest is retried locally with exponential backoff + jitter
   (honouring `retry_after_s`, capped at `reconnect_max_s`, waits via `clock.wait_until`).
   We do not reconnect to provoke a redelivery: that would re-send every in-flight message
   of every store and stall the healthy ones. If the connection drops or we stop while it
   is held, it is abandoned un-acked and the broker re-sends it when the session resumes.
6. Backpressure: the CONNECT carries Receive Maximum = `max_inflight`, so a compliant broker
   never has more than that many un-acked QoS 1 messages out to us; at most `max_inflight`
   ingests run at once; anything beyond (QoS 0, or a broker ignoring the limit) waits in
   a queue and we stop reading the socket until a slot frees.

Shutdown: stop dispatching (queued, unstarted messages stay un-acked), let running ingests
finish and ack, abandon held retries, send DISCONNECT (the session survives it); after
`drain_timeout_s` the task is cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol
from urllib.parse import unquote

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from worker.adapters.base import Rejection
from worker.clock import Clock
from worker.config import Config, MqttConfig
from worker.errors import PossyncError, RecordInvalid, Unavailable
from worker.intake import MAX_REJECTIONS

log = logging.getLogger("possync.mqtt")

SESSION_EXPIRY_S: Final = 0xFFFFFFFF  # MQTT 5: "never expires", like a v3.1.1 persistent session
CANONICAL_KINDS: Final = frozenset({"customer", "product", "sale", "void", "batch", "ndjson"})
JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
_BACKOFF_BASE_S: Final = 0.5
_STABLE_S: Final = 10.0  # a connection up this long resets the reconnect backoff
_TICK_S: Final = 1.0  # paho's keepalive bookkeeping runs on real time (time.monotonic)
_FORM_LINE = re.compile(rb"^[A-Za-z0-9_.~%+\[\]-]+=[^,\t]*$")
_NOTICE = msgspec.json.Encoder(decimal_format="string")

_PENDING, _DONE, _ABANDONED = 0, 1, 2


class IngestOutcomeLike(Protocol):
    """What the source reads from `Intake.ingest`'s result."""

    @property
    def rejected(self) -> Sequence[Rejection]:
        """Items of the payload that could not be read (the rest were accepted)."""
        ...


class IntakeLike(Protocol):
    """The slice of `worker.intake.Intake` the source uses."""

    async def ingest(
        self,
        source: str,
        store_id: str,
        body: bytes,
        *,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        topic: str | None = None,
        authorized: bool = False,
    ) -> IngestOutcomeLike:
        """Parse, route and durably write one payload."""
        ...


class MqttState(msgspec.Struct, kw_only=True):
    """Live state of the source, for `/readyz` and `/status`."""

    enabled: bool = True
    connected: bool = False  # CONNACK received on the current connection
    subscribed: bool = False  # SUBACK granted QoS 1 on it: ready
    connected_since: datetime | None = None
    session_present: bool | None = None  # False after a connect means the broker lost our session
    last_error: str | None = None
    last_error_at: datetime | None = None
    failure: str | None = None  # the subscriber task died: not ready until restarted
    received: int = 0  # PUBLISH packets received (including redeliveries)
    acked: int = 0  # PUBACKs sent
    rejected: int = 0  # payloads refused for good (acked + published to the rejected topic)
    items_rejected: int = 0  # single items refused inside otherwise accepted payloads
    redelivered: int = 0  # PUBLISHes that arrived with DUP set (the broker re-sent them)
    retries: int = 0  # transient ingest failures retried while holding the message
    abandoned: int = 0  # messages left un-acked (connection lost / shutdown): broker re-sends
    reconnects: int = 0  # connection attempts after the first one
    inflight: int = 0  # ingests running now
    queued: int = 0  # received, waiting for an in-flight slot
    paused: bool = False  # socket reads paused for backpressure
    stopping: bool = False  # shutdown began: draining running ingests


class _Route(msgspec.Struct, frozen=True):
    source: str
    store: str
    kind: str  # the raw topic level, as published
    topic: str  # `kind` percent-decoded: passed to ingest as `topic=`


class _Refused(Exception):
    """The broker refused CONNECT or SUBSCRIBE."""


def parse_topic(prefix: str, topic: str) -> _Route:
    """`{prefix}/{source}/{store}/{kind}` -> route; RecordInvalid(field="topic") otherwise."""
    head = prefix + "/"
    levels = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(levels) != 3 or not all(levels):
        raise RecordInvalid(
            f"topic {topic!r} is not {prefix}/{{source}}/{{store}}/{{kind}}", field="topic"
        )
    source, store, kind = levels
    if source == "canonical" and kind not in CANONICAL_KINDS:
        raise RecordInvalid(
            f"unknown kind {kind!r} for canonical: one of {', '.join(sorted(CANONICAL_KINDS))}",
            field="topic",
        )
    # A topic level cannot hold "/", so native topics such as Shopify's "orders/create" are
    # published percent-encoded ("orders%2Fcreate").
    return _Route(source, store, kind, unquote(kind))


def content_type_for(kind: str, payload: bytes, declared: str | None = None) -> str:
    """The media type to hand the adapter (see docs/mqtt.md, "Content type")."""
    if declared:
        return declared.split(";", 1)[0].strip().lower()
    if kind == "ndjson":
        return NDJSON
    body = payload.strip()
    first = body[:1]
    if first == b"[":
        return JSON
    if first == b"{":
        # Several top-level objects, one per line, is NDJSON. Pretty-printed JSON never puts
        # a "{" in column 0 after the first line (nested objects are indented).
        return NDJSON if b"\n{" in body else JSON
    if first == b"<":
        return "application/xml"
    line = body.split(b"\n", 1)[0]
    if b"\n" not in body and _FORM_LINE.match(line):
        return "application/x-www-form-urlencoded"
    return "text/csv"


def _headers_of(props: Properties | None) -> tuple[dict[str, str], str | None]:
    """MQTT 5 user properties as lower-cased headers, plus the Content Type property."""
    if props is None:
        return {}, None
    headers: dict[str, str] = {}
    for name, value in getattr(props, "UserProperty", None) or []:
        headers[str(name).lower()] = str(value)
    declared = getattr(props, "ContentType", None)
    return headers, (str(declared) if declared else None)


def is_transient(exc: PossyncError) -> bool:
    """True when a retry may succeed: the error's own `retriable` flag (worker.errors)."""
    return exc.retriable


class _Inbound:
    __slots__ = ("conn", "msg")

    def __init__(self, conn: _Conn, msg: paho.MQTTMessage) -> None:
        self.conn = conn
        self.msg = msg


class _Conn:
    """One broker connection: a fresh paho client per attempt, driven by the asyncio loop."""

    def __init__(self, owner: MqttSource, gen: int) -> None:
        self.owner = owner
        self.gen = gen
        cfg = owner.cfg
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.connect_timeout = float(min(cfg.keepalive_s, 10))
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client
        self.connack: asyncio.Future[paho.ConnectFlags] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        # Set when the connection is gone or the source stops: held messages give up.
        self.release = asyncio.Event()
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._pubacks: dict[int, asyncio.Future[ReasonCode]] = {}
        # QoS 1 mids in arrival order -> _PENDING/_DONE/_ABANDONED (invariant 2).
        self._order: dict[int, int] = {}
        self._fd: int | None = None
        self._reading = False
        self._want_read = True
        self._timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Connected (or connecting) and not yet closed."""
        return not self.closed.done()

    async def open(self) -> paho.ConnectFlags:
        """TCP connect + CONNECT, then wait for a successful CONNACK."""
        cfg = self.owner.cfg
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = min(cfg.max_inflight, 65535)

        def connect() -> MQTTErrorCode:
            return self.client.connect(
                cfg.host, cfg.port, cfg.keepalive_s, clean_start=False, properties=props
            )

        # paho's connect() blocks on DNS and the TCP handshake: run it in a thread. Its socket
        # callbacks then fire on that thread; `_call` hops them onto the loop.
        fut = self._loop.run_in_executor(None, connect)
        try:
            rc = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The thread may still open a socket: close it when it does.
            fut.add_done_callback(lambda _: self.abort("cancelled while connecting"))
            raise
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"connect failed: {paho.error_string(rc)}")
        waiters: set[asyncio.Future[Any]] = {self.connack, self.closed}
        await asyncio.wait(waiters, timeout=cfg.keepalive_s, return_when=asyncio.FIRST_COMPLETED)
        if self.connack.done():
            return self.connack.result()  # raises _Refused on a negative CONNACK
        if self.closed.done():
            raise ConnectionError(f"closed before CONNACK: {self.closed.result()}")
        raise TimeoutError(f"no CONNACK within {cfg.keepalive_s} s")

    async def subscribe(self, topic: str) -> None:
        """SUBSCRIBE at QoS 1 and wait for a SUBACK that grants QoS 1."""
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        rc, mid = self.client.subscribe(topic, options=options)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = fut
        codes = await asyncio.wait_for(fut, timeout=self.owner.cfg.keepalive_s)
        if not codes or codes[0].is_failure or codes[0].value < 1:
            # Granted QoS 0 would mean no acks and no redelivery: refuse to run like that.
            raise _Refused(f"broker did not grant QoS 1 on {topic}: {codes}")

    async def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1 publish; True once the broker PUBACKed it, False if the connection is gone."""
        if not self.alive:
            return False
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._pubacks[info.mid] = fut
        try:
            reason = await asyncio.wait_for(fut, timeout=self.owner.cfg.keepalive_s)
        except (TimeoutError, ConnectionError):
            return False
        finally:
            self._pubacks.pop(info.mid, None)
        if reason.is_failure:
            # e.g. "Not authorized" by an ACL: retrying cannot help; the count and the log remain.
            log.warning("broker refused publish to %s: %s", topic, reason)
        return True

    def disconnect(self) -> None:
        """Queue a DISCONNECT behind every pending PUBACK (the session survives it)."""
        if self.alive:
            self.client.disconnect()

    def abort(self, reason: str) -> None:
        """Drop the connection without DISCONNECT, as a network failure would."""
        if not self.alive:
            return
        sock = self.client.socket()
        if sock is None:
            self._closed(reason)
            return
        shutdown = getattr(sock, "shutdown", None)  # plain and TLS sockets; not websockets
        if shutdown is not None:
            with contextlib.suppress(OSError):
                shutdown(socket.SHUT_RDWR)
        try:
            # Read the EOF now: paho closes its socket and reports the disconnect.
            self.client.loop_read()
        except Exception:  # paho is already broken here: just stop watching the fd
            log.exception("MQTT abort: paho failed reading EOF")
            self._unwatch()
        self._closed(reason)

    # -- acknowledgements (invariants 1-3) -------------------------------------------

    def arrived(self, msg: paho.MQTTMessage) -> bool:
        """Record a QoS 1 arrival in order; False if this mid is already in flight here."""
        if msg.qos == 0:
            return True
        if msg.mid in self._order:
            return False
        self._order[msg.mid] = _PENDING
        return True

    def complete(self, msg: paho.MQTTMessage) -> None:
        """The message is durable (or refused for good): ack it once its turn comes."""
        if msg.qos == 0 or msg.mid not in self._order:
            return
        self._order[msg.mid] = _DONE
        if not self.alive:
            return
        while self._order:
            mid, status = next(iter(self._order.items()))
            if status != _DONE:
                break
            try:
                self.client.ack(mid, 1)
            except (RuntimeError, OSError, ValueError) as exc:
                # The PUBACK cannot be sent: the message stays un-acked and the broker
                # re-sends it on the next session (ingest is idempotent).
                self._loop.call_soon(self.abort, f"ack failed: {exc}")
                break
            del self._order[mid]
            self.owner.state.acked += 1
        self.owner._changed()

    def abandon(self, msg: paho.MQTTMessage) -> None:
        """Never ack this message here: the broker re-sends it on the next session."""
        if msg.qos == 0 or msg.mid not in self._order:
            return
        self._order[msg.mid] = _ABANDONED
        self.owner.state.abandoned += 1
        self.owner._changed()

    # -- reading / backpressure ------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the socket (TCP backpressure reaches the broker)."""
        self._want_read = False
        if self._reading and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        """Read the socket again."""
        self._want_read = True
        if not self._reading and self._fd is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            self.client.loop_read()
        except Exception as exc:  # a broken packet or socket ends this connection only
            log.exception("MQTT read failed")
            self.abort(f"read failed: {exc!r}")

    def _on_writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:  # as above: reconnect; the session keeps our state
            log.exception("MQTT write failed")
            self.abort(f"write failed: {exc!r}")

    def _tick(self) -> None:
        self._timer = None
        if self._fd is None:
            return
        self.client.loop_misc()  # keepalive PINGREQ / PINGRESP timeout
        if self._fd is not None:
            self._timer = self._loop.call_later(_TICK_S, self._tick)

    def _closed(self, reason: str) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        self.release.set()
        pending: list[asyncio.Future[Any]] = [*self._subacks.values(), *self._pubacks.values()]
        for fut in pending:
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        self._subacks.clear()
        self.owner._conn_closed(self, reason)

    # -- paho callbacks (VERSION2 signatures) ----------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run on the loop thread: now if we are on it, else hop (connect runs in a thread)."""
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        self._fd = fd
        if self._want_read:
            self.resume_reading()
        self._timer = self._loop.call_later(_TICK_S, self._tick)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._unwatch)

    def _unwatch(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The fd may already be closed when this hop came from the connect thread.
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
        self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._add_writer, sock.fileno())

    def _add_writer(self, fd: int) -> None:
        if fd == self._fd:
            try:
                self._loop.add_writer(fd, self._on_writable)
            except (RuntimeError, OSError, ValueError) as exc:
                # The broker closed the socket under us (uvloop: "handler is closed"). Treat
                # it as a lost connection; the owner reconnects and the broker re-sends.
                self._loop.call_soon(self.abort, f"socket closed: {exc}")

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call(self._remove_writer, sock.fileno())

    def _remove_writer(self, fd: int) -> None:
        if fd == self._fd:
            self._loop.remove_writer(fd)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._call(self._connacked, flags, reason)

    def _connacked(self, flags: paho.ConnectFlags, reason: ReasonCode) -> None:
        if self.connack.done():
            return
        if reason.is_failure:
            self.connack.set_exception(_Refused(f"broker refused CONNECT: {reason}"))
        else:
            self.connack.set_result(flags)
            self.owner._conn_up(self, flags)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        who = "broker" if flags.is_disconnect_packet_from_server else "connection"
        self._call(self._closed, f"{who}: {reason}")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        props: Properties,
    ) -> None:
        fut = self._pubacks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.owner._on_message(self, msg)


class MqttSource:
    """The MQTT subscriber: state, readiness and the connection loop (see module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        intake: IntakeLike,
        clock: Clock,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.state = MqttState(enabled=cfg.enabled)
        self._intake = intake
        self._clock = clock
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._conn: _Conn | None = None
        self._gen = 0
        self._queue: deque[_Inbound] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._watchers: set[asyncio.Future[None]] = set()
        self._had_session = False
        self._settled = False

    @property
    def subscription(self) -> str:
        """The topic filter we subscribe to."""
        return f"{self.cfg.prefix}/+/+/+"

    @property
    def ready(self) -> bool:
        """Connected and the subscriber task alive (always True when MQTT is disabled)."""
        if not self.cfg.enabled:
            return True
        self._settle()
        if self._failure is not None or (self._task is not None and self._task.done()):
            return False
        return self.state.connected and self.state.subscribed

    async def check(self) -> None:
        """Readiness check for `/readyz`: raise when not ready."""
        if self.ready:
            return
        if self.state.failure:
            raise Unavailable(f"MQTT subscriber died: {self.state.failure}")
        raise Unavailable(f"MQTT not connected: {self.state.last_error or 'connecting'}")

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON-ready builtins, for `/status`."""
        out: dict[str, Any] = msgspec.to_builtins(self.state)
        out["broker"] = f"{self.cfg.host}:{self.cfg.port}"
        out["subscription"] = self.subscription
        return out

    async def wait_for(self, predicate: Callable[[MqttState], bool]) -> None:
        """Wait until `predicate(state)` holds; raise if the subscriber task dies meanwhile."""
        loop = asyncio.get_running_loop()
        while not predicate(self.state):
            self._settle()
            if self._failure is not None:
                raise RuntimeError("MQTT subscriber died") from self._failure
            if self._task is not None and self._task.done():
                raise RuntimeError("MQTT subscriber stopped")
            fut: asyncio.Future[None] = loop.create_future()
            self._watchers.add(fut)
            try:
                await fut
            finally:
                self._watchers.discard(fut)

    def drop_connection(self) -> None:
        """Break the current connection as a network fault would (ops / tests); we reconnect."""
        if self._conn is not None:
            self._conn.abort("dropped on request")

    # -- state -----------------------------------------------------------------------

    def _changed(self) -> None:
        self.state.inflight = len(self._running)
        self.state.queued = len(self._queue)
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)

    def _error(self, text: str) -> None:
        self.state.last_error = text
        self.state.last_error_at = self._clock.now()
        self._changed()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._settle()
        self._changed()

    def _settle(self) -> None:
        """Record once how the subscriber task ended (its done callback may not have run yet)."""
        task = self._task
        if task is None or not task.done() or self._settled:
            return
        self._settled = True
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            # The TaskGroup wraps it; show the cause itself when there is just one.
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            self._failure = exc
            self.state.failure = repr(self._failure)
            self.state.connected = False
            log.error("MQTT subscriber task died", exc_info=self._failure)

    # -- connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            failures = 0
            first = True
            while not self._stop.is_set():
                if not first:
                    self.state.reconnects += 1
                first = False
                started = self._clock.monotonic()
                subscribed = await self._session()
                # Reset the backoff only after a connection that held: a broker that accepts
                # and then drops us (e.g. two instances sharing a client_id kicking each
                # other out) must not be hammered.
                if subscribed and self._clock.monotonic() - started >= _STABLE_S:
                    failures = 0
                if self._stop.is_set():
                    break
                delay = self._backoff(failures)
                failures += 1
                log.info("MQTT reconnecting in %.2f s", delay)
                await self._clock.wait_until(
                    self._clock.now() + timedelta(seconds=delay), self._stop
                )
            # Leaving the TaskGroup awaits ingests still running for dead connections.

    def _backoff(self, attempt: int, floor_s: float = 0.0) -> float:
        """Exponential backoff with equal jitter, capped at `reconnect_max_s`."""
        cap = self.cfg.reconnect_max_s
        ceiling = min(cap, max(floor_s, _BACKOFF_BASE_S * 2.0 ** min(attempt, 30)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _session(self) -> bool:
        """One connection from connect to close. True if it got as far as subscribing."""
        self._gen += 1
        conn = _Conn(self, self._gen)
        self._conn = conn
        subscribed = False
        try:
            await conn.open()
            await conn.subscribe(self.subscription)
            subscribed = True
            self.state.subscribed = True
            self._changed()
            stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            try:
                ends: set[asyncio.Future[Any]] = {conn.closed, stop}
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if self._stop.is_set() and conn.alive:
                await self._drain(conn)
        except (OSError, TimeoutError, _Refused) as exc:  # ConnectionError is an OSError
            self._error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            log.warning("MQTT connection to %s:%d failed: %s", self.cfg.host, self.cfg.port, exc)
        finally:
            conn.abort("session ended")
            self.state.connected = False
            self.state.subscribed = False
            self._changed()
        return subscribed

    async def _drain(self, conn: _Conn) -> None:
        """Graceful stop: finish running ingests, send their acks, then DISCONNECT."""
        conn.release.set()  # held retries give up now
        for item in self._queue:
            item.conn.abandon(item.msg)
        self._queue.clear()
        self._changed()
        if self._running:
            await asyncio.wait(set(self._running))
        conn.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), timeout=self.cfg.keepalive_s)

    def _conn_up(self, conn: _Conn, flags: paho.ConnectFlags) -> None:
        # Called from the CONNACK itself: re-sent messages may follow in the same read.
        self.state.connected = True
        self.state.connected_since = self._clock.now()
        self.state.session_present = flags.session_present
        if not flags.session_present:
            # Expected on the very first start; after that it means queued messages were lost.
            log.log(
                logging.WARNING if self._had_session else logging.INFO,
                "MQTT broker had no session for client_id %r: messages published while we "
                "were away were not kept (first start, new client_id, expiry or no persistence)",
                self.cfg.client_id,
            )
        self._had_session = True
        log.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)
        self._changed()

    def _conn_closed(self, conn: _Conn, reason: str) -> None:
        if conn is not self._conn or not self.state.connected:
            return
        self.state.connected = False
        self.state.subscribed = False
        if self._stop.is_set():
            log.info("MQTT disconnected: %s", reason)
            self._changed()
            return
        if "taken over" in reason:
            log.error(
                "MQTT session taken over: another client uses client_id %r", self.cfg.client_id
            )
        else:
            log.warning("MQTT connection lost: %s", reason)
        self._error(f"disconnected: {reason}")

    # -- dispatch ----------------------------------------------------------------------

    def _on_message(self, conn: _Conn, msg: paho.MQTTMessage) -> None:
        self.state.received += 1
        if msg.dup:
            self.state.redelivered += 1
        if not conn.arrived(msg):
            # MQTT 5 forbids re-sending on the same connection; the first copy will be acked.
            log.warning("duplicate in-flight PUBLISH mid=%d on %s ignored", msg.mid, msg.topic)
            return
        if self._stop.is_set():
            conn.abandon(msg)
            return
        self._queue.append(_Inbound(conn, msg))
        self._pump()

    def _pump(self) -> None:
        """Start queued messages while slots are free; pause reading while any must wait."""
        tg = self._tg
        while (
            tg is not None
            and not self._stop.is_set()
            and self._queue
            and len(self._running) < self.cfg.max_inflight
        ):
            item = self._queue.popleft()
            if not item.conn.alive:
                continue  # re-sent by the broker on the new session
            coro = self._handle(item)
            try:
                task = tg.create_task(coro)
            except RuntimeError:  # the TaskGroup is shutting down: leave it to the broker
                coro.close()
                item.conn.abandon(item.msg)
                break
            self._running.add(task)
            task.add_done_callback(self._handled)
        conn = self._conn
        if conn is not None:
            if self._queue:
                conn.pause_reading()
            else:
                conn.resume_reading()
            self.state.paused = bool(self._queue)
        self._changed()

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        # A failed or cancelled handler means the TaskGroup is aborting: start nothing new.
        if not task.cancelled() and task.exception() is None:
            self._pump()
        else:
            self._changed()

    async def _handle(self, item: _Inbound) -> None:
        conn, msg = item.conn, item.msg
        try:
            route = parse_topic(self.cfg.prefix, msg.topic)
        except RecordInvalid as exc:
            await self._reject(item, exc)
            return
        headers, declared = _headers_of(msg.properties)
        payload = bytes(msg.payload)
        content_type = content_type_for(route.kind, payload, declared)
        attempt = 0
        while True:
            if not conn.alive:
                conn.abandon(msg)
                return
            retry_after: float = 0.0
            try:
                outcome = await self._intake.ingest(
                    route.source,
                    route.store,
                    payload,
                    content_type=content_type,
                    headers=headers,
                    topic=route.topic,
                    authorized=True,  # over MQTT, authentication is the broker's job
                )
            except PossyncError as exc:
                if not is_transient(exc):
                    await self._reject(item, exc)
                    return
                retry_after = float(exc.retry_after_s or 0)
                self._error(f"ingest {msg.topic}: {type(exc).__name__}: {exc.message}")
                log.warning("transient ingest failure on %s (held, not acked): %s", msg.topic, exc)
            except Exception as exc:  # noqa: BLE001 - unknown failure: hold, never ack
                name = type(exc).__name__  # its type only: its text can quote the payload
                self._error(f"ingest {msg.topic}: {name}")
                log.error("unexpected ingest failure on %s (held): %s", msg.topic, name)  # noqa: TRY400
            else:
                if outcome.rejected:
                    await self._notice_items(conn, msg.topic, outcome.rejected)
                conn.complete(msg)
                return
            self.state.retries += 1
            delay = self._backoff(attempt, floor_s=retry_after)
            attempt += 1
            self._changed()
            deadline = self._clock.now() + timedelta(seconds=delay)
            if not await self._clock.wait_until(deadline, conn.release):
                conn.abandon(msg)  # connection lost or stopping: the broker re-sends it
                return

    def _rejected_topic(self, topic: str) -> str:
        # `{prefix}/{source}/{store}/{kind}` -> `{prefix}/rejected/{source}/{store}/{kind}`: one
        # level more, so our own subscription `{prefix}/+/+/+` never matches it.
        return f"{self.cfg.prefix}/rejected/{topic[len(self.cfg.prefix) + 1 :]}"

    async def _reject(self, item: _Inbound, exc: PossyncError) -> None:
        """Permanent refusal: publish the reason, then ack (invariant 4)."""
        conn, msg = item.conn, item.msg
        self.state.rejected += 1
        self._changed()
        log.warning("rejected MQTT payload on %s: %s (field %s)", msg.topic, exc.message, exc.field)
        notice = {**exc.to_json(), "topic": msg.topic}
        if await conn.publish(self._rejected_topic(msg.topic), _NOTICE.encode(notice)):
            conn.complete(msg)
            return
        conn.abandon(msg)
        # An abandoned message blocks every later ack on this connection (acks are in order):
        # start a new session, where the broker re-sends it and we try again.
        conn.abort("rejection notice was not acknowledged")

    async def _notice_items(self, conn: _Conn, topic: str, rejected: Sequence[Rejection]) -> None:
        """Accepted payload with refused items: publish them (best effort, the ack does not wait on it)."""
        self.state.items_rejected += len(rejected)
        self._changed()
        first = rejected[0]
        # Capped like a push's answer; errors name field and rule only (RecordInvalid scrubs).
        notice = {
            "error": f"{len(rejected)} item(s) rejected: {first.error}",
            "field": first.field,
            "topic": topic,
            "rejected": [msgspec.to_builtins(r) for r in rejected[:MAX_REJECTIONS]],
            "rejected_count": len(rejected),
        }
        if not await conn.publish(self._rejected_topic(topic), _NOTICE.encode(notice)):
            log.warning("could not publish item rejections for %s", topic)


@contextlib.asynccontextmanager
async def open_mqtt_source(
    cfg: Config,
    intake: IntakeLike,
    clock: Clock,
    *,
    drain_timeout_s: float = 10.0,
    rng: random.Random | None = None,
) -> AsyncIterator[MqttSource]:
    """Run the MQTT subscriber for the life of the context; on exit drain, cancel AND await it."""
    source = MqttSource(cfg.mqtt, intake, clock, rng=rng)
    if not cfg.mqtt.enabled:
        yield source
        return
    task = asyncio.create_task(source._run(), name="possync.mqtt")
    source._task = task
    task.add_done_callback(source._task_done)
    try:
        yield source
    finally:
        source._stop.set()
        source.state.stopping = True
        source._changed()
        try:
            if not task.done():
                await asyncio.wait({task}, timeout=drain_timeout_s)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:  # noqa: BLE001 - already logged and exposed by _task_done
                    log.debug("MQTT subscriber ended with an error during shutdown")
