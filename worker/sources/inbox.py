"""Drop folders: POS export files picked up from disk, and the same as an HTTP upload.

    <data_dir>/inbox/{source}/{store}/NAME           a complete file (NAME.done or stable)
        --scan every inbox.scan_interval_s (injectable clock)-->
        read (thread, <= file_limit) -> Intake.ingest(priority="bulk", authorized=True)
        -> ok:        processed/NAME  + processed/NAME.result.json
        -> permanent: failed/NAME     + failed/NAME.error.json
        -> transient: left in place, retried on a later scan with backoff

    POST /v1/files/{source}/{store}?filename=NAME   (store token or admin; body = the file)
        -> the same Intake.ingest -> 202 {"accepted", "duplicates", "rejected", "dropped",
           "visible_at"} (the push response)

Invariants

* Complete files only. A file is taken when `NAME.done` sits next to it, or when its size
  and mtime are unchanged across two scans at least `inbox.stable_s` apart (clock time).
  Dotfiles, `*.tmp`, `*.part` and `*.done` are never taken themselves.
* Order. Per folder, files are taken in natural name order (digit runs compare as
  numbers, so The Edge's `1-...`, `2-...`, `10-...` parts and timestamped names come in
  the order they were written). The first file that is not ready (still being written, or
  backing off after a transient error) holds back the files after it in that folder.
* Finalize after durability. A file is moved only after `Intake.ingest` returned, i.e. its
  records are in the sink or fsynced in the spool. A crash (or a failed rename) between the
  ingest and the move leaves the file where it was; the next scan ingests it again, which
  is harmless: every write is deduplicated by natural key and version.
* Move order: the marker first, then the file, then the report. A crash after the marker
  moved leaves an unmarked file, which is retaken once stable (harmless); a marker is never
  left behind for a later file of the same name to inherit.
* A failing file never kills the watcher. Permanent errors (400/401/404/413/415: the file
  itself is wrong) send it to `failed/`; transient ones (spool full, sink or disk
  unavailable, I/O errors) leave it in place with exponential backoff. The watcher is one
  task owned by `Health`, so if it dies anyway `/readyz` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from worker import keys
from worker.adapters import get_adapter
from worker.clock import Clock
from worker.config import Config, StoreConfig
from worker.errors import (
    ConfigError,
    NotFound,
    PayloadTooLarge,
    PossyncError,
    SinkError,
    SpoolFull,
    StorageFull,
    Unavailable,
)
from worker.intake import IngestOutcome, Intake, NothingAcceptable
from worker.sources.http import json_response, media_type, outcome_json, read_body

log = logging.getLogger("possync.inbox")

MARKER = ".done"
PROCESSED = "processed"
FAILED = "failed"
# Never taken as files: partial uploads by convention, and our own markers.
_SKIP_SUFFIXES = (".tmp", ".part", MARKER)
CONTENT_TYPES: Mapping[str, str] = {
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
    ".txt": "text/plain",
}
# A file is parsed whole by its adapter (as a push is), so it is held in memory a few times
# over: cap it at this many push bodies (and never above `http.max_backfill_bytes`).
FILE_BODIES = 16
BACKOFF_MAX_S = 300.0
_DIGITS = re.compile(r"(\d+)")
_ENCODE = msgspec.json.Encoder(decimal_format="string")

INBOX: web.AppKey[Inbox] = web.AppKey("inbox")
_FILE_ROUTES: web.AppKey[bool] = web.AppKey("inbox_file_routes")


def file_limit(cfg: Config) -> int:
    """Largest file (bytes) taken from a drop folder or accepted by `POST /v1/files`."""
    return min(cfg.http.max_backfill_bytes, FILE_BODIES * cfg.http.max_body_bytes)


def content_type_for(name: str) -> str:
    """The media type a file name implies ("" when the extension says nothing)."""
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: digit runs compare as numbers, the rest as text (`2-x` before `10-x`)."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in _DIGITS.split(name) if part
    )


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same file later can succeed (nothing is wrong with the file)."""
    if isinstance(exc, SinkError):
        return exc.retriable
    return isinstance(exc, SpoolFull | Unavailable | StorageFull | OSError)


