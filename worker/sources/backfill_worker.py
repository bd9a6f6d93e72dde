"""What runs inside a backfill parse worker process (`backfill_proc.ParsePool`).

Kept apart so a spawned worker imports only this and `backfill_parse` (msgspec and the
record types: ~30 ms), not the server (aiohttp alone is ~100 ms): the first slice of the
first backfill waits for that import.

A blob is the whole lines one slice of the body completed, with the line count and byte
position before it (`backfill_proc.SliceCutter`); `iter_blob` cuts it exactly as
`LineSplitter` cuts the same bytes, so the worker needs no state between slices.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from worker.sources.backfill_parse import Chunk, parse_lines

# The server's young-generation threshold while it serves (worker.app.YOUNG_GC_THRESHOLD,
# not imported: that would import the server): a slice allocates some 10,000 objects.
WORKER_GC_THRESHOLD = 50_000

Blob = tuple[int, int, bytes]  # (lines before it, byte position of its first line, lines)


def iter_blob(blob: Blob, max_line: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number, position, stripped line or None if over `max_line`) of a blob's lines."""
    line, at, data = blob
    for raw in data.split(b"\n"):
        line += 1
        yield line, at, raw.strip() if len(raw) <= max_line else None
        at += len(raw) + 1


def parse_blob(blob: Blob, zone: ZoneInfo, max_line: int) -> Chunk:
    """One slice's lines as a `Chunk`; its rejection indexes count from 0."""
    return parse_lines(iter_blob(blob, max_line), zone, max_line, 0)


def worker_init() -> None:
    """The worker's start: ignore SIGINT and SIGTERM, collect as the server does, end with it.

    The server drains its requests on those signals and then stops the pool; a signal sent
    to the whole process group must not kill a worker under a request. A server that dies
    without stopping the pool (SIGKILL, a crash) never closes the pool's queue (the worker
    holds both of its ends), so the worker watches the server's sentinel and exits then.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.freeze()  # the imports: never to be scanned again
    gc.set_threshold(WORKER_GC_THRESHOLD, *gc.get_threshold()[1:])
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # readable once the server is gone
    os._exit(0)  # nothing to flush: the server that wanted the results is gone
