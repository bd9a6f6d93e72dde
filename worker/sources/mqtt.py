"""MQTT source: `{prefix}/{source}/{store}/{kind}` in, PUBACK only once the intake made it durable.

The policy: `Envelope` -> `Ingest.ingest`, when to acknowledge, what to publish on refusal,
retries and reconnects. A message becomes its envelope in `worker.sources.mqtt_route`
(topic levels, content type, user properties). The socket, paho and the PUBACK ordering are
`worker.sources.mqtt_client.Connection`, which reports back through `ConnectionEvents`
(this `MqttSource` implements them). The connection loop is a task owned by the app's
`Health` registry, so `/readyz` shows `task:mqtt` dead if it dies.

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
`Client.ack(mid, qos)`, in `mqtt_client`. Every line of it uses paho's public API only.

Protocol and session
--------------------
MQTT 5, fixed `client_id`, `clean_start=False`, Session Expiry Interval = never
(`mqtt_client.SESSION_EXPIRY_S`): the broker keeps our subscription and queues QoS 1 messages while we
are down, and re-sends every un-acknowledged one (DUP set) when the session resumes. We
subscribe `{prefix}/+/+/+` at QoS 1 on every connect (idempotent), with retain-handling
"only on a new subscription" so a resumed session does not replay retained messages.

Invariants
----------
1. A QoS 1 message is PUBACKed only after the intake returned its outcome (records durable),
   or after it was refused for good and the refusal was published (see 4).
2. PUBACKs go out in the order the PUBLISHes arrived, as MQTT requires [MQTT-4.6.0-2]: a
   finished message waits for every earlier one on the same connection. Ingests still run
   concurrently (up to `max_inflight` messages); only the acknowledgement is ordered.
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
   messages are being ingested at once; anything beyond (QoS 0, or a broker ignoring the
   limit) waits in a queue and we stop reading the socket until a slot frees.

Batches
-------
The messages read in one readable event (a burst, `mqtt_client._READ_BURST` packets at
most) are dispatched together once the read returns: one task and one
`Intake.ingest_batch` for as many of them as free slots allow. The intake decides each
message on its own (its outcome, its refusal, its notice) and writes the sales and voids of
all of them in one spool append, so a burst of N messages costs one group commit and one
wake-up instead of N. A message whose ingest failed transiently is then held and retried
alone (5); refused ones are published and acked on their own (4); the rest are acked in one
pass. One bad message never fails its neighbours (tests/test_mqtt_batch.py).

Shutdown: stop dispatching (queued, unstarted messages stay un-acked), let running ingests
finish and ack, abandon held retries, wait for one round trip (a re-SUBSCRIBE, answered only
once the broker has processed our PUBACKs), send DISCONNECT (the session survives it); after
`drain_timeout_s` the task is cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from worker.adapters.base import MAX_REJECTIONS, Rejection
from worker.clock import Clock
from worker.config import Config, MqttConfig
from worker.errors import PossyncError, RecordInvalid, Unavailable
from worker.health import Health
from worker.intake import BatchIngest, Envelope, IngestOutcome
from worker.sources.mqtt_client import ConnectFlags, Connection, Message, Refused
from worker.sources.mqtt_route import envelope_of
from worker.sources.mqtt_route import subscription_filter as subscription_filter  # re-exported

log = logging.getLogger("possync.mqtt")

_BACKOFF_BASE_S: Final = 0.5
_STABLE_S: Final = 10.0  # a connection up this long resets the reconnect backoff
_NOTICE = msgspec.json.Encoder(decimal_format="string")


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


def is_transient(exc: PossyncError) -> bool:
    """True when a retry may succeed: the error's own `retriable` flag (worker.errors)."""
    return exc.retriable


class _Inbound:
    __slots__ = ("conn", "msg")

    def __init__(self, conn: Connection, msg: Message) -> None:
        self.conn = conn
        self.msg = msg


