"""`possync backfill FILE --source S --store ID`: stream a history file to a running server.

    FILE --split at line ends, ~--chunk-bytes each--> POST /v1/backfill/{source}/{store}
         ?offset=<chunk start>[&commit=now&final=1 on the last chunk]
    after each 200: <FILE>.possync-offset = {size, mtime_ns, offset, lines, store, source}
    at the end: summary table; rejections -> --rejects (NDJSON); offset file removed

Resume: the offset file holds the byte offset the server acknowledged last (every record
before it is durable on the server). A new run for the same file, store and source whose
size and mtime still match continues from there; anything else starts over, which is
harmless: the server deduplicates by natural key and version. `--restart` ignores it.

Retries: 502/503/504/507 and connection errors are retried with exponential backoff (the
server's Retry-After when it sends one), except a refused connection before the server has
answered once (a wrong URL or a stopped server fails at once, naming the URL); other errors,
and a chunk still failing after
`--retries`, stop the run with exit code 1, leaving the offset file for the next run.

Only canonical NDJSON is split into chunks. A native export file (or a canonical JSON
array) goes whole in one request: the server streams mapping CSV exports, and buffers the
other formats up to `http.max_body_bytes`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
OFFSET_SUFFIX = ".possync-offset"
REJECTS_SUFFIX = ".possync-rejects.ndjson"
PIECE_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({502, 503, 504, 507})
MAX_RETRY_AFTER_S = 300.0

_CONTENT_TYPES = {
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".xml": "application/xml",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
}

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Options:
    """What to send where."""

    file: Path
    source: str
    store: str
    url: str = DEFAULT_URL
    token: str = ""
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    commit_now: bool = False
    commit_every_s: float = 5.0
    rejects: Path | None = None  # default: <FILE>.possync-rejects.ndjson
    retries: int = 8
    max_backoff_s: float = 60.0
    max_chunks: int | None = None  # stop after this many chunks (resume later)
    restart: bool = False
    timeout_s: float = 900.0


class OffsetState(msgspec.Struct, kw_only=True):
    """`<FILE>.possync-offset`: the last acknowledged position in the file."""

    size: int
    mtime_ns: int
    offset: int
    lines: int  # newlines before `offset` (rejections get absolute line numbers)
    store: str
    source: str


class Summary(msgspec.Struct, kw_only=True):
    """What a run did (printed as the summary table)."""

    ok: bool = True
    complete: bool = False
    error: str | None = None
    resumed_from: int = 0
    size: int = 0
    last_offset: int = 0
    chunks: int = 0
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_itemized: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    rejects_path: str | None = None

    @property
    def rate(self) -> float:
        """Records per second over the run."""
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ChunkFailed(Exception):
    """A chunk failed for good (non-retriable status, or retries exhausted)."""


# ---------------------------------------------------------------------- files (blocking)


def offset_path(file: Path) -> Path:
    """The sidecar offset file of `file`."""
    return file.with_name(file.name + OFFSET_SUFFIX)


def load_offset(
    file: Path, store: str, source: str, size: int, mtime_ns: int
) -> OffsetState | None:
    """The saved state if it still describes this file, store and source."""
    try:
        state = msgspec.json.decode(offset_path(file).read_bytes(), type=OffsetState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if (state.size, state.mtime_ns, state.store, state.source) != (size, mtime_ns, store, source):
        return None
    if not 0 <= state.offset <= size:
        return None
    return state


def save_offset(file: Path, state: OffsetState) -> None:
    """Write the offset file atomically and durably (tmp + fsync + rename)."""
    path = offset_path(file)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(msgspec.json.encode(state))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def chunk_end(file: Path, start: int, chunk_bytes: int, size: int) -> int:
    """The end of the chunk starting at `start`: just past the first newline at or after
    `start + chunk_bytes - 1`, or the end of the file."""
    probe = start + max(chunk_bytes, 1) - 1
    if probe >= size - 1:
        return size
    with file.open("rb") as f:
        f.seek(probe)
        pos = probe
        while True:
            piece = f.read(64 * 1024)
            if not piece:
                return size
            nl = piece.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(piece)


def _starts_with(file: Path, prefix: bytes) -> bool:
    with file.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(prefix)


class _ChunkReader:
    """Async iterable over file[start:end] in pieces; counts newlines; closed by its caller."""

    def __init__(self, file: Path, start: int, end: int, on_piece: Callable[[int], None]) -> None:
        self.file = file
        self.start = start
        self.end = end
        self.on_piece = on_piece
        self.newlines = 0
        self._f: IO[bytes] | None = None
        self._left = end - start

    def __aiter__(self) -> _ChunkReader:
        return self

    async def __anext__(self) -> bytes:
        if self._left <= 0:
            raise StopAsyncIteration
        if self._f is None:
            self._f = await asyncio.to_thread(self._open)
        piece = await asyncio.to_thread(self._f.read, min(PIECE_BYTES, self._left))
        if not piece:
            raise ChunkFailed(f"{self.file} shrank while it was being sent")
        self._left -= len(piece)
        self.newlines += piece.count(b"\n")
        self.on_piece(len(piece))
        return piece

    def _open(self) -> IO[bytes]:
        f = self.file.open("rb")
        f.seek(self.start)
        return f

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f is not None:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------- HTTP


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, min(float(raw), MAX_RETRY_AFTER_S))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def backoff_s(attempt: int, max_backoff_s: float) -> float:
    """Exponential backoff with jitter: ~0.5 s, 1 s, 2 s, ... capped at `max_backoff_s`."""
    base: float = min(max_backoff_s, 0.5 * 2**attempt)
    return base * (0.5 + random.random() / 2)


def _error_text(status: int, body: bytes) -> str:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"
    if isinstance(data, dict) and "error" in data:
        field = f" (field {data.get('field')})" if data.get("field") else ""
        return f"HTTP {status}: {data['error']}{field}"
    return f"HTTP {status}"


class _Sender:
    """Posts chunks with retries and keeps the run's counters."""

    def __init__(
        self,
        opts: Options,
        session: aiohttp.ClientSession,
        console: Console,
        progress: Progress,
        task: TaskID,
        sleep: Sleep,
    ) -> None:
        self.opts = opts
        self.session = session
        self.console = console
        self.progress = progress
        self.task = task
        self.sleep = sleep
        base = opts.url.rstrip("/")
        self.endpoint = f"{base}/v1/backfill/{opts.source}/{opts.store}"
        self.reached = False  # the server answered at least once in this run

    async def post(
        self, start: int, end: int, *, final: bool, ctype: str
    ) -> tuple[dict[str, Any], int]:
        """Send file[start:end]; return (response body, newlines in the chunk)."""
        params = {"offset": str(start)}
        if self.opts.commit_now:
            params["commit"] = "now"
            params["commit_every_s"] = str(self.opts.commit_every_s)
            if final:
                params["final"] = "1"
        if ctype != "application/x-ndjson":
            params["filename"] = self.opts.file.name
        headers = {
            "Authorization": f"Bearer {self.opts.token}",
            "Content-Type": ctype,
            "Content-Length": str(end - start),
        }
        last = "no attempt"
        for attempt in range(self.opts.retries + 1):
            self.progress.update(self.task, completed=start)
            reader = _ChunkReader(
                self.opts.file, start, end, lambda n: self.progress.advance(self.task, n)
            )
            delay: float | None
            try:
                async with self.session.post(
                    self.endpoint, params=params, data=reader, headers=headers
                ) as resp:
                    self.reached = True
                    body = await resp.read()
                    if resp.status == 200:
                        result: dict[str, Any] = msgspec.json.decode(body)
                        if result.get("bytes") != end - start:
                            raise ChunkFailed(
                                f"server read {result.get('bytes')} bytes of a "
                                f"{end - start}-byte chunk"
                            )
                        return result, reader.newlines
                    last = _error_text(resp.status, body)
                    if resp.status not in RETRY_STATUSES:
                        raise ChunkFailed(last)
                    delay = _retry_after(resp.headers)
            except aiohttp.ClientConnectorError as exc:
                refused = exc.os_error.errno == errno.ECONNREFUSED
                if refused and not self.reached:
                    # Nothing listens there: a wrong --url, or the server is not running.
                    # Retrying cannot help; a server that goes away mid-run is retried.
                    raise ChunkFailed(
                        f"cannot reach {self.opts.url.rstrip('/')}: connection refused"
                    ) from None
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = None
            finally:
                reader.close()
            if attempt == self.opts.retries:
                break
            if delay is None:
                delay = backoff_s(attempt, self.opts.max_backoff_s)
            self.console.print(
                f"[yellow]chunk at byte {start}: {last}; retry {attempt + 1}/"
                f"{self.opts.retries} in {delay:.1f} s[/yellow]"
            )
            await self.sleep(delay)
        raise ChunkFailed(
            f"chunk at byte {start} failed after {self.opts.retries + 1} attempts: {last}"
        )


