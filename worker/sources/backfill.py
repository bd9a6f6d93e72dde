"""Backfill: a store's sales history streamed into the spool in bounded memory, behind live pushes.

    POST /v1/backfill/{source}/{store}?offset=N&commit=now&commit_every_s=5&final=1
         (admin token; body = NDJSON of canonical records, or one native export file)

    request.content --slices of up to 256 KiB (one read + what is already buffered)-->
        one worker-thread hop per slice: LineSplitter (carries the partial last line)
        -> backfill_parse.parse_lines: lean decoder, the full one for what it refuses
           (a bad line is rejected by index, line, offset, field, as the full decoder says)
        -> spool rows encoded on that thread (origin "backfill", business date set)
        -> batches of 5,000 -> SqliteSpool.append_rows(priority="bulk"); customers and
           products of the batch -> Intake.ingest (the sink), after the spool's room check
           (one batch in flight while the next is parsed; the spool writer puts live
            appends first and fills its group with bulk rows)
        -> [commit=now] committer.commit_store(store, now, force=True), rate-limited
        -> 200 {"accepted", "duplicates", "rejected", "rejected_count", "records", ...}

Invariants

* Bounded memory: the body is never held whole. At any time the handler holds one network
  read, one partial line (at most `http.max_body_bytes`; a longer line is rejected and
  skipped), the batch being parsed and the one batch being written.
  Exception: sources other than `canonical` NDJSON (native export files, JSON arrays) have
  no incremental parser yet; their body is buffered up to `http.max_body_bytes` and parsed
  whole by the source's adapter.
* Durable before 200: every route call is awaited before the response, and `Intake.route`
  returns only after the spool group holding its records committed (fsync).
* Idempotent: records are deduplicated by natural key and version, so a client may resend a
  chunk (after a timeout, a 503, a crash) without doubling anything. An error response
  (503 spool full, 413 over `http.max_backfill_bytes`, a dropped connection) may follow a
  partial write; the client resends the same chunk, the already-written part counts as
  duplicates. `offset` is bookkeeping only: echoed as `last_offset` and added to the byte
  offsets of rejections, so they are absolute in the client's file. The resume itself is
  client-side (`possync backfill` keeps `<FILE>.possync-offset`).
* Live first: parsing runs on a worker thread, so the loop serves live pushes meanwhile;
  each batch yields to the loop, longer while `spool.live_waiting()`; the spool writer
  serves live appends before bulk ones.
* No triggers: every sale is marked `origin: "backfill"`; the window commit writes no
  trigger events for such sales (worker/triggers.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from worker import keys
from worker.adapters import get_adapter
from worker.adapters.base import MAX_REJECTIONS, AdapterContext, Parsed, Rejection
from worker.adapters.canonical import NDJSON_TYPES
from worker.adapters.mapping import CSV_TYPES, Item, MappingAdapter, MappingSpec, csv_items
from worker.adapters.native import Dropped
from worker.adapters.streaming import LineSplitter, TextLines, run_threaded
from worker.buffers.base import Buffer
from worker.committer import WindowResult
from worker.config import StoreConfig
from worker.errors import (
    PayloadTooLarge,
    PossyncError,
    RecordInvalid,
    UnsupportedMediaType,
)
from worker.intake import Envelope, IngestOutcome, Intake
from worker.records import Record, Sale
from worker.sources.backfill_parse import Chunk, mark_history, parse_lines
from worker.web import (
    body_error,
    json_response,
    media_type,
    read_body,
    require_admin,
    route_source,
)

log = logging.getLogger("possync.backfill")

BATCH_RECORDS = 5_000
READ_BYTES = 256 * 1024
# A parse slice: one read topped up with what is buffered, up to this (one thread hop each).
SLICE_BYTES = 1024 * 1024
# How many extra event-loop turns the parser gives away while live appends are staged.
_LIVE_YIELDS = 64
_RECENT = 20
_STREAM_TYPES = NDJSON_TYPES | {
    "application/json-seq",
    "",
    "application/octet-stream",
    "text/plain",
}


class BackfillRejection(msgspec.Struct, frozen=True):
    """One line that could not be read: record index, 1-based line in the body, absolute byte
    offset of the line (request `offset` + position), reason and field path."""

    index: int
    line: int | None
    offset: int | None
    error: str
    field: str | None


PROGRESS_EVERY = 100_000  # records between two backfill.progress log events


class BackfillRun:
    """One running (or finished) backfill request: counters for /status and the response."""

    def __init__(self, run_id: str, store: str, source: str, offset: int, started: str) -> None:
        self.id = run_id
        self.store = store
        self.source = source
        self.offset = offset
        self.started = started
        self._t0 = time.perf_counter()  # real elapsed time: a measurement, not a schedule
        self.elapsed_s: float | None = None
        self.state: Literal["running", "done", "failed"] = "running"
        self.error: str | None = None
        self.bytes = 0
        self.records = 0
        self.accepted = 0
        self.duplicates = 0
        self.realtime = 0
        self.spooled = 0
        self.rejected: list[BackfillRejection] = []
        self.rejected_count = 0
        self.dropped: dict[str, int] = {}
        self.commits = 0
        self.committed = 0
        self.quarantined = 0
        self.commit_error: str | None = None
        self.visible_at: str | None = None

    def reject(
        self, index: int, line: int | None, offset: int | None, error: str, field: str | None
    ) -> None:
        """Count a rejection; keep the first `MAX_REJECTIONS` of them itemized (built only then)."""
        self.rejected_count += 1
        if len(self.rejected) < MAX_REJECTIONS:
            self.rejected.append(BackfillRejection(index, line, offset, error, field))

    def take_rejections(self, parsed: Parsed) -> None:
        """An adapter's rejections: its itemized ones, then the ones it only counted."""
        for r in parsed.rejected:
            self.reject(r.index, None, None, r.error, r.field)
        self.rejected_count += parsed.rejected_count - len(parsed.rejected)

    def log_fields(self) -> dict[str, Any]:
        """The figures of a backfill.progress / backfill.end log event."""
        return {
            "store": self.store,
            "source": self.source,
            "backfill": self.id,
            "records": self.records,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected_count,
            "bytes": self.bytes,
            "rate_records_s": self.rate(),
        }

    def elapsed(self) -> float:
        """Seconds since the request started (frozen once it ended)."""
        if self.elapsed_s is not None:
            return self.elapsed_s
        return time.perf_counter() - self._t0

    def rate(self) -> float:
        """Records read per second so far."""
        elapsed = self.elapsed()
        return round(self.records / elapsed, 1) if elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The /status entry."""
        return {
            "id": self.id,
            "store": self.store,
            "source": self.source,
            "state": self.state,
            "started": self.started,
            "elapsed_s": round(self.elapsed(), 3),
            "records": self.records,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected_count,
            "bytes": self.bytes,
            "rate_records_s": self.rate(),
            "offset": self.offset,
            "commits": self.commits,
            "error": self.error,
        }

    def result(self) -> dict[str, Any]:
        """The response body."""
        return {
            "id": self.id,
            "store": self.store,
            "source": self.source,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [msgspec.structs.asdict(r) for r in self.rejected],
            "rejected_count": self.rejected_count,
            "dropped": self.dropped,
            "records": self.records,
            "realtime": self.realtime,
            "spooled": self.spooled,
            "bytes": self.bytes,
            "offset": self.offset,
            "last_offset": self.offset + self.bytes,
            "elapsed_s": round(self.elapsed(), 3),
            "rate_records_s": self.rate(),
            "visible_at": self.visible_at,
            "commits": self.commits,
            "committed": self.committed,
            "quarantined": self.quarantined,
            "commit_error": self.commit_error,
        }


class Backfills:
    """Per app: the running backfills, the last few finished ones, and the commit rate limit."""

    def __init__(self) -> None:
        self.running: dict[str, BackfillRun] = {}
        self.recent: deque[BackfillRun] = deque(maxlen=_RECENT)
        # store -> clock.monotonic() of the last commit-now commit (shared by all requests).
        self.last_commit: dict[str, float] = {}
        self._ids = itertools.count(1)

    def start(self, store: str, source: str, offset: int, started: str) -> BackfillRun:
        """Register a new running backfill."""
        run = BackfillRun(f"bf-{next(self._ids)}", store, source, offset, started)
        self.running[run.id] = run
        return run

    def finish(self, run: BackfillRun, error: BaseException | None) -> None:
        """Move a run from running to recent."""
        run.elapsed_s = run.elapsed()
        if error is not None:
            run.state = "failed"
            run.error = error.message if isinstance(error, PossyncError) else type(error).__name__
        else:
            run.state = "done"
        self.running.pop(run.id, None)
        self.recent.append(run)

    def snapshot(self) -> dict[str, Any]:
        """/status `backfills` section."""
        return {
            "running": [r.snapshot() for r in self.running.values()],
            "recent": [r.snapshot() for r in reversed(self.recent)],
        }


BACKFILLS: web.AppKey[Backfills] = web.AppKey("backfills", Backfills)


def backfill_status(app: web.Application) -> dict[str, Any]:
    """Snapshot of running and recent backfills (the /status `backfills` section)."""
    state = app.get(BACKFILLS)
    return state.snapshot() if state is not None else {"running": [], "recent": []}


def add_backfills(app: web.Application) -> None:
    """The backfills' state, their metrics and /status section (idempotent); the route is
    in `worker.api.routes`."""
    if BACKFILLS in app:
        return
    app[BACKFILLS] = Backfills()
    metrics = app.get(keys.METRICS)
    if metrics is not None:
        stores = [s.id for s in app[keys.CONFIG].stores]
        metrics.watch_backfills(lambda: app[BACKFILLS].running.values(), stores)
    extra = app.get(keys.STATUS_EXTRA)
    if extra is not None:
        extra["backfills"] = lambda: backfill_status(app)


# ---------------------------------------------------------------------- writing


class _Writer:
    """Routes batches with one route call in flight, and commits as it goes when asked.

    Owns its tasks: `close()` cancels and awaits whatever is still running, so a failed or
    abandoned request leaves nothing behind (spool appends are shielded and still finish).
    """

    def __init__(
        self,
        app: web.Application,
        store: StoreConfig,
        source: str,
        run: BackfillRun,
        *,
        commit_now: bool,
        commit_every_s: float,
    ) -> None:
        self.app = app
        self.intake: Intake = app[keys.INTAKE]
        self.spool = app[keys.SPOOL]
        self.store = store
        self.source = source
        self.run = run
        self.commit_now = commit_now
        self.commit_every_s = commit_every_s
        self.state = app[BACKFILLS]
        self.clock = app[keys.CLOCK]
        self.zone = app[keys.CONFIG].store_zone(store)
        self._route: asyncio.Task[IngestOutcome] | None = None
        self._commit: asyncio.Task[WindowResult] | None = None
        self._uncommitted = False
        self._next_progress = PROGRESS_EVERY

    async def submit(self, records: list[Record]) -> None:
        """Wait for the batch in flight, then start writing this one."""
        self._progress()
        _mark_history(records, self.zone)
        await self._drain_route()
        await yield_to_live(self.spool)
        self._route = asyncio.create_task(
            self.intake.ingest(self._envelope(records)),
            name=f"backfill-route-{self.run.id}",
        )

    async def submit_chunk(self, chunk: Chunk) -> None:
        """`submit` for NDJSON already decoded and encoded off the loop (`parse_lines`)."""
        self._progress()
        await self._drain_route()
        await yield_to_live(self.spool)
        self._route = asyncio.create_task(
            self._write_chunk(chunk), name=f"backfill-route-{self.run.id}"
        )

    async def _write_chunk(self, chunk: Chunk) -> IngestOutcome:
        store = self.store.id
        rows = chunk.rows
        entities = IngestOutcome(accepted=0, duplicates=0, rejected=[], dropped={}, visible_at=None)
        spool = self.spool
        if chunk.entities:
            if rows:
                # Decide the whole batch first, as `Intake.route` does for a mixed push: no
                # upsert lands before a 503 for its sales.
                spool.check_room_rows(store, len(rows), chunk.nbytes)
            entities = await self.intake.ingest(self._envelope(chunk.entities))
        if not rows:
            return entities
        res = await spool.append_rows(store, rows, priority="bulk", nbytes=chunk.nbytes)
        return IngestOutcome(
            accepted=entities.accepted + res.accepted,
            duplicates=entities.duplicates + res.duplicates,
            rejected=[],
            dropped={},
            visible_at=self.intake.windows.visible_at(self.store),
            realtime=entities.realtime,
            spooled=len(rows),
            realtime_duplicates=entities.realtime_duplicates,
            spooled_duplicates=res.duplicates,
        )

    def _envelope(self, records: Sequence[Record]) -> Envelope:
        return Envelope(
            source=self.source,
            store=self.store.id,
            records=records,
            priority="bulk",
            origin="backfill",
            authorized=True,  # the admin token, checked by the handler
        )

    def _progress(self) -> None:
        run = self.run
        if run.records >= self._next_progress:
            self._next_progress = run.records + PROGRESS_EVERY
            fields = run.log_fields()
            log.info("backfill progress", extra={"event": "backfill.progress", **fields})

    async def _drain_route(self) -> None:
        task, self._route = self._route, None
        if task is None:
            return
        out = await task
        run = self.run
        run.accepted += out.accepted
        run.duplicates += out.duplicates
        run.realtime += out.realtime
        run.spooled += out.spooled
        if out.visible_at is not None:
            run.visible_at = out.visible_at.isoformat()
        if out.spooled:
            self._uncommitted = True
        await self._maybe_commit(force=False)

    async def _maybe_commit(self, *, force: bool) -> None:
        if not self.commit_now or not self._uncommitted:
            return
        if self._commit is not None:
            if not self._commit.done():
                if not force:
                    return  # one commit at a time; this batch waits for the next one
                await asyncio.wait({self._commit})
            self._collect_commit()
        now = self.clock.monotonic()
        last = self.state.last_commit.get(self.store.id, -math.inf)
        if not force and now - last < self.commit_every_s:
            return
        self.state.last_commit[self.store.id] = now
        self._uncommitted = False
        # The commit runs while the next batches are parsed and spooled; it takes rows
        # received up to now (later ones wait for the next commit or window).
        self._commit = asyncio.create_task(
            self.app[keys.COMMITTER].commit_store(self.store, self.clock.now(), force=True),
            name=f"backfill-commit-{self.run.id}",
        )

    def _collect_commit(self) -> None:
        task, self._commit = self._commit, None
        if task is None:
            return
        try:
            res = task.result()
        except PossyncError as exc:
            # The records are durable in the spool; the next window (or commit) takes them.
            self.run.commit_error = exc.message
            self._uncommitted = True
            log.warning("backfill %s: commit-now failed: %s", self.run.id, exc.message)
            return
        self.run.commits += 1
        self.run.committed += res.committed
        self.run.quarantined += res.quarantined
        if res.skipped:
            self._uncommitted = True

    async def finish(self, *, final: bool) -> None:
        """Wait for the last batch (and the running commit); commit once more if `final`."""
        await self._drain_route()
        if self._commit is not None:
            await asyncio.wait({self._commit})
            self._collect_commit()
        if self.commit_now:
            await self._maybe_commit(force=final)
            if self._commit is not None:
                await asyncio.wait({self._commit})
                self._collect_commit()

    async def close(self) -> None:
        """Cancel and await anything still running (error paths)."""
        tasks = [t for t in (self._route, self._commit) if t is not None]
        self._route = self._commit = None
        for task in tasks:
            task.cancel()
        # Their outcome no longer matters (the request failed); awaiting them is what does.
        await asyncio.gather(*tasks, return_exceptions=True)


def _mark_history(records: list[Record], zone: ZoneInfo) -> None:
    """`mark_history` on the freshly parsed sales of a batch (`Intake.route` would copy each)."""
    for r in records:
        if type(r) is Sale:
            mark_history(r, zone)


async def yield_to_live(spool: Buffer) -> None:
    """Give the event loop away once, and for a bounded while more when live appends wait."""
    await asyncio.sleep(0)
    for _ in range(_LIVE_YIELDS):
        if not spool.live_waiting():
            return
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- the handler


class _Params(msgspec.Struct, frozen=True, kw_only=True):
    offset: int = 0
    commit_now: bool = False
    commit_every_s: float = 5.0
    final: bool = False


def _params(query: Mapping[str, str]) -> _Params:
    raw_offset = query.get("offset", "0")
    try:
        offset = int(raw_offset)
    except ValueError:
        offset = -1
    if offset < 0:
        raise RecordInvalid(
            f"offset must be a non-negative integer, got {raw_offset[:40]!r}", field="offset"
        )
    commit = query.get("commit", "")
    if commit not in ("", "now", "window"):
        raise RecordInvalid(
            f"commit must be 'now' or 'window', got {commit[:40]!r}", field="commit"
        )
    raw_every = query.get("commit_every_s", "5")
    try:
        every = float(raw_every)
    except ValueError:
        every = -1.0
    if not (every >= 0 and math.isfinite(every)):
        raise RecordInvalid(
            f"commit_every_s must be a number of seconds >= 0, got {raw_every[:40]!r}",
            field="commit_every_s",
        )
    final = query.get("final", "0").lower() in ("1", "true", "yes")
    return _Params(offset=offset, commit_now=commit == "now", commit_every_s=every, final=final)


async def backfill(request: web.Request) -> web.Response:
    """POST /v1/backfill/{source}/{store}: stream history into the spool; see module docs."""
    require_admin(request)
    app = request.app
    cfg = app[keys.CONFIG]
    intake = app[keys.INTAKE]
    store = intake.store(request.match_info["store"])
    source = route_source(request, store)
    params = _params(request.query)
    limit = cfg.http.max_backfill_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes (max_backfill_bytes)", field="body")
    ctype = media_type(request)
    adapter = get_adapter(source)
    csv_spec: MappingSpec | None = None
    ctx = _context(request, store, ctype)
    if isinstance(adapter, MappingAdapter):
        spec = adapter.spec_for(ctx)
        if spec.format == "csv":
            if ctype not in CSV_TYPES:
                raise UnsupportedMediaType(
                    f"content type {ctype!r} not supported by mapping {spec.name!r} (csv)",
                    field="Content-Type",
                )
            csv_spec = spec
    state = app[BACKFILLS]
    run = state.start(store.id, source, params.offset, app[keys.CLOCK].now().isoformat())
    writer = _Writer(
        app, store, source, run, commit_now=params.commit_now, commit_every_s=params.commit_every_s
    )
    error: BaseException | None = None
    try:
        if source == "canonical" and ctype in _STREAM_TYPES:
            await _stream_ndjson(request, run, writer, limit, cfg.http.max_body_bytes)
        elif csv_spec is not None:
            await _stream_csv(request, run, writer, csv_spec, ctx, limit)
        else:
            await _buffered(request, run, writer, store, source, ctype)
        await writer.finish(final=params.final)
    except (ConnectionResetError, PayloadEncodingError) as exc:
        # The client went away or cut the body short: an expected event, not a server error.
        error = RecordInvalid(
            f"request body ended early ({exc}); what was acknowledged before is durable, "
            "resend this chunk",
            field="body",
        )
        raise error from None
    except web.RequestPayloadError:
        # A body that is not the Content-Encoding it claims (or is badly framed): a 400.
        error = body_error(request)
        raise error from None
    except BaseException as exc:
        error = exc
        raise
    finally:
        await writer.close()
        state.finish(run, error)
        log.info(
            "backfill %s store=%s source=%s: %d records, %d accepted, %d duplicates, "
            "%d rejected, %d bytes in %.1f s%s",
            run.id,
            store.id,
            source,
            run.records,
            run.accepted,
            run.duplicates,
            run.rejected_count,
            run.bytes,
            run.elapsed(),
            f" (failed: {run.error})" if run.error else "",
            extra={"event": "backfill.end", "failed": bool(run.error), **run.log_fields()},
        )
    return json_response(run.result())


async def _stream_ndjson(
    request: web.Request, run: BackfillRun, writer: _Writer, limit: int, max_line: int
) -> None:
    """Canonical NDJSON: each slice of reads decoded and encoded in one worker-thread hop.

    The loop stays free while a slice is parsed (live pushes are served), and the spool
    writes the batch before it meanwhile.
    """
    splitter = LineSplitter(max_line)
    zone = writer.zone
    base = run.offset
    batch = Chunk()

    def parse(data: bytes, last: bool) -> Chunk:
        lines = itertools.chain(splitter.feed(data), splitter.finish() if last else ())
        return parse_lines(lines, zone, max_line, run.records)

    async def take(data: bytes, last: bool) -> None:
        nonlocal batch
        # One hop at a time: the splitter is fed in order, and an error path has nothing
        # left running on the thread (the hop is awaited, it is not a Task).
        got = await asyncio.to_thread(parse, data, last)
        for index, line_no, pos, error, field in got.rejected:
            run.reject(index, line_no, base + pos, error, field)
        run.records += got.records
        batch.rows.extend(got.rows)
        batch.nbytes += got.nbytes
        batch.entities.extend(got.entities)
        if len(batch.rows) + len(batch.entities) >= BATCH_RECORDS:
            await writer.submit_chunk(batch)
            batch = Chunk()

    async for data in _slices(request, run, limit):
        await take(data, last=False)
    await take(b"", last=True)
    if batch.rows or batch.entities:
        await writer.submit_chunk(batch)


async def _slices(request: web.Request, run: BackfillRun, limit: int) -> AsyncIterator[bytes]:
    """The body in slices: one read, topped up to `SLICE_BYTES` with what is already buffered.

    A slice never waits for more than its first read, so a client that pauses has all it
    sent parsed (and counted) at once.
    """
    content = request.content
    while True:
        data = await content.read(READ_BYTES)
        if not data:
            return
        parts = [data]
        have = len(data)
        while have < SLICE_BYTES:
            more = content.read_nowait(SLICE_BYTES - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        if run.bytes + have > limit:
            raise PayloadTooLarge(
                f"body larger than {limit} bytes (max_backfill_bytes)", field="body"
            )
        run.bytes += have
        yield data if len(parts) == 1 else b"".join(parts)


async def _buffered(
    request: web.Request,
    run: BackfillRun,
    writer: _Writer,
    store: StoreConfig,
    source: str,
    ctype: str,
) -> None:
    """Native export files and JSON arrays: no incremental parser, so one whole body."""
    cfg = request.app[keys.CONFIG]
    body = await read_body(request, min(cfg.http.max_body_bytes, cfg.http.max_backfill_bytes))
    run.bytes = len(body)
    intake: Intake = request.app[keys.INTAKE]
    envelope = Envelope(
        source=source,
        store=store.id,
        body=body,
        content_type=ctype,
        headers=dict(request.headers),
        topic=request.query.get("topic"),
        filename=request.query.get("filename"),
        authorized=True,
    )
    parsed = await asyncio.to_thread(intake.parse, envelope, store)
    del envelope
    del body
    run.take_rejections(parsed)
    run.dropped = dict(parsed.dropped)
    run.records = len(parsed.records) + parsed.rejected_count
    records = parsed.records
    for i in range(0, len(records), BATCH_RECORDS):
        await writer.submit(records[i : i + BATCH_RECORDS])


# ---------------------------------------------------------------------- mapping CSV exports


def _context(request: web.Request, store: StoreConfig, ctype: str) -> AdapterContext:
    """The store's adapter context (built at start-up) for this request."""
    return (
        request.app[keys.INTAKE]
        .context(store.id)
        .for_push(
            headers=request.headers,
            content_type=ctype,
            received_at=request.app[keys.CLOCK].now(),
            topic=request.query.get("topic"),
            filename=request.query.get("filename"),
        )
    )


