"""Backfill parse workers: NDJSON slices turned into spool rows outside the server's GIL.

    handler: request slices -> SliceCutter (the partial last line carried, as LineSplitter)
        -> one blob of whole lines per slice -> ParsePool.submit(...)  (up to DEPTH in flight)
             process mode: a spawned worker process (concurrent.futures), parse_blob there
             thread mode:  a worker thread of this process, parse_blob there
        <- (Chunk, line count): spool rows encoded, entities, rejections numbered from the
           slice's first record and line; taken in order

Why a process: the parse (lean decode, money check, encode: ~9 us a record) held the GIL
for four fifths of a backfill (`python -m bench.profile backfill --gil`), so the event loop,
the spool writer and the parse took turns on one core. In a worker process it runs on the
other core; what crosses the pipe is one slice's reads out (the loop does not even join
them) and one pickled `Chunk` back (about 1 us a record to unpickle, on the pool's own
result thread).

Invariants

* Same verdicts, same rows. The worker runs `backfill_parse.parse_lines` over the lines
  `backfill_worker.iter_lines` cuts, and `SliceCutter` + `iter_lines` (line numbers plus
  the lines before) yield exactly what `LineSplitter` yields for the same stream
  (tests/test_backfill_proc.py, with hypothesis). A slice is parsed without state (its
  byte position travels with it; record indexes and line numbers are the slice's own and
  the handler adds those before), so slices can be parsed anywhere and are taken in order.
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
from worker.sources.backfill_worker import Blob, Parsed, parse_blob, worker_init

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

    `feed` takes a slice as the list of reads it was made of and returns the blob of the
    complete lines it makes available (None when there is none) and, when the carried
    partial line outgrew `max_line`, that line's byte position: it is rejected and skipped
    to its newline, never buffered. The blob holds the reads themselves, not a copy (the
    worker joins them): the loop copies only the partial last line. Line numbers are the
    taker's to count (`parse_blob` returns how many lines a blob held).
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._carry = b""
        self._carry_at = 0
        self._pos = 0
        self._skipping = False

    def feed(self, parts: list[bytes]) -> tuple[Blob | None, int | None]:
        """The blob of whole lines a slice completes, and an over-long partial line's position."""
        at = self._pos
        self._pos += sum(map(len, parts))
        if self._skipping:
            for i, part in enumerate(parts):
                nl = part.find(b"\n")
                if nl >= 0:
                    parts = [part[nl + 1 :], *parts[i + 1 :]]
                    at += nl + 1
                    break
                at += len(part)
            else:
                return None, None
            self._skipping = False
        if self._carry:
            parts = [self._carry, *parts]
            at = self._carry_at
        blob: Blob | None = None
        for i in range(len(parts) - 1, -1, -1):
            cut = parts[i].rfind(b"\n")
            if cut >= 0:
                trim = len(parts[i]) - cut  # the newline and what follows it
                blob = (at, parts[: i + 1], trim)
                at += sum(map(len, parts[: i + 1])) - trim + 1
                parts = [parts[i][cut + 1 :], *parts[i + 1 :]]
                break
        if sum(map(len, parts)) > self.max_line:
            self._skipping = True
            self._carry = b""
            return blob, at
        self._carry, self._carry_at = b"".join(parts), at
        return blob, None

    def finish(self) -> Blob | None:
        """The last line when the stream does not end with a newline."""
        carry, self._carry = self._carry, b""
        return (self._carry_at, [carry], 0) if carry else None


# ---------------------------------------------------------------------- the pool


class Parse:
    """One submitted blob: its future, and the executor running it (None on a thread)."""

    __slots__ = ("cf", "executor", "future")

    def __init__(
        self,
        future: asyncio.Future[Parsed],
        cf: concurrent.futures.Future[Parsed] | None = None,
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

    async def result(self, parse: Parse) -> Parsed:
        """A submitted blob's `Chunk` and line count; a dead worker becomes `Unavailable`."""
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
