"""Typed application state keys (aiohttp `web.AppKey`), all in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from worker.buffers.base import Buffer
    from worker.clock import Clock
    from worker.committer import Committer
    from worker.config import Config, Credentials
    from worker.health import Health
    from worker.intake import Intake
    from worker.metrics import Metrics
    from worker.scheduler import Scheduler
    from worker.sinks.base import ClientBook
    from worker.windows import NextWindows

CONFIG: web.AppKey[Config] = web.AppKey("config")
CREDENTIALS: web.AppKey[Credentials | None] = web.AppKey("credentials")
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
SPOOL: web.AppKey[Buffer] = web.AppKey("spool")
SINK: web.AppKey[ClientBook] = web.AppKey("sink")
COMMITTER: web.AppKey[Committer] = web.AppKey("committer")
INTAKE: web.AppKey[Intake] = web.AppKey("intake")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
HEALTH: web.AppKey[Health] = web.AppKey("health")
# Extra /status sections (MQTT, backfills, inbox): name -> snapshot function.
STATUS_EXTRA: web.AppKey[dict[str, Callable[[], Any]]] = web.AppKey("status_extra")
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler")
# Each store's next window against the clock (visible_at of pushes, status, preview).
WINDOWS: web.AppKey[NextWindows] = web.AppKey("windows")
MQTT: web.AppKey[Any] = web.AppKey("mqtt")  # worker.sources.mqtt.MqttSource when enabled
# Per request: an `Expect: 100-continue` whose "100 Continue" waits for `web.read_body`.
CONTINUE_PENDING: web.RequestKey[bool] = web.RequestKey("continue_pending", bool)
