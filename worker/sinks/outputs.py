"""The Output extension point: extra destinations fed from the outbox after the sink commits.

The sink (`[sink]`, SQLite or PostgreSQL) stays the system of record: the read API, /status
and the window's idempotency all read it. `[[outputs]]` add destinations per record type (the
clienteling app's HTTP API, an MQTT broker). What the sink committed becomes `OutEvent`s,
appended to a durable outbox in the same step that returns the sink's confirmation to the
committer or intake (so the spool is acknowledged only once the events are on disk), and a
delivery task per output drains the outbox: at least once, in order per output, retried
with backoff; receivers deduplicate by `event_id` (HTTP also gets an `Idempotency-Key` per
batch). A crash re-delivers, never loses.

An `Output` is opened as one async context by its factory in `OUTPUTS` (config kind ->
factory) and has one job: deliver a page of events or raise `SinkError` (its `retriable`
flag and `retry_after_s` drive the delivery task's backoff; a fatal error parks the page,
counted and shown on /status).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

import msgspec

from worker.config import Config, OutputConfig, RecordKind


class OutEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One committed fact, as every output receives it.

    `event_id` is stable for the same fact (a re-delivery or a re-run window yields the
    same id): `customer:{store}:{id}:{version}`, `product:...`, `sale:{store}:{id}:{version}`,
    `void:{store}:{id}:{version}`, `trigger:{trigger event id}`, `manifest:{batch id}`.
    `body` is the JSON object as the sink committed it (the canonical record, the trigger
    event, the window manifest), never recomputed.
    """

    event_id: str
    kind: RecordKind
    store: str
    at: datetime  # when the sink committed it (UTC)
    body: msgspec.Raw


class Output(Protocol):
    """A destination for committed events."""

    name: str

    async def deliver(self, events: Sequence[OutEvent]) -> None:
        """Deliver every event of the page or raise SinkError (nothing is assumed delivered)."""
        ...


OutputFactory = Callable[[Config, OutputConfig], AbstractAsyncContextManager[Output]]


def _http(cfg: Config, out: OutputConfig) -> AbstractAsyncContextManager[Output]:
    from worker.sinks.http import open_http_output

    return open_http_output(cfg, out)


def _mqtt(cfg: Config, out: OutputConfig) -> AbstractAsyncContextManager[Output]:
    from worker.config import MqttOutputConfig
    from worker.sinks.mqtt import open_mqtt_output

    assert isinstance(out, MqttOutputConfig)  # the registry is keyed by the config's tag
    return open_mqtt_output(cfg, out)


# Config `kind` -> factory.
OUTPUTS: dict[str, OutputFactory] = {"http": _http, "mqtt": _mqtt}


def output_kind(out: OutputConfig) -> str:
    """The `kind` tag of an `[[outputs]]` table."""
    return str(type(out).__struct_config__.tag)


def open_output(cfg: Config, out: OutputConfig) -> AbstractAsyncContextManager[Output]:
    """Open one configured output as an async context (its kind's factory)."""
    return OUTPUTS[output_kind(out)](cfg, out)
