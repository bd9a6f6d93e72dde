"""The application: one cleanup context per resource, registered in dependency order.

Start-up order (teardown is the exact reverse; a failed start unwinds only what started):

    1. spool      open/recover the SQLite spool, start its group-commit writer
    2. sink       open the configured sink (sqlite | postgres)
    3. committer  the window lock (`worker.locks`, per `[sink] kind`), then restore window
                  state; validation + commit machinery
    4. intake     adapters -> router (no resource of its own)
    5. scheduler  the window timer task
    6. sources    MQTT subscriber (when enabled), drop-folder watcher

Shutdown (SIGTERM): aiohttp stops accepting and lets in-flight requests finish (up to
`http.shutdown_timeout_s`); then the contexts unwind in reverse: sources stop (no new
intake), the scheduler stops (a running commit is cancelled before ack: its rows stay in
the spool), the sink closes, and the spool drains its last group, checkpoints and closes.

Serving (`listen`, used by `possync serve`): at most `http.max_connections` open
connections. At the cap a new connection closes the oldest *idle* one (no request in
progress: a client still sending its request head, or an idle keep-alive), so a flood of
slow connections cannot lock `/healthz` or a push out; when every connection is busy the
new one gets an immediate `503 {"error","field":"connection"}` + Retry-After and is closed.
`POST /v1/push/...` goes from the server straight to the push route's handler and the
app's middlewares (`PushDispatch`: the same answers, without the router and the chain built
per request); every other request goes through the app. A connection must complete each
request head within `http.header_timeout_s` of connecting or of its previous answer
(aiohttp's keep-alive timer, armed at connect). aiohttp's own protocol errors (bad request
line or header, unsupported Content-Encoding) answer JSON, and are logged by type only: no
header value, no traceback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Any, NamedTuple

from aiohttp import hdrs, http_exceptions, web
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from worker import keys
from worker.api.routes import PUSH_PATH, add_routes
from worker.buffers.sqlite import open_spool
from worker.clock import Clock, SystemClock
from worker.committer import Committer
from worker.config import Config, Credentials
from worker.health import Health
from worker.intake import Intake
from worker.locks import open_window_lock
from worker.metrics import Metrics
from worker.scheduler import Scheduler
from worker.sinks import open_sink
from worker.sources.backfill import add_backfills
from worker.sources.inbox import open_inbox
from worker.web import errors_middleware
from worker.windows import NextWindows

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
    app[keys.WINDOWS] = NextWindows(cfg, app[keys.CLOCK])
    app[keys.STATUS_EXTRA] = {}
    app.cleanup_ctx.append(_spool_ctx)
    app.cleanup_ctx.append(_sink_ctx)
    app.cleanup_ctx.append(_committer_ctx)
    app.cleanup_ctx.append(_scheduler_ctx)
    app.cleanup_ctx.append(_sources_ctx)
    for ctx in extra_contexts or []:
        app.cleanup_ctx.append(ctx)
    add_routes(app)
    add_backfills(app)
    return app


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[keys.CONFIG]
    health = app[keys.HEALTH]
    async with open_spool(cfg.spool, cfg.spool_path, app[keys.CLOCK], health) as spool:
        app[keys.SPOOL] = spool
        app[keys.METRICS].watch_spool(spool, [s.id for s in cfg.stores])
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
    async with open_sink(
        app[keys.CONFIG], clock=app[keys.CLOCK], health=app[keys.HEALTH], metrics=app[keys.METRICS]
    ) as sink:
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
    cfg, spool, sink = app[keys.CONFIG], app[keys.SPOOL], app[keys.SINK]
    clock, metrics, windows = app[keys.CLOCK], app[keys.METRICS], app[keys.WINDOWS]
    async with (
        open_window_lock(cfg, clock) as window_lock,
        Committer(cfg, spool, sink, clock, metrics, windows, window_lock) as committer,
    ):
        app[keys.COMMITTER] = committer
        app[keys.INTAKE] = Intake(cfg, spool, sink, committer, clock, metrics, windows)
        yield


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    scheduler = Scheduler(app[keys.CONFIG], app[keys.COMMITTER], app[keys.CLOCK], app[keys.WINDOWS])
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
                open_mqtt_source(cfg, app[keys.INTAKE], app[keys.CLOCK], health=app[keys.HEALTH])
            )
            app[keys.MQTT] = source
            app[keys.HEALTH].add_check("mqtt", source.check)
            app[keys.STATUS_EXTRA]["mqtt"] = source.snapshot
            app[keys.METRICS].watch_mqtt(source)
        await stack.enter_async_context(open_inbox(app))
        yield


# ---------------------------------------------------------------------- serving

# Protocol errors aiohttp answers itself (before any route runs): the header or part of the
# request each one is about. The message is ours; aiohttp's can quote the bad bytes.
_PROTOCOL_FIELDS: tuple[tuple[type[Exception], str, str], ...] = (
    (http_exceptions.BadHttpMethod, "method", "not an HTTP method"),
    (http_exceptions.ContentEncodingError, "Content-Encoding", "unsupported Content-Encoding"),
    (http_exceptions.TransferEncodingError, "Transfer-Encoding", "bad Transfer-Encoding"),
    (http_exceptions.ContentLengthError, "Content-Length", "bad Content-Length"),
    (http_exceptions.LineTooLong, "headers", "request line or header too long"),
    (http_exceptions.InvalidHeader, "headers", "malformed header"),
    (http_exceptions.InvalidURLError, "path", "malformed request target"),
    (http_exceptions.BadStatusLine, "request line", "malformed request line"),
    (http_exceptions.BadHttpMessage, "request", "malformed HTTP request"),
)


def _protocol_error(exc: BaseException | None, status: int) -> tuple[str, str | None]:
    for kind, field, message in _PROTOCOL_FIELDS:
        if isinstance(exc, kind):
            return message, field
    return HTTPStatus(status).phrase.lower(), None


class ProtocolLogFilter(logging.Filter):
    """aiohttp's protocol logger: the exception's type only, never its text or traceback.

    aiohttp logs a malformed request with the exception, whose message quotes the raw
    header line (a NUL byte in `Authorization` printed the whole token). A malformed
    request is the client's fault: INFO, not ERROR.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drop it."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None or record.exc_text:
            record.msg = f"{record.getMessage()}: {type(exc).__name__ if exc else 'error'}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            # The client's fault: a request aiohttp cannot parse, or a body that is not its
            # Content-Encoding found while aiohttp drains it after our answer was sent.
            if isinstance(exc, http_exceptions.HttpProcessingError | web.RequestPayloadError):
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def protocol_logger() -> logging.Logger:
    """`possync.http.protocol`, filtered (the filter is added once)."""
    logger = logging.getLogger("possync.http.protocol")
    if not any(isinstance(f, ProtocolLogFilter) for f in logger.filters):
        logger.addFilter(ProtocolLogFilter())
    return logger