def _takeable(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(_SKIP_SUFFIXES)


# ---------------------------------------------------------------------- state


@dataclass(frozen=True)
class Folder:
    """One watched folder: where files for (source, store) are dropped."""

    source: str
    store: str
    path: Path


@dataclass(frozen=True)
class _Entry:
    name: str
    size: int
    mtime_ns: int
    marked: bool


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: datetime  # clock time the file was first seen with this size and mtime


@dataclass
class _Retry:
    attempts: int
    next_at: datetime
    error: str


@dataclass
class StoreStats:
    """Per-store counters for /status."""

    processed: int = 0
    failed: int = 0
    retries: int = 0  # transient failures, all time
    uploads: int = 0
    last_file: str | None = None
    last_at: str | None = None
    last_error: str | None = None
    waiting: set[Path] = field(default_factory=set)  # files currently backing off


# ---------------------------------------------------------------------- file operations
# (blocking: always called through asyncio.to_thread)


def _list(folder: Path) -> list[_Entry]:
    files: dict[str, os.DirEntry[str]] = {}
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.startswith(".") and e.is_file():
                files[e.name] = e
    out = []
    for name, e in files.items():
        if not _takeable(name):
            continue
        try:
            st = e.stat()
        except FileNotFoundError:
            continue  # gone between listing and stat
        out.append(_Entry(name, st.st_size, st.st_mtime_ns, name + MARKER in files))
    return out


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise PayloadTooLarge(
                f"file is {size} bytes, over the {limit} byte limit "
                f"({FILE_BODIES} x http.max_body_bytes, at most http.max_backfill_bytes); "
                "load it with `possync backfill` instead",
                field="body",
            )
        body = f.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"file grew past the {limit} byte limit", field="body")
    return body


def _free_name(dest: Path, name: str, stamp: str) -> str:
    """`name`, or `stem.<stamp>[-n]suffix` when `name` (or its report) is already there."""

    def taken(n: str) -> bool:
        return any(
            (dest / f"{n}{extra}").exists() for extra in ("", MARKER, ".result.json", ".error.json")
        )

    if not taken(name):
        return name
    p = Path(name)
    for i in range(1, 10_000):
        candidate = f"{p.stem}.{stamp}{'' if i == 1 else f'-{i}'}{p.suffix}"
        if not taken(candidate):
            return candidate
    raise FileExistsError(f"no free name for {name} in {dest}")


def _finalize(path: Path, dest: Path, stamp: str, report_suffix: str, report: bytes) -> str:
    """Move the marker, then the file, into `dest`; then write the report beside it."""
    dest.mkdir(exist_ok=True)
    final = _free_name(dest, path.name, stamp)
    marker = path.with_name(path.name + MARKER)
    # Marker first: a crash after it leaves an unmarked file (retaken when stable), never an
    # orphan marker that would vouch for a later, half-written file of the same name.
    with contextlib.suppress(FileNotFoundError):
        os.replace(marker, dest / (final + MARKER))
    os.replace(path, dest / final)
    tmp = dest / f".{final}{report_suffix}.tmp"
    tmp.write_bytes(report)
    os.replace(tmp, dest / (final + report_suffix))
    return final


# ---------------------------------------------------------------------- the watcher


