"""The MQTT 5 client: paho-mqtt driven by the asyncio loop, manual acks, one connection each.

`Connection` is one broker connection (a fresh paho client per attempt): TCP connect and
CONNECT (`open`), SUBSCRIBE at QoS 1 (`subscribe`), QoS 1 `publish` awaiting the PUBACK,
`disconnect` / `abort`, and the acknowledgement of received messages (`arrived`, `complete`,
`abandon`: PUBACKs in arrival order, only for messages completed on this connection).
It reads the socket through `loop.add_reader` (`pause_reading` / `resume_reading` give TCP
backpressure) and reports to a `ConnectionEvents` it is given; what a message means and
when it is complete is the source's business (`worker.sources.mqtt`).

Why paho-mqtt directly, not aiomqtt: see `worker.sources.mqtt`. Every line here uses
paho's public API only (`on_socket_open/close/register_write/unregister_write` +
`loop_read/loop_write/loop_misc`, as in paho's `examples/loop_asyncio.py`, and
`Client(manual_ack=True)` + `Client.ack(mid, qos)`). The one paho internal we touch, paho's
per-packet property decoding, is `worker.sources.mqtt_properties`, with its guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from worker.config import MqttConfig
from worker.sources import mqtt_properties

log = logging.getLogger("possync.mqtt")

SESSION_EXPIRY_S: Final = 0xFFFFFFFF  # MQTT 5: "never expires", like a v3.1.1 persistent session
_TICK_S: Final = 1.0  # paho's keepalive bookkeeping runs on real time (time.monotonic)
_READ_BURST: Final = 256  # packets read per readable event at most (others' turn after)

_PENDING, _DONE, _ABANDONED = 0, 1, 2


Message = paho.MQTTMessage
ConnectFlags = paho.ConnectFlags


class Refused(Exception):
    """The broker refused CONNECT or SUBSCRIBE."""


class ConnectionEvents(Protocol):
    """What a `Connection` reports; all called on the event loop thread."""

    def connected(self, conn: Connection, flags: ConnectFlags) -> None:
        """A successful CONNACK (re-sent messages may follow in the same read)."""
        ...

    def closed(self, conn: Connection, reason: str) -> None:
        """The connection is gone (once)."""
        ...

    def message(self, conn: Connection, msg: Message) -> None:
        """A PUBLISH arrived on this connection."""
        ...

    def acked(self, conn: Connection, count: int) -> None:
        """`count` PUBACKs were just sent (0: a completion is waiting for an earlier one)."""
        ...

    def abandoned(self, conn: Connection) -> None:
        """A message will never be acked here (the broker re-sends it next session)."""
        ...


class Connection:
    """One broker connection: a fresh paho client per attempt, driven by the asyncio loop.

    It reports to `events` (connected, closed, message, acked, abandoned) and knows
    nothing of what a message means.
    """

    def __init__(self, cfg: MqttConfig, events: ConnectionEvents, gen: int) -> None:
        self.cfg = cfg
        self.events = events
        self.gen = gen
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        mqtt_properties.install()  # paho decodes PUBLISH properties faster (safe or not at all)
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
        self._publishes = 0  # PUBLISH packets read on this connection

    # -- lifecycle -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Connected (or connecting) and not yet closed."""
        return not self.closed.done()

    async def open(self) -> paho.ConnectFlags:
        """TCP connect + CONNECT, then wait for a successful CONNACK."""
        cfg = self.cfg
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
            return self.connack.result()  # raises Refused on a negative CONNACK
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
        codes = await asyncio.wait_for(fut, timeout=self.cfg.keepalive_s)
        if not codes or codes[0].is_failure or codes[0].value < 1:
            # Granted QoS 0 would mean no acks and no redelivery: refuse to run like that.
            raise Refused(f"broker did not grant QoS 1 on {topic}: {codes}")

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
            reason = await asyncio.wait_for(fut, timeout=self.cfg.keepalive_s)
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
        self.complete_many((msg,))

    def complete_many(self, msgs: Iterable[paho.MQTTMessage]) -> None:
        """`complete` for each of `msgs` (a burst made durable together), in one ack pass."""
        order = self._order
        changed = False
        for msg in msgs:
            if msg.qos and msg.mid in order:
                order[msg.mid] = _DONE
                changed = True
        if not changed or not self.alive:
            return
        acked = 0
        while order:
            mid, status = next(iter(order.items()))
            if status != _DONE:
                break
            try:
                self.client.ack(mid, 1)
            except (RuntimeError, OSError, ValueError) as exc:
                # The PUBACK cannot be sent: the message stays un-acked and the broker
                # re-sends it on the next session (ingest is idempotent).
                self._loop.call_soon(self.abort, f"ack failed: {exc}")
                break
            del order[mid]
            acked += 1
        self.events.acked(self, acked)

    def abandon(self, msg: paho.MQTTMessage) -> None:
        """Never ack this message here: the broker re-sends it on the next session."""
        if msg.qos == 0 or msg.mid not in self._order:
            return
        self._order[msg.mid] = _ABANDONED
        self.events.abandoned(self)

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
        # paho's loop_read takes one packet. A burst is read whole in this one callback
        # (bounded), so its messages start together and their appends meet in one spool
        # group; it stops at the first read that brought no PUBLISH (the socket is empty,
        # or it was a PUBACK / PINGRESP) and as soon as the source pauses reading.
        try:
            for _ in range(_READ_BURST):
                before = self._publishes
                self.client.loop_read()
                if self._publishes == before or not self._reading:
                    break
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
        self.events.closed(self, reason)

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
                # it as a lost connection; the source reconnects and the broker re-sends.
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
            self.connack.set_exception(Refused(f"broker refused CONNECT: {reason}"))
        else:
            self.connack.set_result(flags)
            self.events.connected(self, flags)

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
        self._publishes += 1
        self.events.message(self, msg)