def server_kwargs(cfg: Config) -> dict[str, Any]:
    """aiohttp server settings from `[http]`: header timeout, no access log, our logger."""
    # aiohttp itself logs to "aiohttp.server" where our logger is not passed (test servers):
    # the same filter there.
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolLogFilter) for f in server_log.filters):
        server_log.addFilter(ProtocolLogFilter())
    return {
        # Armed at connect and after each answer; closes a connection that has not sent a
        # complete request head by then (slow-header clients), and idle keep-alives.
        "keepalive_timeout": cfg.http.header_timeout_s,
        "logger": protocol_logger(),
        # The access log prints request lines (query strings) and headers: off.
        "access_log": None,
    }


class _JsonErrorHandler(RequestHandler):
    """aiohttp's request handler, answering its own protocol errors as our JSON errors.

    aiohttp has no documented hook for the 400 it builds for a request it cannot parse
    (`RequestHandler.handle_error`, outside the app and its middleware; aio-libs/aiohttp
    #3287 asks for one, still open): overriding it here is the one place that depends on
    aiohttp internals, with `_idle` below; `test_http_hardening` pins both.
    """

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Log (through the filtered logger) and answer `{"error","field"}`."""
        super().handle_error(request, status, exc, message)
        error, field = _protocol_error(exc, status)
        if status >= 500:
            error, field = "internal error", None
        resp = web.Response(
            status=status,
            body=json.dumps({"error": error, "field": field}).encode(),
            content_type="application/json",
        )
        resp.force_close()
        return resp


_BUSY_BODY = b'{"error":"too many open connections","field":"connection"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class _Busy(asyncio.Protocol):
    """A connection past the cap while every connection is busy: 503 at once, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Answer and close; the request is never read."""
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class ConnectionCap:
    """Protocol factory: aiohttp's handler, at most `limit` connections (see module doc)."""

    def __init__(self, server: web.Server, kwargs: dict[str, Any], limit: int) -> None:
        self._server = server
        self._kwargs = kwargs
        self._limit = limit
        self.evicted = 0
        self.refused = 0

    @property
    def server(self) -> web.Server:
        """The aiohttp server whose handlers this makes (its `request_handler`: PushDispatch)."""
        return self._server

    def counts(self) -> tuple[int, int]:
        """(open connections, idle ones among them)."""
        conns = [h for h in self._server.connections if h.transport is not None]
        return len(conns), sum(1 for h in conns if _idle(h))

    def __call__(self) -> asyncio.BaseProtocol:
        """A handler for a new connection, making room or refusing at the cap."""
        conns = [h for h in self._server.connections if h.transport is not None]
        if len(conns) >= self._limit:
            for handler in conns:  # oldest first (insertion order)
                if _idle(handler):
                    handler.force_close()
                    self.evicted += 1
                    break
            else:
                self.refused += 1
                return _Busy()
        return _JsonErrorHandler(self._server, loop=asyncio.get_running_loop(), **self._kwargs)