class Inbox:
    """Watches every store's drop folders and ingests complete files; see the module doc."""

    def __init__(self, cfg: Config, intake: Intake, clock: Clock) -> None:
        self.cfg = cfg
        self.intake = intake
        self.clock = clock
        self.root = cfg.data_path / "inbox"
        self.limit = file_limit(cfg)
        self.folders: list[Folder] = []
        for s in cfg.stores:
            for source in dict.fromkeys((s.source, "canonical")):
                self.folders.append(Folder(source, s.id, self.root / source / s.id))
        self.stats: dict[str, StoreStats] = {s.id: StoreStats() for s in cfg.stores}
        self.stop = asyncio.Event()
        # Set while the watcher is parked on the clock between scans (tests advance then).
        self.idle = asyncio.Event()
        self.scans = 0
        self.last_scan_at: datetime | None = None
        self._seen: dict[Path, _Seen] = {}
        self._retry: dict[Path, _Retry] = {}
        self._scan_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def prepare(self) -> None:
        """Create every watched folder with its `processed/` and `failed/` (blocking)."""
        for f in self.folders:
            for sub in (PROCESSED, FAILED):
                (f.path / sub).mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        """Scan, then wait `scan_interval_s` on the clock (or until stop); forever."""
        interval = timedelta(seconds=self.cfg.inbox.scan_interval_s)
        try:
            while not self.stop.is_set():
                self.idle.clear()
                for folder in self.folders:
                    if self.stop.is_set():
                        return
                    await self._scan(folder)
                self.scans += 1
                self.last_scan_at = self.clock.now()
                self._wake_scan_waiters()
                # No await between here and the clock wait: a test that sees `idle` set
                # knows the watcher is parked on the clock.
                self.idle.set()
                if not await self.clock.wait_until(self.clock.now() + interval, self.stop):
                    return
        finally:
            # Nobody waits forever on a watcher that stopped or died.
            for _, fut in self._scan_waiters:
                fut.cancel()
            self._scan_waiters = []

    async def wait_scans(self, n: int) -> None:
        """Return once `n` scans have completed (for tests and tools; never polls)."""
        if self.scans >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._scan_waiters.append((n, fut))
        await fut

    def _wake_scan_waiters(self) -> None:
        keep = []
        for n, fut in self._scan_waiters:
            if fut.done():
                continue
            if self.scans >= n:
                fut.set_result(None)
            else:
                keep.append((n, fut))
        self._scan_waiters = keep

    async def _scan(self, folder: Folder) -> None:
        stats = self.stats[folder.store]
        try:
            entries = await asyncio.to_thread(_list, folder.path)
        except OSError as exc:
            stats.last_error = f"cannot list {folder.path}: {exc}"
            log.warning("inbox: %s", stats.last_error)
            if isinstance(exc, FileNotFoundError):
                # Someone removed the folder: recreate it so drops keep working.
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.prepare)
            return
        present = {folder.path / e.name for e in entries}
        for path in [p for p in self._seen if p.parent == folder.path and p not in present]:
            del self._seen[path]
        for path in [p for p in self._retry if p.parent == folder.path and p not in present]:
            del self._retry[path]
            stats.waiting.discard(path)
        now = self.clock.now()
        # Once a file cannot be taken (still being written, or backing off), the files
        # after it wait, so the folder keeps its order; their stability is still tracked.
        blocked = False
        for entry in sorted(entries, key=lambda e: natural_key(e.name)):
            if self.stop.is_set():
                return
            path = folder.path / entry.name
            ready = self._stable(path, entry, now) or entry.marked
            retry = self._retry.get(path)
            if retry is not None and now < retry.next_at:
                ready = False
            if blocked or not ready:
                blocked = True
                continue
            blocked = not await self._take(folder, path, entry)

    def _stable(self, path: Path, entry: _Entry, now: datetime) -> bool:
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (entry.size, entry.mtime_ns):
            self._seen[path] = _Seen(entry.size, entry.mtime_ns, now)
            return False
        return (now - seen.since).total_seconds() >= self.cfg.inbox.stable_s

    async def _take(self, folder: Folder, path: Path, entry: _Entry) -> bool:
        """Ingest one file and move it; False when it must be retried later."""
        stats = self.stats[folder.store]
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%SZ")
        try:
            body = await asyncio.to_thread(_read, path, self.limit)
            outcome = await self.intake.ingest(
                folder.source,
                folder.store,
                body,
                content_type=content_type_for(entry.name),
                filename=entry.name,
                priority="bulk",
                authorized=True,
            )
        except FileNotFoundError:
            log.info("inbox: %s vanished before it was read", path)
            self._forget(stats, path)
            return True
        except PossyncError as exc:
            if is_transient(exc):
                return self._retry_later(stats, path, exc)
            return await self._fail(folder, path, stamp, exc)
        except OSError as exc:
            return self._retry_later(stats, path, exc)
        except Exception as exc:
            # An adapter bug must not stop the folder: the file is parked in failed/ with
            # the error, and the traceback is in the log.
            log.exception("inbox: unexpected error on %s", path)
            return await self._fail(folder, path, stamp, exc)
        del body
        # Durable now: only from here may the file leave the folder.
        report = self._result(folder, entry.name, entry.size, outcome)
        try:
            final = await asyncio.to_thread(
                _finalize, path, path.parent / PROCESSED, stamp, ".result.json", report
            )
        except OSError as exc:
            # Left in place: the next attempt ingests it again (all duplicates) and moves it.
            return self._retry_later(stats, path, exc)
        self._forget(stats, path)
        stats.processed += 1
        stats.last_file = f"{PROCESSED}/{final}"
        stats.last_at = self.clock.now().isoformat()
        log.info(
            "inbox: %s/%s/%s -> %s/%s: %d accepted, %d duplicates, %d rejected",
            folder.source,
            folder.store,
            entry.name,
            PROCESSED,
            final,
            outcome.accepted,
            outcome.duplicates,
            len(outcome.rejected),
        )
        return True

    def _result(self, folder: Folder, name: str, size: int, out: IngestOutcome) -> bytes:
        body = {
            "file": name,
            "source": folder.source,
            "store": folder.store,
            "bytes": size,
            **outcome_json(out),
            "at": self.clock.now().isoformat(),
        }
        return msgspec.json.format(_ENCODE.encode(body)) + b"\n"

    async def _fail(self, folder: Folder, path: Path, stamp: str, exc: Exception) -> bool:
        stats = self.stats[folder.store]
        report = error_report(exc, self.clock.now())
        try:
            final = await asyncio.to_thread(
                _finalize, path, path.parent / FAILED, stamp, ".error.json", report
            )
        except OSError as move_exc:
            return self._retry_later(stats, path, move_exc)
        self._forget(stats, path)
        stats.failed += 1
        stats.last_file = f"{FAILED}/{final}"
        stats.last_at = self.clock.now().isoformat()
        stats.last_error = f"{path.name}: {_describe(exc)}"
        log.warning(
            "inbox: %s/%s/%s -> %s/%s: %s",
            folder.source,
            folder.store,
            path.name,
            FAILED,
            final,
            _describe(exc),
        )
        return True

    def _retry_later(self, stats: StoreStats, path: Path, exc: BaseException) -> bool:
        prev = self._retry.get(path)
        attempts = (prev.attempts if prev else 0) + 1
        delay = min(self.cfg.inbox.scan_interval_s * 2 ** (attempts - 1), BACKOFF_MAX_S)
        delay = max(delay, float(getattr(exc, "retry_after_s", 0)))
        self._retry[path] = _Retry(
            attempts, self.clock.now() + timedelta(seconds=delay), _describe(exc)
        )
        stats.waiting.add(path)
        stats.retries += 1
        stats.last_error = f"{path.name}: {_describe(exc)} (retry {attempts} in {delay:g} s)"
        log.warning("inbox: %s", stats.last_error)
        return False

    def _forget(self, stats: StoreStats, path: Path) -> None:
        self._seen.pop(path, None)
        self._retry.pop(path, None)
        stats.waiting.discard(path)

    def snapshot(self) -> dict[str, Any]:
        """The /status section: the watcher and per-store counters."""
        return {
            "enabled": self.cfg.inbox.enabled,
            "root": str(self.root),
            "scans": self.scans,
            "last_scan_at": self.last_scan_at.isoformat() if self.last_scan_at else None,
            "file_limit_bytes": self.limit,
            "stores": {
                store: {
                    "folders": [str(f.path) for f in self.folders if f.store == store],
                    "processed": st.processed,
                    "failed": st.failed,
                    "retrying": len(st.waiting),
                    "retries": st.retries,
                    "uploads": st.uploads,
                    "last_file": st.last_file,
                    "last_at": st.last_at,
                    "last_error": st.last_error,
                }
                for store, st in self.stats.items()
            },
        }


