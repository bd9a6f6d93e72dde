"""What runs inside a backfill parse worker process (`backfill_proc.ParsePool`).

Kept apart so a spawned worker imports only this and `backfill_parse` (msgspec and the
record types: ~30 ms), not the server (aiohttp alone is ~100 ms): the first slice of the
first backfill waits for that import.

A blob is the whole lines one slice of the body completed, with the byte position of the
first (`backfill_proc.SliceCutter`); `iter_lines` cuts them exactly as `LineSplitter` cuts
the same bytes, numbering them from the blob's first, so the worker needs no state between
slices (the handler adds the lines and records before).
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

# (byte position of its first line, the reads holding its lines, bytes to drop at the end:
# the last newline and what follows it)
Blob = tuple[int, list[bytes], int]
Parsed = tuple[Chunk, int]  # the slice's rows etc. (line numbers from 1), how many lines


def blob_data(blob: Blob) -> bytes:
    """The whole lines of a blob, without their last newline."""
    _, pieces, trim = blob
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return data[: len(data) - trim] if trim else data


def iter_lines(data: bytes, at: int, max_line: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(line number from 1, position, stripped line or None if over `max_line`), as
    `LineSplitter` yields them."""
    for line, raw in enumerate(data.split(b"\n"), 1):
        yield line, at, raw.strip() if len(raw) <= max_line else None
        at += len(raw) + 1


def parse_blob(blob: Blob, zone: ZoneInfo, max_line: int) -> Parsed:
    """One slice's lines as a `Chunk` (indexes and line numbers from the slice's first)."""
    data = blob_data(blob)
    chunk = parse_lines(iter_lines(data, blob[0], max_line), zone, max_line, 0)
    return chunk, data.count(b"\n") + 1


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