def _idle(handler: RequestHandler) -> bool:
    """Open, and no request in progress (still sending a head, or an idle keep-alive).

    `_request_in_progress` is what aiohttp's own graceful shutdown reads to find idle
    connections; a closed one (`transport` None) is on its way out and not counted twice.
    """
    return handler.transport is not None and not handler._request_in_progress


class PushDispatch:
    """The server's request handler: the push route straight to its handler, the rest to the app.

    `Application._handle` resolves every request through the router, then through the
    middleware chain that aiohttp wraps around each handler; for the push, the hot route, that
    was 3-5 us of the ~85 us of event-loop CPU per request (four paired runs, 2026-12-03).
    Here a `POST /v1/push/...` is matched by the push route's own resource (the router's first,
    so it is the resource the router would pick) and run through the app's middlewares, built
    once: the same match info, handler, middlewares and answers. Anything else, and a push
    carrying `Expect` (its expect handler is the app's business), goes to the app unchanged.
    `request._match_info` is what `Application._handle` sets (aiohttp internals, as `_idle`);
    tests/test_push_dispatch.py pins the two paths to the same answers.
    """

    def __init__(
        self, app: web.Application, handle: Callable[[web.BaseRequest], Awaitable[Any]]
    ) -> None:
        self._app = app
        self._handle = handle
        route = next(
            r
            for r in app.router.routes()
            if r.method == hdrs.METH_POST
            and r.resource is not None
            and r.resource.canonical == PUSH_PATH
        )
        assert route.resource is not None
        self._resource = route.resource
        handler: Any = route.handler
        for m in reversed(app.middlewares):
            handler = partial(m, handler=handler)
        self._handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = handler
        self.fast = 0  # requests answered by the direct path (for tests and curiosity)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request (see the class docstring)."""
        if (
            request.method == hdrs.METH_POST
            and request.path.startswith(_PUSH_PREFIX)
            and not request.headers.get(hdrs.EXPECT)
            and isinstance(request, web.Request)
        ):
            match_info, _ = await self._resource.resolve(request)
            if isinstance(match_info, UrlMappingMatchInfo):
                match_info.add_app(self._app)
                match_info.freeze()
                request._match_info = match_info
                self.fast += 1
                return await self._handler(request)
        resp: web.StreamResponse = await self._handle(request)
        return resp