class MqttSource:
    """The MQTT subscriber: state, readiness and the connection loop (see module docstring)."""

    def __init__(
        self,
        cfg: MqttConfig,
        intake: BatchIngest,
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
        self._conn: Connection | None = None
        self._gen = 0
        self._queue: deque[_Inbound] = deque()
        # The batch tasks running, each with its number of messages; `_busy` is their sum.
        self._running: dict[asyncio.Task[None], int] = {}
        self._busy = 0
        self._pump_soon = False
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._watchers: set[asyncio.Future[None]] = set()
        self._had_session = False
        self._settled = False

    @property
    def subscription(self) -> str:
        """The topic filter we subscribe to (MQTT 5 shared when `shared_group` is set)."""
        return subscription_filter(self.cfg.prefix, self.cfg.shared_group)

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
        self.state.inflight = self._busy
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
                log.info(
                    "MQTT reconnecting in %.2f s",
                    delay,
                    extra={"event": "mqtt.reconnecting", "delay_s": delay},
                )
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
        conn = Connection(self.cfg, self, self._gen)
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
        except (OSError, TimeoutError, Refused) as exc:  # ConnectionError is an OSError
            self._error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            log.warning(
                "MQTT connection to %s:%d failed: %s",
                self.cfg.host,
                self.cfg.port,
                exc,
                extra={"event": "mqtt.connect_failed"},
            )
        finally:
            conn.abort("session ended")
            self.state.connected = False
            self.state.subscribed = False
            self._changed()
        return subscribed

    async def _drain(self, conn: Connection) -> None:
        """Graceful stop: finish running ingests, send their acks, then DISCONNECT."""
        conn.release.set()  # held retries give up now
        for item in self._queue:
            item.conn.abandon(item.msg)
        self._queue.clear()
        self._changed()
        if self._running:
            await asyncio.wait(set(self._running))
        # A round trip before DISCONNECT: the broker answers a SUBSCRIBE only after it has
        # processed every PUBACK sent before it. Without it, a client taking the session over
        # at once (a restart) can win the race against our last PUBACKs, and the broker
        # re-sends messages we had acknowledged (deduplicated by the intake, but needless).
        with contextlib.suppress(OSError, TimeoutError, Refused):
            await conn.subscribe(self.subscription)
        conn.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), timeout=self.cfg.keepalive_s)

    # -- ConnectionEvents ------------------------------------------------------------

    def connected(self, conn: Connection, flags: ConnectFlags) -> None:
        """CONNACK: called from the CONNACK itself; re-sent messages may follow in the same read."""
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
        log.info(
            "MQTT connected to %s:%d",
            self.cfg.host,
            self.cfg.port,
            extra={"event": "mqtt.connected"},
        )
        self._changed()

    def closed(self, conn: Connection, reason: str) -> None:
        """The connection is gone: not ready, and say why (unless we are stopping)."""
        if conn is not self._conn or not self.state.connected:
            return
        self.state.connected = False
        self.state.subscribed = False
        if self._stop.is_set():
            log.info("MQTT disconnected: %s", reason, extra={"event": "mqtt.disconnected"})
            self._changed()
            return
        if "taken over" in reason:
            log.error(
                "MQTT session taken over: another client uses client_id %r", self.cfg.client_id
            )
        else:
            log.warning("MQTT connection lost: %s", reason, extra={"event": "mqtt.lost"})
        self._error(f"disconnected: {reason}")

    # -- dispatch ----------------------------------------------------------------------

    def acked(self, conn: Connection, count: int) -> None:
        """PUBACKs sent."""
        self.state.acked += count
        self._changed()

    def abandoned(self, conn: Connection) -> None:
        """A message left un-acked (the broker re-sends it)."""
        self.state.abandoned += 1
        self._changed()

    def message(self, conn: Connection, msg: Message) -> None:
        """A PUBLISH: queued (in arrival order) for the next batch; see `_pump`."""
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
        if self._busy + len(self._queue) >= self.cfg.max_inflight:
            # No slot for the next one: stop reading now, not after the burst (invariant 6).
            conn.pause_reading()
            self.state.paused = True
        if not self._pump_soon:
            # Messages read in this same readable event (a burst) join one batch: the pump
            # runs once they are all queued.
            self._pump_soon = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Start the queued messages free slots allow, as one batch (one task, one ingest_batch);
        pause reading while any must wait."""
        self._pump_soon = False
        tg = self._tg
        room = self.cfg.max_inflight - self._busy
        if tg is not None and not self._stop.is_set() and self._queue and room > 0:
            batch: list[_Inbound] = []
            while self._queue and len(batch) < room:
                item = self._queue.popleft()
                if item.conn.alive:  # else: re-sent by the broker on the new session
                    batch.append(item)
            if batch:
                coro = self._handle_batch(batch)
                try:
                    task = tg.create_task(coro)
                except RuntimeError:  # the TaskGroup is shutting down: leave it to the broker
                    coro.close()
                    for item in batch:
                        item.conn.abandon(item.msg)
                else:
                    self._running[task] = len(batch)
                    self._busy += len(batch)
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
        self._busy -= self._running.pop(task, 0)
        # A failed or cancelled handler means the TaskGroup is aborting: start nothing new.
        if not task.cancelled() and task.exception() is None:
            self._pump()
        else:
            self._changed()

    async def _handle_batch(self, batch: list[_Inbound]) -> None:
        """A burst: one `ingest_batch`, then each message on its own (invariants 1, 4, 5).

        Durable ones are completed at once (their PUBACKs wait only for earlier messages);
        refusals are published then completed; transient failures are held and retried one
        by one, so no message's failure touches its neighbours' outcome.
        """
        items: list[_Inbound] = []
        envelopes: list[Envelope] = []
        later: list[Coroutine[Any, Any, None]] = []
        for item in batch:
            try:
                envelope = envelope_of(self.cfg.prefix, item.msg)
            except RecordInvalid as exc:
                later.append(self._reject(item, exc))
                continue
            items.append(item)
            envelopes.append(envelope)
        results: Sequence[IngestOutcome | Exception]
        try:
            results = await self._intake.ingest_batch(envelopes) if envelopes else []
        except Exception as exc:  # noqa: BLE001 - the batch call itself failed: hold each
            results = [exc] * len(envelopes)
        durable: list[_Inbound] = []
        for item, envelope, res in zip(items, envelopes, results, strict=True):
            if isinstance(res, IngestOutcome):
                if res.rejected:
                    later.append(self._accepted_with_notice(item, res))
                else:
                    durable.append(item)
            elif isinstance(res, PossyncError) and not is_transient(res):
                later.append(self._reject(item, res))
            else:
                self._failed(item, res)
                later.append(self._retry(item, envelope, res))
        # Their acks in one pass per connection (a batch is one connection's in practice).
        by_conn: dict[Connection, list[Message]] = {}
        for item in durable:
            by_conn.setdefault(item.conn, []).append(item.msg)
        for conn, msgs in by_conn.items():
            conn.complete_many(msgs)
        if len(later) == 1:
            await later[0]
        elif later:
            await asyncio.gather(*later)

    async def _accepted_with_notice(self, item: _Inbound, outcome: IngestOutcome) -> None:
        await self._notice_items(
            item.conn, item.msg.topic, outcome.rejected, outcome.rejected_count
        )
        item.conn.complete(item.msg)

    def _failed(self, item: _Inbound, exc: BaseException) -> None:
        """Record a transient (or unexpected) ingest failure of a held message."""
        topic = item.msg.topic
        if isinstance(exc, PossyncError):
            self._error(f"ingest {topic}: {type(exc).__name__}: {exc.message}")
            log.warning("transient ingest failure on %s (held, not acked): %s", topic, exc)
        else:
            name = type(exc).__name__  # its type only: its text can quote the payload
            self._error(f"ingest {topic}: {name}")
            log.error("unexpected ingest failure on %s (held): %s", topic, name)

    async def _retry(self, item: _Inbound, envelope: Envelope, failure: BaseException) -> None:
        """Hold a message whose ingest failed transiently: back off, ingest it alone, repeat."""
        conn, msg = item.conn, item.msg
        attempt = 0
        while True:
            retry_after = (
                float(failure.retry_after_s or 0) if isinstance(failure, PossyncError) else 0.0
            )
            self.state.retries += 1
            delay = self._backoff(attempt, floor_s=retry_after)
            attempt += 1
            self._changed()
            deadline = self._clock.now() + timedelta(seconds=delay)
            if not await self._clock.wait_until(deadline, conn.release) or not conn.alive:
                conn.abandon(msg)  # connection lost or stopping: the broker re-sends it
                return
            try:
                outcome = await self._intake.ingest(envelope)
            except PossyncError as exc:
                if not is_transient(exc):
                    await self._reject(item, exc)
                    return
                failure = exc
            except Exception as exc:  # noqa: BLE001 - unknown failure: hold, never ack
                failure = exc
            else:
                if outcome.rejected:
                    await self._accepted_with_notice(item, outcome)
                else:
                    conn.complete(msg)
                return
            self._failed(item, failure)

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

    async def _notice_items(
        self, conn: Connection, topic: str, rejected: Sequence[Rejection], count: int
    ) -> None:
        """Accepted payload with refused items: publish them (best effort, the ack does not wait on it).

        `rejected` is the first MAX_REJECTIONS of them (the adapter kept no more), `count` all.
        """
        self.state.items_rejected += count
        self._changed()
        first = rejected[0]
        # Capped like a push's answer; errors name field and rule only (RecordInvalid scrubs).
        notice = {
            "error": f"{count} item(s) rejected: {first.error}",
            "field": first.field,
            "topic": topic,
            "rejected": [msgspec.to_builtins(r) for r in rejected[:MAX_REJECTIONS]],
            "rejected_count": count,
        }
        if not await conn.publish(self._rejected_topic(topic), _NOTICE.encode(notice)):
            log.warning("could not publish item rejections for %s", topic)


@contextlib.asynccontextmanager
async def open_mqtt_source(
    cfg: Config,
    intake: BatchIngest,
    clock: Clock,
    *,
    health: Health | None = None,
    drain_timeout_s: float = 10.0,
    rng: random.Random | None = None,
) -> AsyncIterator[MqttSource]:
    """Run the MQTT subscriber for the life of the context; on exit drain, cancel AND await it.

    The connection loop is `health`'s owned task `mqtt` (the app's registry: /readyz shows
    `task:mqtt` dead when it dies); without one, a private registry owns it.
    """
    source = MqttSource(cfg.mqtt, intake, clock, rng=rng)
    if not cfg.mqtt.enabled:
        yield source
        return
    async with (health or Health()).owned_task("mqtt", source._run()) as task:
        source._task = task
        task.add_done_callback(source._task_done)
        try:
            yield source
        finally:
            source._stop.set()
            source.state.stopping = True
            source._changed()
            if not task.done():
                await asyncio.wait({task}, timeout=drain_timeout_s)
        # Leaving `owned_task` cancels the loop if it outlived the drain, and awaits it.