def _describe(exc: BaseException) -> str:
    msg = exc.message if isinstance(exc, PossyncError) else str(exc)
    return f"{type(exc).__name__}: {msg}"


def error_report(exc: BaseException, at: datetime) -> bytes:
    """`NAME.error.json`: {"error", "field", "status", "rejected": [...], "at"}."""
    if isinstance(exc, PossyncError):
        body: dict[str, Any] = {
            "error": exc.message,
            "field": exc.field,
            "status": exc.status,
            "type": type(exc).__name__,
        }
    else:
        body = {"error": f"internal error: {exc!r}", "field": None, "status": 500}
        body["type"] = type(exc).__name__
    body["rejected"] = (
        [msgspec.structs.asdict(r) for r in exc.rejected]
        if isinstance(exc, NothingAcceptable)
        else []
    )
    body["at"] = at.isoformat()
    return msgspec.json.format(_ENCODE.encode(body)) + b"\n"


@contextlib.asynccontextmanager
async def open_inbox(app: web.Application) -> AsyncIterator[Inbox]:
    """The drop-folder watcher: folders created, one owned task; needs INTAKE in `app`."""
    cfg = app[keys.CONFIG]
    inbox = Inbox(cfg, app[keys.INTAKE], app[keys.CLOCK])
    app[INBOX] = inbox
    app[keys.STATUS_EXTRA]["inbox"] = inbox.snapshot
    if not cfg.inbox.enabled:
        yield inbox
        return
    try:
        await asyncio.to_thread(inbox.prepare)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the inbox folders under {inbox.root}: {exc}", field="$.data_dir"
        ) from None
    async with app[keys.HEALTH].owned_task("inbox", inbox.run()) as task:
        try:
            yield inbox
        finally:
            inbox.stop.set()
            # Let the file in hand finish (bounded) before owned_task cancels the watcher;
            # a cancelled one is simply ingested again at the next start.
            await asyncio.wait({task}, timeout=cfg.http.shutdown_timeout_s)