_PUSH_PREFIX = PUSH_PATH.split("{", 1)[0]


# The young generation's threshold while serving (CPython's default: 700); see `listen`.
YOUNG_GC_THRESHOLD = 50_000


def young_gc_threshold(env: Mapping[str, str]) -> int:
    """YOUNG_GC_THRESHOLD, or `POSSYNC_GC_GEN0`: a benchmark's switch to compare thresholds on
    the same build (like `POSSYNC_SWITCH_INTERVAL_MS`), not a setting; a value outside
    [100, 10,000,000] is ignored."""
    raw = env.get("POSSYNC_GC_GEN0")
    try:
        n = int(raw) if raw else YOUNG_GC_THRESHOLD
    except ValueError:
        n = YOUNG_GC_THRESHOLD
    return n if 100 <= n <= 10_000_000 else YOUNG_GC_THRESHOLD


class Listening(NamedTuple):
    """What `listen` yields: the bound port and the connection cap (its counts)."""

    port: int
    cap: ConnectionCap


@asynccontextmanager
async def listen(
    app: web.Application,
    cfg: Config,
    *,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Listening]:
    """Serve `app` (cleanup contexts, connection cap, header timeout) until the block ends.

    Leaving the block is the graceful shutdown of the module docstring.
    """
    kwargs = server_kwargs(cfg)
    runner = web.AppRunner(app, shutdown_timeout=cfg.http.shutdown_timeout_s, **kwargs)
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        server.request_handler = PushDispatch(app, server.request_handler)
        # AppRunner adds its access-log class to the handler settings; the cap's handlers
        # are built with the same settings.
        cap = ConnectionCap(
            server, {**kwargs, "access_log_class": AccessLogger}, cfg.http.max_connections
        )
        app[keys.STATUS_EXTRA]["connections"] = lambda: {
            "open": cap.counts()[0],
            "max": cfg.http.max_connections,
            "evicted_idle": cap.evicted,
            "refused_busy": cap.refused,
        }
        loop = asyncio.get_running_loop()
        if sock is None:
            listener = await loop.create_server(
                cap, cfg.http.host, cfg.http.port, ssl=ssl_context, backlog=1024, reuse_address=True
            )
        else:
            listener = await loop.create_server(cap, sock=sock, ssl=ssl_context, backlog=1024)
        # Everything built so far (config, routes, the spool's and sink's start-up state,
        # imported modules) lives as long as the process: out of the collector's sight, so
        # that a full collection walks only what requests made. Measured under the push
        # load (64 connections, 6 s): full collections took 211 ms, the longest a 40 ms
        # stall of the loop; frozen, 5.6 ms and 8 ms. Unfrozen at shutdown (in-process
        # servers in tests hand their objects back to the collector).
        gc.freeze()
        # The youngest generation is collected when tracked allocations outnumber frees by
        # its threshold (CPython's 700). 64 pushes in flight hold a few thousand objects, so
        # at 700 the collector ran ~140 times a second (16 us per push) and freed next to
        # nothing: requests free their objects by reference count; at 7,000 it ran once in
        # 6 s of the same load. A window page is thousands of decoded records: its decode
        # cost 29.6 us per sale at 700, 18.3 at 50,000, 15.4 with the collector off (5,000
        # sales alive, in-process). Records are untracked (`gc=False`, they cannot form
        # cycles); cyclic garbage of aiohttp and asyncio is still collected, a little later.
        thresholds = gc.get_threshold()
        gc.set_threshold(young_gc_threshold(os.environ), *thresholds[1:])
        try:
            yield Listening(listener.sockets[0].getsockname()[1], cap)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            listener.close()
    finally:
        await runner.cleanup()
