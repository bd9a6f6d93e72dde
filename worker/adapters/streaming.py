"""Incremental readers: a byte stream in, lines or parsed items out, in bounded memory.

The line readers every source shares, independent of the format: `iter_ndjson` for a
whole NDJSON body (push, upload, inbox file, via the canonical adapter), and what a
streaming source (backfill) needs between its network reads and an adapter's parser:

* `LineSplitter`: bytes -> (line number, byte offset, line) for NDJSON, carrying the partial
  last line between feeds; a line over `max_line` is reported once and skipped, never held.
* `TextLines`: bytes -> complete text lines of a given encoding (universal newlines, as the
  csv module expects from a file opened with `newline=""`); bad bytes raise `RecordInvalid`
  naming the absolute byte offset.
* `run_threaded`: runs a blocking, line-pulling parser (the mapping adapter's CSV reader) on
  a worker thread, fed from the event loop through a bounded queue and handing back batches
  through a one-slot queue, so neither side holds more than a few reads. It owns the thread:
  whatever ends the run (an error on either side, cancellation), the thread is unblocked and
  awaited before it returns.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import Generic, TypeVar

from worker.errors import RecordInvalid

T = TypeVar("T")


def iter_ndjson(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(index, line) for each non-blank line of a whole NDJSON body.

    One line at a time (no `split`): a million-line body never has a million line objects.
    """
    index = start = 0
    end = len(body)
    while start <= end:
        nl = body.find(b"\n", start)
        if nl < 0:
            nl = end
        line = body[start:nl].strip()
        start = nl + 1
        if line:
            yield index, line
            index += 1


class LineSplitter:
    """Splits a byte stream into lines, carrying the partial last line between feeds.

    Yields (line number from 1, byte position of the line's start, stripped line) for every
    line, blank ones included (callers skip them). A line longer than `max_line` is never
    buffered: it is yielded once with None instead of its bytes, and skipped to its newline.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._carry = b""
        self._carry_at = 0  # byte position of the carried partial line
        self._pos = 0  # byte position of the next fed byte
        self._line = 0
        self._skipping = False  # inside an over-long line, waiting for its newline

    def feed(self, chunk: bytes) -> Iterator[tuple[int, int, bytes | None]]:
        """Complete lines made available by `chunk`."""
        at = self._pos
        self._pos += len(chunk)
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                return
            self._skipping = False
            chunk = chunk[nl + 1 :]
            at += nl + 1
        if self._carry:
            chunk, at = self._carry + chunk, self._carry_at
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            for raw in chunk[:cut].split(b"\n"):
                self._line += 1
                yield self._line, at, raw.strip() if len(raw) <= self.max_line else None
                at += len(raw) + 1
            chunk = chunk[cut + 1 :]
        if len(chunk) > self.max_line:
            self._line += 1
            self._skipping = True
            self._carry = b""
            yield self._line, at, None
        else:
            self._carry, self._carry_at = chunk, at

    def finish(self) -> Iterator[tuple[int, int, bytes | None]]:
        """The last line when the stream does not end with a newline."""
        if self._carry:
            self._line += 1
            yield self._line, self._carry_at, self._carry.strip()
        self._carry = b""


class TextLines:
    """Decodes a byte stream incrementally into complete text lines (newlines kept)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._carry = ""
        self._pos = 0  # bytes fed so far

    def feed(self, chunk: bytes) -> list[str]:
        """The lines `chunk` completes; RecordInvalid naming the byte offset on bad bytes."""
        try:
            text = self._carry + self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise RecordInvalid(
                f"not {self.encoding} text (byte {self._pos + exc.start}); "
                "set the mapping's `encoding`",
                field="$",
            ) from None
        self._pos += len(chunk)
        cut = text.rfind("\n") + 1
        self._carry = text[cut:]
        # Universal newlines as in a file opened with newline="" (what csv expects).
        return list(io.StringIO(text[:cut], newline="")) if cut else []

    def finish(self) -> list[str]:
        """The last, unterminated line (if any) once the stream ended."""
        try:
            carry = self._carry + self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise RecordInvalid(f"not {self.encoding} text (at the end)", field="$") from None
        self._carry = ""
        return [carry] if carry else []


class _Batch(Generic[T]):
    """What the parser thread hands to the event loop: items, or the end (with its error)."""

    __slots__ = ("end", "error", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.end = False
        self.error: BaseException | None = None


async def run_threaded(
    feed: AsyncIterable[list[str]],
    parse: Callable[[Iterator[str]], Iterable[T]],
    consume: Callable[[list[T]], Awaitable[None]],
    *,
    batch: int,
) -> None:
    """Run `parse` over the lines `feed` yields on a worker thread; `consume` its items in batches.

    `feed` runs on the loop (network reads); `parse` pulls lines on the thread and blocks while
    the loop is behind; `consume` gets lists of at most `batch` items on the loop, in order.
    An exception in `parse` is raised here; so is the first of `feed` or `consume`.
    """
    loop = asyncio.get_running_loop()
    lines_q: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=4)
    out_q: asyncio.Queue[_Batch[T]] = asyncio.Queue(maxsize=1)
    abort = threading.Event()

    def pull() -> Iterator[str]:  # on the thread
        while not abort.is_set():
            got = asyncio.run_coroutine_threadsafe(lines_q.get(), loop).result()
            if got is None:
                return
            yield from got

    def push(out: _Batch[T]) -> None:  # on the thread; waits while the loop is behind
        if not abort.is_set():
            asyncio.run_coroutine_threadsafe(out_q.put(out), loop).result()

    def work() -> None:  # the thread
        out: _Batch[T] = _Batch()
        try:
            for item in parse(pull()):
                out.items.append(item)
                if len(out.items) >= batch:
                    push(out)
                    out = _Batch()
                if abort.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the loop, which raises it
            out.error = exc
        out.end = True
        push(out)

    async def fill() -> None:
        async for lines in feed:
            if lines:
                await lines_q.put(lines)
        await lines_q.put(None)

    async def drain() -> None:
        while True:
            out = await out_q.get()
            if out.error is not None:
                raise out.error
            if out.items:
                await consume(out.items)
            if out.end:
                return

    thread = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fill())
            tg.create_task(drain())
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    finally:
        # Unblock the thread wherever it waits (a get gets the end, a put gets room), then
        # await it: after `abort` it blocks at most once more, and both queues have room.
        abort.set()
        while not out_q.empty():
            out_q.get_nowait()
        while not lines_q.empty():
            lines_q.get_nowait()
        lines_q.put_nowait(None)
        await asyncio.gather(asyncio.shield(thread), return_exceptions=True)
