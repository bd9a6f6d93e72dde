"""Backfill parse workers: NDJSON slices turned into spool rows outside the server's GIL.

    handler: request slices -> SliceCutter (the partial last line carried, as LineSplitter)
        -> one blob of whole lines per slice -> ParsePool.parse(...)   (up to DEPTH in flight)
             process mode: a spawned worker process (concurrent.futures), parse_blob there
             thread mode:  a worker thread of this process, parse_blob there
        <- Chunk (spool rows encoded, entities, rejections by slice-relative index), in order

Why a process: the parse (lean decode, money check, encode: ~9 us a record) held the GIL
for four fifths of a backfill (`python -m bench.profile backfill --gil`), so the event loop,
the spool writer and the parse took turns on one core. In a worker process it runs on the
other core; what crosses the pipe is one slice of bytes out and one pickled `Chunk` back
(about 1 us a record to unpickle, on the pool's own result thread).

Invariants

* Same verdicts, same rows. The worker runs `backfill_parse.parse_lines` over the lines
  `iter_blob` cuts, and `SliceCutter` + `iter_blob` yield exactly what `LineSplitter`
  yields for the same stream (tests/test_backfill_proc.py, with hypothesis). A slice is
  parsed without state (its first line number and byte position travel with it; rejection
  indexes are relative and the handler adds the records counted before), so slices can be
  parsed anywhere and are consumed in order.
* Bounded: a request has at most `DEPTH` slices submitted and not yet consumed; a slice is
  at most `backfill.SLICE_BYTES` plus one carried line.
* Owned, visible, no zombie: the pool is one app cleanup context (`add_parse_pool`). Its
  processes start on first use, ignore SIGINT/SIGTERM (the server's own shutdown drains
  in-flight requests, then stops them), and are joined at cleanup. A worker that dies
  fails the requests whose slices it held with 503 (`Unavailable`: what was acknowledged
  before is durable, resend the chunk), is logged, and turns the `backfill_parse` check of
  /readyz red until a fresh worker (started by the next request) has parsed a slice.
* `POSSYNC_BACKFILL_PARSE=thread` parses on threads instead (the comparison measure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from typing import Literal
from zoneinfo import ZoneInfo

from aiohttp import web

from worker import keys
from worker.errors import Unavailable
from worker.sources.backfill_parse import Chunk
from worker.sources.backfill_worker import Blob, parse_blob, worker_init

log = logging.getLogger("possync.backfill")

ParseMode = Literal["process", "thread"]
# Slices one request keeps submitted and not yet consumed: one being parsed, one queued.
DEPTH = 2
PROCESSES = 1  # the spool writer and the event loop need the other core of two


def parse_mode() -> ParseMode:
    """`POSSYNC_BACKFILL_PARSE` (process, the default, or thread)."""
    mode = os.environ.get("POSSYNC_BACKFILL_PARSE", "process")
    return "thread" if mode == "thread" else "process"


# ---------------------------------------------------------------------- cutting the stream


class SliceCutter:
    """`LineSplitter` at slice granularity: whole lines as one blob, the rest carried.

    `feed` returns the blob of the complete lines a slice makes available (without its
    last newline; None when there is none) and, when the carried partial line outgrew
    `max_line`, that line's (line number, position): it is rejected and skipped to its
    newline, never buffered. `iter_blob` cuts a blob into `LineSplitter`'s triples.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._carry = b""
        self._carry_at = 0
        self._pos = 0
        self._line = 0
        self._skipping = False

    def feed(self, chunk: bytes) -> tuple[Blob | None, tuple[int, int] | None]:
        """The blob of whole lines `chunk` completes, and an over-long partial line."""
        at = self._pos
        self._pos += len(chunk)
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                return None, None
            self._skipping = False
            chunk = chunk[nl + 1 :]
            at += nl + 1
        if self._carry:
            chunk, at = self._carry + chunk, self._carry_at
        blob: Blob | None = None
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            blob = (self._line, at, chunk[:cut])
            self._line += chunk.count(b"\n", 0, cut) + 1
            at += cut + 1
            chunk = chunk[cut + 1 :]
        if len(chunk) > self.max_line:
            self._line += 1
            self._skipping = True
            self._carry = b""
            return blob, (self._line, at)
        self._carry, self._carry_at = chunk, at
        return blob, None

    def finish(self) -> Blob | None:
        """The last line when the stream does not end with a newline."""
        carry, self._carry = self._carry, b""
        if not carry:
            return None
        blob = (self._line, self._carry_at, carry)
        self._line += 1
        return blob


