"""The application: one cleanup context per resource, registered in dependency order.

Start-up order (teardown is the exact reverse; a failed start unwinds only what started):

    1. spool      open/recover the SQLite spool, start its group-commit writer
    2. sink       open the configured sink (sqlite | postgres)
    3. committer  restore window state; validation + commit machinery
    4. intake     adapters -> router (no resource of its own)
    5. scheduler  the window timer task
    6. sources    MQTT subscriber (when enabled), drop-folder watcher

Shutdown (SIGTERM): aiohttp stops accepting and lets in-flight requests finish (up to
`http.shutdown_timeout_s`); then the contexts unwind in reverse: sources stop (no new
intake), the scheduler stops (a running commit is cancelled before ack: its rows stay in
the spool), the sink closes, and the spool drains its last group, checkpoints and closes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web

from worker import keys
from worker.buffers.sqlite import open_spool
from worker.clock import Clock, SystemClock
from worker.committer import Scheduler, open_committer
from worker.config import Config, Credentials
from worker.health import Health
from worker.intake import Intake
from worker.metrics import Metrics
from worker.sinks import open_sink
from worker.sources.backfill import add_backfill_routes
from worker.sources.http import add_routes, errors_middleware
from worker.sources.inbox import add_file_routes, open_inbox

log = logging.getLogger("possync.app")

ExtraContext = Callable[[web.Application], AsyncIterator[None]]


def build_app(
    cfg: Config,
    *,
    clock: Clock | None = None,
    credentials: Credentials | None = None,
    extra_contexts: list[ExtraContext] | None = None,
) -> web.Application:
    """Build the aiohttp application (nothing starts until the app runs)."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=cfg.http.max_body_bytes)
    app[keys.CONFIG] = cfg
    app[keys.CLOCK] = clock or SystemClock()
    app[keys.CREDENTIALS] = credentials
    app[keys.METRICS] = Metrics()
    app[keys.HEALTH] = Health()
    app[keys.STATUS_EXTRA] = {}
    app.cleanup_ctx.append(_spool_ctx)
    app.cleanup_ctx.append(_sink_ctx)
    app.cleanup_ctx.append(_committer_ctx)
    app.cleanup_ctx.append(_scheduler_ctx)
    app.cleanup_ctx.append(_sources_ctx)
    for ctx in extra_contexts or []:
        app.cleanup_ctx.append(ctx)
    add_routes(app)
    add_backfill_routes(app)
    add_file_routes(app)
    return app


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[keys.CONFIG]
    health = app[keys.HEALTH]
    async with open_spool(cfg.spool, cfg.spool_path, app[keys.CLOCK]) as spool:
        app[keys.SPOOL] = spool
        log.debug("spool %s open: %d pending rows", cfg.spool_path, spool.total_pending())
        health.add_check("spool", spool.check)
        health.add_check("spool_wal", spool.check_wal)  # red while lost WAL frames await review
        if spool.recovered_from:
            health.notes["spool"] = f"damaged spool moved aside to {spool.recovered_from}"
        if spool.file_note:
            health.notes["spool_file"] = spool.file_note

        def integrity() -> str | None:
            if spool.integrity in (None, "ok"):
                return None
            return f"spool failed its integrity check ({spool.integrity}); restart to salvage it"

        health.note_sources["spool_integrity"] = integrity
        yield
        log.info("closing spool: final group commit and checkpoint")


async def _sink_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_sink(app[keys.CONFIG]) as sink:
        app[keys.SINK] = sink
        app[keys.HEALTH].add_check("sink", sink.health)
        damaged = getattr(sink, "recovered_from", None)
        if damaged:
            app[keys.HEALTH].notes["sink"] = (
                f"damaged sink file moved aside to {damaged}; started with a fresh database "
                "(restore or re-sync from it)"
            )
        yield
        log.info("closing sink")


async def _committer_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[keys.CONFIG]
    async with open_committer(
        cfg, app[keys.SPOOL], app[keys.SINK], app[keys.CLOCK], app[keys.METRICS]
    ) as committer:
        app[keys.COMMITTER] = committer
        app[keys.INTAKE] = Intake(
            cfg, app[keys.SPOOL], app[keys.SINK], committer, app[keys.CLOCK], app[keys.METRICS]
        )
        yield


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    scheduler = Scheduler(app[keys.CONFIG], app[keys.COMMITTER], app[keys.CLOCK])
    app[keys.SCHEDULER] = scheduler
    async with app[keys.HEALTH].owned_task("scheduler", scheduler.run()):
        yield
        app[keys.COMMITTER].stop.set()


async def _sources_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[keys.CONFIG]
    async with AsyncExitStack() as stack:
        if cfg.mqtt.enabled:
            from worker.sources.mqtt import open_mqtt_source

            source: Any = await stack.enter_async_context(
                open_mqtt_source(cfg, app[keys.INTAKE], app[keys.CLOCK])
            )
            app[keys.MQTT] = source
            app[keys.HEALTH].add_check("mqtt", source.check)
            app[keys.STATUS_EXTRA]["mqtt"] = source.snapshot
        await stack.enter_async_context(open_inbox(app))
        yield