async def _stream_csv(
    request: web.Request,
    run: BackfillRun,
    writer: _Writer,
    spec: MappingSpec,
    ctx: AdapterContext,
    limit: int,
) -> None:
    """A mapping CSV export, streamed: the mapping's row reader runs on a worker thread.

    `csv_items` reads rows with the csv module over a *blocking* line iterator and emits a
    sale when its rows end (so they must be adjacent); `run_threaded` feeds it lines decoded
    from the request body and hands back batches, each side waiting for the other.
    """
    text = TextLines(spec.encoding)

    async def feed() -> AsyncIterator[list[str]]:
        async for chunk in request.content.iter_chunked(READ_BYTES):
            if run.bytes + len(chunk) > limit:
                raise PayloadTooLarge(
                    f"body larger than {limit} bytes (max_backfill_bytes)", field="body"
                )
            lines = text.feed(chunk)
            run.bytes += len(chunk)
            yield lines
        yield text.finish()

    async def consume(items: list[Item]) -> None:
        records: list[Record] = []
        for item in items:
            if isinstance(item, Rejection):
                run.reject(item.index, None, None, item.error, item.field)
                run.records += 1
            elif isinstance(item, Dropped):
                run.dropped[item.reason] = run.dropped.get(item.reason, 0) + 1
            else:
                records.append(item)
        run.records += len(records)
        if records:
            await writer.submit(records)

    await run_threaded(
        feed(), lambda lines: csv_items(lines, spec, ctx), consume, batch=BATCH_RECORDS
    )