# ---------------------------------------------------------------------- the pool


class Parse:
    """One submitted blob: its future, and the executor running it (None on a thread)."""

    __slots__ = ("cf", "executor", "future")

    def __init__(
        self,
        future: asyncio.Future[Chunk],
        cf: concurrent.futures.Future[Chunk] | None = None,
        executor: concurrent.futures.ProcessPoolExecutor | None = None,
    ) -> None:
        self.future = future
        self.cf = cf
        self.executor = executor

    async def abandon(self) -> None:
        """Cancel it if not started, else wait for it (an error path leaves nothing running)."""
        if self.cf is not None:
            self.cf.cancel()  # only takes if the worker has not started it
        await asyncio.wait({self.future})


class ParsePool:
    """The app's parse workers (processes, or threads in thread mode); see module docs."""

    def __init__(self, mode: ParseMode, processes: int = PROCESSES) -> None:
        self.mode: ParseMode = mode
        self.processes = processes
        self.failed: str | None = None  # the last worker death, until a fresh one parsed
        self.parsed = 0  # slices parsed (status, tests)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._closed = False

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._closed:
            raise Unavailable("server is shutting down", field=None)
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_init,
            )
        return self._executor

    def _retire(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        """Forget a broken executor (the next parse starts a fresh one)."""
        if self._executor is executor:
            self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, blob: Blob, zone: ZoneInfo, max_line: int) -> Parse:
        """Start parsing one blob; `result` of it is the `Chunk` (or `Unavailable`)."""
        if self.mode == "thread":
            return Parse(asyncio.ensure_future(asyncio.to_thread(parse_blob, blob, zone, max_line)))
        executor = self._pool()
        try:
            cf = executor.submit(parse_blob, blob, zone, max_line)
        except BrokenProcessPool:
            # Died while idle: nothing of this request was in it. One fresh start.
            self._note_death(executor, "while idle")
            executor = self._pool()
            cf = executor.submit(parse_blob, blob, zone, max_line)
        return Parse(asyncio.wrap_future(cf), cf, executor)

    async def result(self, parse: Parse) -> Chunk:
        """A submitted blob's `Chunk`; a dead worker becomes `Unavailable` (503)."""
        try:
            chunk = await parse.future
        except BrokenProcessPool:
            if parse.executor is not None:
                self._note_death(parse.executor, "under a backfill")
            raise Unavailable(
                "backfill parse worker died; what was acknowledged before is durable, "
                "resend this chunk",
                field=None,
            ) from None
        self.parsed += 1
        self.failed = None
        return chunk

    def _note_death(self, executor: concurrent.futures.ProcessPoolExecutor, when: str) -> None:
        if executor is not self._executor:
            return  # already retired by another request
        self.failed = f"backfill parse worker died {when}"
        log.error("backfill parse worker died %s; the next backfill starts a fresh one", when)
        self._retire(executor)

    async def check(self) -> None:
        """Readiness: red after a worker death until a fresh worker parsed a slice."""
        if self.failed is not None:
            raise Unavailable(self.failed, field=None)

    async def close(self) -> None:
        """Stop and join the workers (no zombie); pending parses are cancelled."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


PARSE_POOL: web.AppKey[ParsePool] = web.AppKey("backfill_parse_pool", ParsePool)


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = ParsePool(parse_mode())
    app[PARSE_POOL] = pool
    app[keys.HEALTH].add_check("backfill_parse", pool.check)
    try:
        yield
    finally:
        await pool.close()


def add_parse_pool(app: web.Application) -> None:
    """Register the pool's cleanup context (before the app starts)."""
    app.cleanup_ctx.append(_pool_ctx)