def _content_type(opts: Options) -> tuple[str, bool]:
    """(content type, split into chunks?) for the file."""
    suffix = opts.file.suffix.lower()
    if opts.source == "canonical":
        if suffix == ".json" or _starts_with(opts.file, b"["):
            return "application/json", False
        return "application/x-ndjson", True
    return _CONTENT_TYPES.get(suffix, "application/octet-stream"), False


class _Rejects:
    """The rejects file: opened lazily, appended to when resuming."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.append = append
        self._f: IO[bytes] | None = None
        self.written = 0
        if not append:
            path.unlink(missing_ok=True)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._f is None:
            self._f = self.path.open("ab" if self.append else "wb")
        self._f.write(b"".join(msgspec.json.encode(r) + b"\n" for r in rows))
        self._f.flush()
        self.written += len(rows)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


async def send_file(
    opts: Options, *, console: Console | None = None, sleep: Sleep = asyncio.sleep
) -> Summary:
    """Stream `opts.file` to the server chunk by chunk, resuming from its offset file."""
    console = console or Console()
    file = opts.file
    st = await asyncio.to_thread(file.stat)
    size, mtime_ns = st.st_size, st.st_mtime_ns
    saved = (
        None
        if opts.restart
        else await asyncio.to_thread(load_offset, file, opts.store, opts.source, size, mtime_ns)
    )
    if saved is None and not opts.restart and offset_path(file).exists():
        console.print(
            f"[yellow]{offset_path(file)} does not match this file/store/source: "
            "starting from the beginning (re-sent records count as duplicates)[/yellow]"
        )
    offset = saved.offset if saved else 0
    lines = saved.lines if saved else 0
    ctype, split = await asyncio.to_thread(_content_type, opts)
    rejects_path = opts.rejects or file.with_name(file.name + REJECTS_SUFFIX)
    rejects = _Rejects(rejects_path, append=saved is not None)
    summary = Summary(resumed_from=offset, size=size, last_offset=offset)
    if offset:
        console.print(f"resuming {file.name} at byte {offset:,} of {size:,} (line {lines + 1:,})")
    t0 = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        DownloadColumn(),
        TextColumn("{task.fields[records]:,} rec"),
        TextColumn("{task.fields[rate]:,.0f} rec/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        expand=True,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=opts.timeout_s)
    try:
        with progress:
            task = progress.add_task(file.name, total=size, completed=offset, records=0, rate=0.0)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                sender = _Sender(opts, session, console, progress, task, sleep)
                while offset < size:
                    if opts.max_chunks is not None and summary.chunks >= opts.max_chunks:
                        break
                    end = (
                        await asyncio.to_thread(chunk_end, file, offset, opts.chunk_bytes, size)
                        if split
                        else size
                    )
                    result, newlines = await sender.post(
                        offset, end, final=end >= size, ctype=ctype
                    )
                    rejects.write(
                        [
                            {
                                **r,
                                "line": lines + r["line"] if r.get("line") is not None else None,
                            }
                            for r in result.get("rejected", [])
                        ]
                    )
                    summary.chunks += 1
                    summary.records += int(result["records"])
                    summary.accepted += int(result["accepted"])
                    summary.duplicates += int(result["duplicates"])
                    summary.rejected += int(result["rejected_count"])
                    summary.bytes += end - offset
                    offset, lines = end, lines + newlines
                    summary.last_offset = offset
                    state = OffsetState(
                        size=size,
                        mtime_ns=mtime_ns,
                        offset=offset,
                        lines=lines,
                        store=opts.store,
                        source=opts.source,
                    )
                    await asyncio.to_thread(save_offset, file, state)
                    elapsed = time.perf_counter() - t0
                    progress.update(
                        task,
                        completed=offset,
                        records=summary.records,
                        rate=summary.records / elapsed if elapsed > 0 else 0.0,
                    )
        summary.complete = offset >= size
        if summary.complete:
            await asyncio.to_thread(offset_path(file).unlink, True)
    except ChunkFailed as exc:
        summary.ok = False
        summary.error = str(exc)
    finally:
        rejects.close()
        summary.elapsed_s = time.perf_counter() - t0
    summary.rejected_itemized = rejects.written
    summary.rejects_path = str(rejects_path) if rejects.written else None
    return summary


def print_summary(summary: Summary, opts: Options, console: Console) -> None:
    """The summary table."""
    table = Table(title=f"{opts.file.name} -> {opts.store}", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("accepted", f"{summary.accepted:,}")
    table.add_row("duplicates", f"{summary.duplicates:,}")
    table.add_row("rejected", f"{summary.rejected:,}")
    table.add_row("records", f"{summary.records:,}")
    table.add_row("chunks", f"{summary.chunks:,}")
    table.add_row("bytes sent", f"{summary.bytes:,}")
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    table.add_row("records/s", f"{summary.rate:,.0f}")
    if summary.resumed_from:
        table.add_row("resumed at byte", f"{summary.resumed_from:,}")
    console.print(table)
    if summary.rejects_path:
        more = summary.rejected - summary.rejected_itemized
        extra = f" ({more:,} more not itemized by the server)" if more > 0 else ""
        console.print(f"rejections with reasons: {summary.rejects_path}{extra}")
    if not summary.ok:
        console.print(f"[red]failed: {summary.error}[/red]")
        console.print(
            f"acknowledged up to byte {summary.last_offset:,}; run the same command again to resume"
        )
    elif not summary.complete:
        console.print(
            f"stopped at byte {summary.last_offset:,} of {summary.size:,}; "
            "run the same command again to resume"
        )


# ---------------------------------------------------------------------- argparse


def add_backfill_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `possync backfill`."""
    p = subparsers.add_parser(
        "backfill",
        help="stream a history file to a running server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="NDJSON of canonical records, or a native export file")
    p.add_argument("--source", required=True, help="source name (canonical, or the store's POS)")
    p.add_argument("--store", required=True, help="store id")
    p.add_argument(
        "--url",
        default=os.environ.get("POSSYNC_URL", DEFAULT_URL),
        help="server base URL (default: $POSSYNC_URL or %(default)s)",
    )
    p.add_argument("--token", default=None, help="admin token (default: $POSSYNC_ADMIN_TOKEN)")
    p.add_argument(
        "--chunk-bytes",
        type=_positive_int,
        default=DEFAULT_CHUNK_BYTES,
        help="bytes per request, split at line ends (default: %(default)s)",
    )
    p.add_argument(
        "--commit-now",
        action="store_true",
        help="commit to the sink as it goes (rate-limited), for a new store's first setup",
    )
    p.add_argument(
        "--commit-every-s",
        type=float,
        default=5.0,
        help="with --commit-now: at most one commit per this many seconds (default: 5)",
    )
    p.add_argument(
        "--rejects",
        type=Path,
        default=None,
        help=f"rejected lines as NDJSON (default: FILE{REJECTS_SUFFIX})",
    )
    p.add_argument("--retries", type=int, default=8, help="retries per chunk (default: 8)")
    p.add_argument(
        "--max-chunks",
        type=_positive_int,
        default=None,
        help="stop after this many chunks; a later run resumes",
    )
    p.add_argument(
        "--restart", action="store_true", help=f"ignore FILE{OFFSET_SUFFIX} and start at byte 0"
    )
    p.set_defaults(handler=run_backfill_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from parsed arguments (token from $POSSYNC_ADMIN_TOKEN when not given)."""
    return Options(
        file=Path(args.file),
        source=args.source,
        store=args.store,
        url=args.url,
        token=args.token or os.environ.get("POSSYNC_ADMIN_TOKEN", ""),
        chunk_bytes=args.chunk_bytes,
        commit_now=args.commit_now,
        commit_every_s=args.commit_every_s,
        rejects=args.rejects,
        retries=max(0, args.retries),
        max_chunks=args.max_chunks,
        restart=args.restart,
    )


def run_backfill_command(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run `possync backfill`: 0 done (or stopped by --max-chunks), 1 a chunk failed,
    2 usage error, 130 interrupted."""
    console = console or Console()
    opts = options_from_args(args)
    if not opts.token:
        console.print("possync backfill: no token: pass --token or set POSSYNC_ADMIN_TOKEN")
        return 2
    if not opts.file.is_file():
        console.print(f"possync backfill: {opts.file}: not a file")
        return 2
    try:
        summary = asyncio.run(send_file(opts, console=console))
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted: every acknowledged chunk is durable; "
            "run the same command again to resume[/yellow]"
        )
        return 130
    print_summary(summary, opts, console)
    return 0 if summary.ok else 1
