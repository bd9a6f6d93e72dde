"""Drop folders: POS export files picked up from disk, and the same as an HTTP upload.

    <data_dir>/inbox/{source}/{store}/NAME           a complete file (NAME.done or stable)
        --notification (watchfiles) for that folder, or the full poll every inbox.rescan_s
          (inbox.scan_interval_s without notifications; injectable clock)-->
        read (thread, no symlink followed, <= file_limit) -> Intake.ingest(priority="bulk")
        -> ok:        processed/NAME  + processed/NAME.result.json
        -> permanent: failed/NAME     + failed/NAME.error.json
        -> transient: left in place, retried on a later scan with backoff
        -> refused:   (symlink, special file, hard link, bad name, ...) left in place, never
                      opened; counted per store on /status

    POST /v1/files/{source}/{store}?filename=NAME   (store token or admin; body = the file)
        -> the same Intake.ingest -> 202 {"accepted", "duplicates", "rejected", "dropped",
           "visible_at"} (the push response)

Invariants

* Never follow a symlink below the inbox root (`inbox_fs`): folders are opened with
  O_DIRECTORY|O_NOFOLLOW relative to their parent's fd, files with O_NOFOLLOW relative to
  the folder's fd, and moves are renames between fds of the real folders. A symlinked
  source folder, store folder, processed/ or failed/ stops that folder (nothing is taken
  from it) and is reported; a drop folder is an SFTP home, so nothing there is trusted.
* Complete files only. A file is taken when `NAME.done` sits next to it, or when its size,
  mtime and identity are unchanged across two scans at least `inbox.stable_s` apart (clock
  time); the opened fd must still be the file that was listed. Dotfiles, `*.tmp`, `*.part`
  and `*.done` are never taken themselves.
* Order. Per folder, files are taken in natural name order (digit runs compare as
  numbers, so timestamped names come in the order they were written). The first file that
  is not ready (still being written, or backing off after a transient error) holds back the
  files after it in that folder.
* Split exports (The Edge's `1-<stamp>-Transaction.json`, `2-...`) are one unit: taken
  together once complete, sorted by the export's own name (`inbox_groups`).
* Finalize after durability. A file is moved only after `Intake.ingest` returned, i.e. its
  records are in the sink or fsynced in the spool. A crash (or a failed rename) between the
  ingest and the move leaves the file where it was; the next scan ingests it again, which
  is harmless: every write is deduplicated by natural key and version.
* Move order: the marker first, then the file, then the report. A crash after the marker
  moved leaves an unmarked file, which is retaken once stable (harmless); a marker is never
  left behind for a later file of the same name to inherit.
* Notifications are hints. They only say which folder to scan next; a lost one is caught
  by the full poll, a folder waiting for a file to settle or a retry is rescanned when due.
* A failing file never kills the watcher. Permanent errors (400/401/404/413/415: the file
  itself is wrong) send it to `failed/`; transient ones (spool full, sink or disk
  unavailable, I/O errors) leave it in place with exponential backoff. The watcher is one
  task owned by `Health`, so if it dies anyway `/readyz` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from worker import keys
from worker.clock import Clock
from worker.config import Config
from worker.errors import ConfigError, PossyncError
from worker.intake import Envelope, IngestOutcome, Intake, NothingAcceptable, rejections_json
from worker.sources import inbox_fs, inbox_groups
from worker.sources.http import outcome_json
from worker.sources.inbox_fs import FAILED, PROCESSED, Entry, Listing, RefusedEntry
from worker.sources.inbox_notify import Notifier
from worker.sources.inbox_stats import LIST_IDLE_UP_TO, StoreStats
from worker.sources.inbox_upload import (
    INBOX,
    LIMIT_HINT,
    content_type_for,
    file_limit,
)

log = logging.getLogger("possync.inbox")

__all__ = ["INBOX", "Inbox", "content_type_for", "open_inbox"]

BACKOFF_MAX_S = 300.0
_DIGITS = re.compile(r"(\d+)")
_ENCODE = msgspec.json.Encoder(decimal_format="string")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: digit runs compare as numbers, the rest as text (`2-x` before `10-x`)."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in _DIGITS.split(name) if part
    )


# ---------------------------------------------------------------------- state


@dataclass(frozen=True)
class Folder:
    """One watched folder: where files for (source, store) are dropped."""

    source: str
    store: str
    path: Path


@dataclass
class _Seen:
    ident: tuple[int, int, int, int]  # size, mtime_ns, dev, ino
    since: datetime  # clock time the file was first seen with this identity


@dataclass
class _Retry:
    attempts: int
    next_at: datetime
    error: str


def _ident(e: Entry) -> tuple[int, int, int, int]:
    return (e.size, e.mtime_ns, e.dev, e.ino)


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
        self._by_path = {f.path: f for f in self.folders}
        self.stats: dict[str, StoreStats] = {s.id: StoreStats() for s in cfg.stores}
        self.stop = asyncio.Event()
        # Set while the watcher is parked on the clock between scans (tests advance then).
        self.idle = asyncio.Event()
        self.scans = 0
        self.last_scan_at: datetime | None = None
        self.mode = "poll"  # "notify" while file-system notifications are on
        self.notify_error: str | None = None
        self.notified = 0  # notification batches received
        self.watches = 0  # times the watches were set (start-up, then folders found anew)
        self._notifier: Notifier | None = None
        self._rewatch = False
        self._watched: dict[Path, tuple[int, int]] = {}  # folder -> identity when watched
        self._watch_retry_at: datetime | None = None
        self._wake = asyncio.Event()  # a notification arrived, or stop
        self._dirty: set[Folder] = set()  # notified folders, scanned on the next pass
        self._due: dict[Folder, datetime] = {}  # a settling file or a retry falls due
        self._next_full: datetime | None = None
        self._seen: dict[Path, _Seen] = {}
        self._retry: dict[Path, _Retry] = {}
        self._refused: dict[Path, set[RefusedEntry]] = {}
        self._scan_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.groups = inbox_groups.Groups(self)  # split exports (numbered parts)

    def prepare(self) -> None:
        """Create every watched folder with its `processed/` and `failed/` (blocking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for f in self.folders:
            # A refused (symlinked) folder is left alone here; the scans report it.
            with contextlib.suppress(inbox_fs.Refused, inbox_fs.Vanished):
                inbox_fs.prepare(self.root, f.source, f.store)

    def close(self) -> None:
        """Ask the watcher to stop (it finishes the file in hand)."""
        self.stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Scan what is due, then wait on the clock or a notification (or stop); forever."""
        try:
            if self.cfg.inbox.notify:
                await self._watch()
            while not self.stop.is_set():
                self.idle.clear()
                self._wake.clear()  # a notification during the pass wakes the next wait
                await self._pass(self._batch(self.clock.now()))
                if self.stop.is_set():
                    return
                if self._rewatch or self._watch_retry_at is not None:
                    await self._rewatch_if_due()  # part of the pass: before waiters wake
                self.scans += 1
                self.last_scan_at = self.clock.now()
                self._wake_scan_waiters()
                # No await between here and the clock wait: a test that sees `idle` set
                # knows the watcher is parked on the clock.
                self.idle.set()
                assert self._next_full is not None
                deadline = min([self._next_full, *self._due.values()])
                await self.clock.wait_until(deadline, self._wake)
        finally:
            if self._notifier is not None:
                await asyncio.to_thread(self._notifier.close)
                self._notifier = None
            # Nobody waits forever on a watcher that stopped or died.
            for _, fut in self._scan_waiters:
                fut.cancel()
            self._scan_waiters = []

    def _batch(self, now: datetime) -> list[Folder]:
        """The folders this pass scans: all when the full poll is due, else notified/due."""
        if self._next_full is None or now >= self._next_full:
            interval = (
                self.cfg.inbox.rescan_s if self.mode == "notify" else self.cfg.inbox.scan_interval_s
            )
            self._next_full = now + timedelta(seconds=interval)
            self._dirty.clear()
            self._due.clear()
            return list(self.folders)
        due = {f for f, at in self._due.items() if at <= now}
        batch = [f for f in self.folders if f in self._dirty or f in due]
        self._dirty.clear()
        for f in batch:
            self._due.pop(f, None)
        return batch

    async def _rewatch_if_due(self) -> None:
        now = self.clock.now()
        if self._watch_retry_at is not None and now < self._watch_retry_at:
            return
        if self.mode == "notify" or self._watch_retry_at is not None:
            await self._watch()

    async def _watch(self) -> None:
        """(Re)start file-system notifications on every folder that can be watched."""
        self._rewatch = False
        self._watch_retry_at = None
        if self._notifier is not None:
            await asyncio.to_thread(self._notifier.close)
            self._notifier = None
        # Only real folders: a missing one would fail the whole watch, and a symlinked one
        # is refused anyway (a watch through it would only cost spurious scans).
        watched = await asyncio.to_thread(inbox_fs.real_dirs, [f.path for f in self.folders])
        notifier = Notifier(list(watched), self._notify, self._notify_failed)
        try:
            await asyncio.to_thread(notifier.start, asyncio.get_running_loop())
        except (OSError, RuntimeError) as exc:
            # No notifications on this platform or file system, or the watch limit is hit:
            # poll every scan_interval_s, as before notifications existed.
            self._notify_failed(exc)
            return
        self._notifier = notifier
        self._watched = watched
        self.watches += 1
        self.mode = "notify"
        self.notify_error = None

    def _notify(self, paths: set[Path]) -> None:
        self.notified += 1
        for p in paths:
            folder = self._by_path.get(p.parent) or self._by_path.get(p)
            if folder is not None:
                self._dirty.add(folder)
        self._wake.set()

    def _notify_failed(self, exc: BaseException) -> None:
        self.notify_error = f"{type(exc).__name__}: {exc}"
        if self.mode == "notify" or self._next_full is None:
            log.error("inbox: no file-system notifications, polling: %s", self.notify_error)
        self.mode = "poll"
        # Try again now and then (a watch limit raised, a file system remounted).
        self._watch_retry_at = self.clock.now() + timedelta(seconds=self.cfg.inbox.rescan_s)
        self._next_full = None  # from now on, the full poll runs every scan_interval_s
        self._wake.set()

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

    async def _pass(self, batch: list[Folder]) -> None:
        if not batch:
            return
        # One thread hop lists the whole batch: at idle, thousands of empty folders cost
        # one call, not one hop each.
        listings = await asyncio.to_thread(
            inbox_fs.list_folders, self.root, [(f.source, f.store) for f in batch]
        )
        for folder, listing in zip(batch, listings, strict=True):
            if self.stop.is_set():
                return
            await self._scan(folder, listing)

    async def _scan(self, folder: Folder, listing: Listing) -> None:
        stats = self.stats[folder.store]
        now = self.clock.now()
        refused = set(listing.refused)
        if listing.folder_refused is not None:
            refused.add(listing.folder_refused)
        self._note_refused(folder, refused, now)
        if listing.missing or listing.error is not None:
            what = "no such folder" if listing.missing else str(listing.error)
            stats.last_error = f"cannot list {folder.source}/{folder.store}: {what}"
            log.warning("inbox: %s", stats.last_error)
            if listing.missing:
                # Someone removed the folder: recreate it so drops keep working.
                with contextlib.suppress(OSError, inbox_fs.Refused, inbox_fs.Vanished):
                    await asyncio.to_thread(
                        inbox_fs.prepare, self.root, folder.source, folder.store
                    )
                    self._rewatch = True
            return
        if listing.folder_refused is not None:
            return
        if self.mode == "notify" and self._watched.get(folder.path) != (listing.dev, listing.ino):
            # Recreated or replaced since the watch was set: the watch is on the old folder.
            self._rewatch = True
        # Files, and split exports (numbered parts of one export) as one unit each.
        units = inbox_groups.plan(folder.source, listing.entries, natural_key, listing.refused)
        present = {folder.path / e.name for e in listing.entries}
        present |= self.groups.keys(folder, units)
        for path in [p for p in self._seen if p.parent == folder.path and p not in present]:
            del self._seen[path]
        for path in [p for p in self._retry if p.parent == folder.path and p not in present]:
            del self._retry[path]
            stats.waiting.discard(path)
        handle: inbox_fs.Handle | None = None
        # Once a unit cannot be taken (still being written, backing off, an export not yet
        # complete), the units after it wait, so the folder keeps its order; their
        # stability is still tracked.
        blocked = False
        try:
            for unit in units:
                if self.stop.is_set():
                    return
                entry = unit.entries[0]
                path = folder.path / entry.name
                if unit.split:
                    verdict = self.groups.judge(folder, unit, now)
                    ready = verdict != "wait"
                else:
                    ready = self._stable(folder, path, entry, now) or entry.marked
                    retry = self._retry.get(path)
                    if retry is not None and now < retry.next_at:
                        ready = False
                        self._due_at(folder, retry.next_at)
                if blocked or not ready:
                    blocked = True
                    continue
                if handle is None:
                    handle = await self._open(folder, listing)
                    if handle is None:
                        return
                if unit.split:
                    took = await self.groups.take(folder, handle, unit, verdict)
                else:
                    took = await self._take(folder, handle, path, entry)
                blocked = not took
        finally:
            if handle is not None:
                handle.close()

    async def _open(self, folder: Folder, listing: Listing) -> inbox_fs.Handle | None:
        """The folder's fd, if it is still the folder that was listed."""
        try:
            h = await asyncio.to_thread(
                inbox_fs.open_folder, self.root, folder.source, folder.store
            )
        except (OSError, inbox_fs.Refused, inbox_fs.Vanished):
            self._dirty.add(folder)  # judged again by the next listing
            return None
        try:
            same = inbox_fs.folder_identity(h) == (listing.dev, listing.ino)
        except OSError:
            same = False
        if not same:
            h.close()
            self._dirty.add(folder)
            return None
        return h

    def _note_refused(self, folder: Folder, refused: set[RefusedEntry], now: datetime) -> None:
        """Count each refused entry once (by name, kind and identity) while it stays."""
        before = self._refused.get(folder.path, set())
        stats = self.stats[folder.store]
        for r in sorted(refused - before, key=lambda r: r.name):
            stats.refused += 1
            name = inbox_fs.printable(r.name)
            stats.refused_latest.append(
                {"folder": folder.source, "name": name, "kind": r.kind, "at": now.isoformat()}
            )
            log.warning("inbox: refused %s/%s/%s: %s", folder.source, folder.store, name, r.kind)
        if refused:
            self._refused[folder.path] = refused
        else:
            self._refused.pop(folder.path, None)

    def _due_at(self, folder: Folder, at: datetime) -> None:
        # Only with notifications: without them every folder is scanned each interval anyway.
        if self.mode == "notify":
            self._due[folder] = min(at, self._due.get(folder, at))

    def _stable(self, folder: Folder, path: Path, entry: Entry, now: datetime) -> bool:
        seen = self._seen.get(path)
        if seen is None or seen.ident != _ident(entry):
            self._seen[path] = _Seen(_ident(entry), now)
            self._due_at(folder, now + timedelta(seconds=self.cfg.inbox.stable_s))
            return False
        if (now - seen.since).total_seconds() >= self.cfg.inbox.stable_s:
            return True
        self._due_at(folder, seen.since + timedelta(seconds=self.cfg.inbox.stable_s))
        return False

    async def _take(
        self, folder: Folder, handle: inbox_fs.Handle, path: Path, entry: Entry
    ) -> bool:
        """Ingest one file and move it; False when it must be retried later."""
        stats = self.stats[folder.store]
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%SZ")
        try:
            body = await asyncio.to_thread(inbox_fs.read, handle, entry, self.limit, LIMIT_HINT)
            outcome = await self.intake.ingest(
                Envelope(
                    source=folder.source,
                    store=folder.store,
                    body=body,
                    content_type=content_type_for(entry.name),
                    filename=entry.name,
                    priority="bulk",
                    authorized=True,
                )
            )
        except inbox_fs.Vanished:
            log.info("inbox: %s vanished before it was read", path)
            self._forget(stats, path)
            return True
        except inbox_fs.Changed:
            # Replaced since it was listed: the new file is judged afresh (stability again).
            log.info("inbox: %s changed between listing and open; not read", path)
            self._seen.pop(path, None)
            self._dirty.add(folder)
            return False
        except inbox_fs.Refused as exc:
            self._forget(stats, path)
            key = RefusedEntry(entry.name, exc.kind, entry.dev, entry.ino)
            self._note_refused(
                folder, self._refused.get(folder.path, set()) | {key}, self.clock.now()
            )
            return True
        except PossyncError as exc:
            if exc.retriable:  # nothing is wrong with the file: a later try can succeed
                return self._retry_later(folder, path, exc)
            return await self._fail(folder, handle, path, entry, stamp, exc)
        except OSError as exc:
            return self._retry_later(folder, path, exc)
        except Exception as exc:
            # An adapter bug must not stop the folder: the file is parked in failed/ with
            # the error, and the traceback is in the log.
            log.exception("inbox: unexpected error on %s", path)
            return await self._fail(folder, handle, path, entry, stamp, exc)
        del body
        # Durable now: only from here may the file leave the folder.
        report = self._result(folder, entry.name, entry.size, outcome)
        final = await self._move(
            folder, handle, path, entry, PROCESSED, stamp, ".result.json", report
        )
        if final is None:
            return False
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
            outcome.rejected_count,
        )
        return True

    async def _move(
        self,
        folder: Folder,
        handle: inbox_fs.Handle,
        path: Path,
        entry: Entry,
        sub: str,
        stamp: str,
        suffix: str,
        report: bytes,
    ) -> str | None:
        """`inbox_fs.finalize` in a thread; None (left in place, retried) when it failed."""
        try:
            return await asyncio.to_thread(
                inbox_fs.finalize, handle, entry, sub, stamp, suffix, report
            )
        except inbox_fs.Refused as exc:
            # processed/ or failed/ became a symlink: nothing is written through it.
            key = RefusedEntry(f"{sub}/", exc.kind, 0, 0)
            self._note_refused(
                folder, self._refused.get(folder.path, set()) | {key}, self.clock.now()
            )
            self._retry_later(folder, path, OSError(f"{sub}/ is a {exc.kind}"))
        except (inbox_fs.Vanished, inbox_fs.Changed):
            self._seen.pop(path, None)
            self._dirty.add(folder)
        except OSError as exc:
            # Left in place: the next attempt ingests it again (all duplicates) and moves it.
            self._retry_later(folder, path, exc)
        return None

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

    async def _fail(
        self,
        folder: Folder,
        handle: inbox_fs.Handle,
        path: Path,
        entry: Entry,
        stamp: str,
        exc: Exception,
    ) -> bool:
        stats = self.stats[folder.store]
        report = error_report(exc, self.clock.now())
        final = await self._move(folder, handle, path, entry, FAILED, stamp, ".error.json", report)
        if final is None:
            return False
        self._forget(stats, path)
        stats.failed += 1
        stats.last_file = f"{FAILED}/{final}"
        stats.last_at = self.clock.now().isoformat()
        stats.last_error = f"{path.name}: {describe(exc)}"
        log.warning(
            "inbox: %s/%s/%s -> %s/%s: %s",
            folder.source,
            folder.store,
            path.name,
            FAILED,
            final,
            describe(exc),
        )
        return True

    def _retry_later(self, folder: Folder, path: Path, exc: BaseException) -> bool:
        stats = self.stats[folder.store]
        prev = self._retry.get(path)
        attempts = (prev.attempts if prev else 0) + 1
        delay = min(self.cfg.inbox.scan_interval_s * 2 ** (attempts - 1), BACKOFF_MAX_S)
        delay = max(delay, float(getattr(exc, "retry_after_s", None) or 0))
        at = self.clock.now() + timedelta(seconds=delay)
        self._retry[path] = _Retry(attempts, at, describe(exc))
        self._due_at(folder, at)
        stats.waiting.add(path)
        stats.retries += 1
        stats.last_error = f"{path.name}: {describe(exc)} (retry {attempts} in {delay:g} s)"
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
            "mode": self.mode,
            "notify_error": self.notify_error,
            "notified": self.notified,
            "watches": self.watches,
            "scans": self.scans,
            "last_scan_at": self.last_scan_at.isoformat() if self.last_scan_at else None,
            "file_limit_bytes": self.limit,
            "folders": f"{self.root}/{{source}}/{{store}}",
            # Only stores the inbox has done or refused something for: thousands of idle
            # stores would make /status large and slow (issue 12, "At scale").
            "stores_idle": sum(1 for st in self.stats.values() if not st.active),
            # ... listed too while there are few of them.
            "stores": {
                store: {
                    "processed": st.processed,
                    "failed": st.failed,
                    "retrying": len(st.waiting),
                    "retries": st.retries,
                    "uploads": st.uploads,
                    "refused": st.refused,
                    "refused_latest": list(st.refused_latest),
                    "last_file": st.last_file,
                    "last_at": st.last_at,
                    "last_error": st.last_error,
                }
                for store, st in self.stats.items()
                if st.active or len(self.stats) <= LIST_IDLE_UP_TO
            },
        }


def describe(exc: BaseException) -> str:
    """`Type: message` of an error, for /status and the log (a PossyncError's own message)."""
    msg = exc.message if isinstance(exc, PossyncError) else str(exc)
    return f"{type(exc).__name__}: {msg}"


def error_report(exc: BaseException, at: datetime) -> bytes:
    """`NAME.error.json`: {"error", "field", "status", "rejected": [...], "rejected_count", "at"}.

    `rejected` itemizes the first MAX_REJECTIONS (all the adapter kept), `rejected_count` all.
    """
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
    if isinstance(exc, NothingAcceptable):
        body["rejected"] = rejections_json(exc.rejected)
        body["rejected_count"] = exc.rejected_count
    else:
        body["rejected"], body["rejected_count"] = [], 0
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
            inbox.close()
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