async def inbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """`open_inbox` as an aiohttp cleanup context; a no-op when the app already has one."""
    if INBOX in app:
        yield
        return
    async with open_inbox(app):
        yield


# ---------------------------------------------------------------------- POST /v1/files


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def upload_filename(request: web.Request) -> str | None:
    """`?filename=`, else the Content-Disposition filename; a bare name (no directories)."""
    raw = request.query.get("filename")
    if not raw:
        disposition = request.headers.get("Content-Disposition")
        if disposition:
            _, params = parse_content_disposition(disposition)
            raw = content_disposition_filename(params, "filename")
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()[:255]
    return name if name not in ("", ".", "..") else None


def upload_content_type(request: web.Request, filename: str | None) -> str:
    """The Content-Type header, unless absent or generic; then the file name's extension."""
    given = media_type(request)
    if given in ("", "application/octet-stream") and filename:
        return content_type_for(filename) or given
    return given


def _check_source(source: str, store: StoreConfig) -> None:
    if get_adapter(source) is None:
        raise NotFound(f"unknown source {source!r}", field="source")
    if source not in ("canonical", store.source):
        raise NotFound(
            f"store {store.id!r} is configured for source {store.source!r}, not {source!r}",
            field="source",
        )


async def upload(request: web.Request) -> web.Response:
    """POST /v1/files/{source}/{store}: ingest one export file, answered like a push."""
    app = request.app
    intake = app[keys.INTAKE]
    store = intake.store(request.match_info["store"])
    # Authenticate before reading a body that may be large (signed sources included: a file
    # upload carries no webhook signature).
    intake.authorize(store, _bearer(request))
    source = request.match_info["source"]
    _check_source(source, store)
    filename = upload_filename(request)
    body = await read_body(request, file_limit(app[keys.CONFIG]))
    out = await intake.ingest(
        source,
        store.id,
        body,
        content_type=upload_content_type(request, filename),
        headers=dict(request.headers),
        topic=request.query.get("topic"),
        filename=filename,
        priority="bulk",
        authorized=True,
    )
    inbox = app.get(INBOX)
    if inbox is not None:
        inbox.stats[store.id].uploads += 1
    return json_response(outcome_json(out), status=202)


def add_file_routes(app: web.Application) -> None:
    """Register `POST /v1/files/{source}/{store}` (idempotent)."""
    if _FILE_ROUTES in app:
        return
    app[_FILE_ROUTES] = True
    app.router.add_post("/v1/files/{source}/{store}", upload)
