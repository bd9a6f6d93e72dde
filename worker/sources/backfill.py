"""Backfill: a store's sales history streamed into the spool in bounded memory, behind live pushes.

    POST /v1/backfill/{source}/{store}?offset=N&commit=now&commit_every_s=5&final=1
         (admin token; body = NDJSON of canonical records, or one native export file)

    request.content --slices of up to 1 MiB (one read + what is already buffered)-->
        SliceCutter (carries the partial last line) -> the whole lines of the slice
        -> the parse pool (backfill_proc: a worker process, up to 2 slices in flight):
           backfill_parse.parse_lines: lean decoder, the full one for what it refuses
           (a bad line is rejected by index, line, offset, field, as the full decoder says)
           -> spool rows encoded there (origin "backfill", business date set)
        -> batches of 5,000 -> SqliteSpool.append_rows(priority="bulk"); customers and
           products of the batch -> Intake.ingest (the sink), after the spool's room check
           (backfill_writer: two batches of rows in flight while the next is parsed; the
            spool writer puts live appends first and fills its group with bulk rows)
        -> [commit=now] committer.commit_store(store, now, force=True), rate-limited
        -> 200 {"accepted", "duplicates", "rejected", "rejected_count", "records", ...}

Invariants

* Bounded memory: the body is never held whole. At any time the handler holds one network
  read, one partial line (at most `http.max_body_bytes`; a longer line is rejected and
  skipped), two slices at the parse pool, the batch being filled and two being written.
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
* Live first: parsing runs in a worker process (or thread), so the loop serves live pushes;
  each batch yields to the loop, longer while `spool.live_waiting()`; the spool writer
  serves live appends before bulk ones.
* No triggers: every sale is marked `origin: "backfill"`; the window commit writes no
  trigger events for such sales (worker/triggers.py).

The rooms: this module reads and parses the body (the handler, NDJSON slices, CSV and
buffered sources); `backfill_parse` turns NDJSON lines into spool rows; `backfill_writer`
routes the batches and runs commit-now; `backfill_runs` keeps each request's counters and
the app's list of running and recent backfills (/status, metrics).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from worker import keys
from worker.adapters import get_adapter
from worker.adapters.base import AdapterContext, Rejection
from worker.adapters.canonical import NDJSON_TYPES
from worker.adapters.mapping import CSV_TYPES, Item, MappingAdapter, MappingSpec, csv_items
from worker.adapters.native import Dropped
from worker.adapters.streaming import TextLines, run_threaded
from worker.config import StoreConfig
from worker.errors import (
    PayloadTooLarge,
    RecordInvalid,
    UnsupportedMediaType,
)
from worker.intake import Envelope, Intake
from worker.records import Record
from worker.sources.backfill_parse import Chunk
from worker.sources.backfill_proc import DEPTH, PARSE_POOL, Parse, SliceCutter
from worker.sources.backfill_runs import BACKFILLS, BackfillRun, add_backfills
from worker.sources.backfill_worker import Blob
from worker.sources.backfill_writer import BackfillWriter
from worker.web import (
    body_error,
    json_response,
    media_type,
    read_body,
    require_admin,
    route_source,
)

log = logging.getLogger("possync.backfill")

# Imported from here by the app and the tests; they live in backfill_runs.
__all__ = ["BACKFILLS", "BATCH_RECORDS", "add_backfills", "backfill"]

BATCH_RECORDS = 5_000
READ_BYTES = 256 * 1024
# A parse slice: one read topped up with what is buffered, up to this (one parse each).
SLICE_BYTES = 1024 * 1024
PROGRESS_EVERY = 100_000  # records between two backfill.progress log events
_STREAM_TYPES = NDJSON_TYPES | {
    "application/json-seq",
    "",
    "application/octet-stream",
    "text/plain",
}


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
    writer = BackfillWriter(
        app,
        store,
        source,
        run,
        commit_now=params.commit_now,
        commit_every_s=params.commit_every_s,
        progress_every=PROGRESS_EVERY,
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
    request: web.Request, run: BackfillRun, writer: BackfillWriter, limit: int, max_line: int
) -> None:
    """Canonical NDJSON: each slice of reads parsed by the parse pool (`backfill_proc`).

    Two tasks of this request: the reader cuts slices and submits them, at most `DEPTH`
    ahead of the taker, which consumes the parses in order and hands batches to the
    writer. So the loop reads while a slice is parsed and the batch before it is spooled,
    and a client that pauses has all it sent parsed (and counted) at once.
    """
    pool = request.app[PARSE_POOL]
    zone = writer.zone
    base = run.offset
    # A slice's parse (None if it had no whole line) and the position of the over-long
    # partial line it ended with, if any; None ends the stream.
    queue: asyncio.Queue[tuple[Parse | None, int | None] | None]
    queue = asyncio.Queue(maxsize=DEPTH - 1)  # + the one the taker is waiting for

    async def read() -> None:
        cutter = SliceCutter(max_line)
        async for data in _slices(request, run, limit):
            await put(*cutter.feed(data))
        await put(cutter.finish(), None)
        await queue.put(None)

    async def put(blob: Blob | None, long: int | None) -> None:
        if blob is not None or long is not None:
            parse = pool.submit(blob, zone, max_line) if blob is not None else None
            await queue.put((parse, long))

    async def take() -> None:
        batch = Chunk()
        lines = 0  # lines of the body before the slice
        while (item := await queue.get()) is not None:
            parse, long = item
            if parse is not None:
                got, n = await pool.result(parse)
                first = run.records  # the slice's indexes and line numbers are its own
                for index, line_no, pos, error, field in got.rejected:
                    run.reject(first + index, lines + line_no, base + pos, error, field)
                run.records += got.records
                lines += n
                batch.rows.extend(got.rows)
                batch.nbytes += got.nbytes
                batch.entities.extend(got.entities)
            if long is not None:
                lines += 1
                error = f"line longer than {max_line} bytes"
                run.reject(run.records, lines, base + long, error, "$")
                run.records += 1
            if len(batch.rows) + len(batch.entities) >= BATCH_RECORDS:
                await writer.submit_chunk(batch)
                batch = Chunk()
        if batch.rows or batch.entities:
            await writer.submit_chunk(batch)

    reader = asyncio.ensure_future(read())
    taker = asyncio.ensure_future(take())
    try:
        await asyncio.wait({reader, taker}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (reader, taker):
            if task.done() and task.exception() is not None:
                task.result()  # the request fails with the error as raised
        await taker
    finally:
        # Owned: an error path (or a cancelled request) leaves neither task nor parse behind.
        for task in (reader, taker):
            task.cancel()
        await asyncio.gather(reader, taker, return_exceptions=True)
        while not queue.empty():
            item = queue.get_nowait()
            if item is not None and item[0] is not None:
                await item[0].abandon()


async def _slices(request: web.Request, run: BackfillRun, limit: int) -> AsyncIterator[list[bytes]]:
    """The body in slices: one read, topped up to `SLICE_BYTES` with what is already buffered
    (the reads as they came: the parse worker joins them).

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
        yield parts


async def _buffered(
    request: web.Request,
    run: BackfillRun,
    writer: BackfillWriter,
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
    writer: BackfillWriter,
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
