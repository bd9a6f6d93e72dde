"""The spool: durable per-store buffers of sales and voids in one SQLite database.

Schema (one file, WAL, `synchronous=FULL` by default)::

    spool(seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order of the current version
          store TEXT, kind TEXT, rid TEXT,          -- natural key, UNIQUE(store, kind, rid)
          version INTEGER, origin TEXT,
          received_at REAL,                        -- unix s; decides which window takes it
          state INTEGER,                           -- 0 pending, 2 retired (committed)
          held INTEGER,                            -- windows this row was held back
          size INTEGER, body BLOB)                 -- canonical JSON; NULL once retired
    quarantine(qid, store, kind, rid, version, received_at, quarantined_at, reasons, body)
    audit(id, at, action, store, ref, detail)         -- quarantine.py: admin moves
    deliveries(store, source, delivery_id, seen_at)   -- state.py: transport dedup (webhook id)
    kv(store, key, value)                             -- state.py: scheduler state

The DDL is `sqlite_file.SCHEMA`. The rooms sharing this file: this module (the spool
proper: append / lease / ack / hold / quarantine move, group commit), `quarantine.py`
(quarantine admin and audit), `state.py` (delivery ids, scheduler state); `sqlite_file.py`
owns the connection, `sqlite_lists.py` the paged admin lists, `salvage.py` and `wal.py`
the recovery.

Invariants

* One writer. Every write runs on the spool file's writer thread (`SpoolFile`: a
  one-thread executor owning the writer's sqlite3 connection), and each public write is ONE
  function that runs there inside ONE transaction (`SpoolFile.run`). Appends from
  concurrent requests are coalesced by the group-commit task into one transaction:
  everything staged when the task wakes is written, committed (fsync), and only then is each
  waiting request answered. A 202 therefore means "on disk".
* Reads never queue behind writes: lease pages, pending ids / entries, oldest, the lists of
  the quarantine and state rooms run on a read-only connection on a second thread
  (`SpoolFile.read`), each call one WAL snapshot that holds every write committed before it.
  WAL checkpoints run on a third connection (the `spool-checkpoint` task, owned like the
  writer: PASSIVE, once 1,000 frames wait, SQLite's own autocheckpoint figure); the writer's
  commits never run one (its `wal_autocheckpoint` is only a backstop far above that).
* Window work yields to live appends: before each ack / hold / quarantine slice on the
  writer's thread, while live appends are staged or a group is being written, the slice
  waits for that one group (`_yield_to_live`), so a push waits for at most one slice.
* Dedup by natural key and version: a record whose (store, kind, id) exists with a version
  >= its own is a duplicate (also after the row was committed and retired: retired rows keep
  key and version, body dropped). A newer version replaces the row under a NEW seq, so a
  commit in flight for the old version cannot retire the new one (ack is by seq).
* Bounded per store in rows and bytes (pending only). Over the cap an append fails whole
  with `SpoolFull` (503 + Retry-After) before anything is written: backpressure, no drops.
* Leases are in memory. A crash forgets them, so every leased-but-unacknowledged row is
  simply pending again at start-up. Ack happens only after the sink confirmed the commit.
* The writer, the checkpointer and the background integrity check are owned by the app's
  health registry (`Health.owned_task`): a dead writer fails /readyz (`task:spool-writer`)
  and every waiting append (a dead checkpointer: `task:spool-checkpoint`); at shutdown the writer drains its last group before it is cancelled.
* Only appends pay an fsync of their own. Acks, holds and quarantine moves commit with
  synchronous=NORMAL (WAL: safe against a process crash; on power loss the last of them may
  roll back, which re-offers rows the sink already has: the next window finds them
  unchanged there and retires them again).

Recovery

* Before SQLite opens anything, `salvage.prepare_files` checks the WAL frame by frame
  (SQLite silently drops every frame past a bad checksum) and whether a spool opened before
  is now missing or empty. Then a cheap start-up check; a damaged file is moved aside
  (`spool.db.corrupt-<ts>`, with its -wal/-shm), a fresh spool is created and every row
  that still reads is salvaged into it (`salvage.py`); reported on /readyz and /status
  (`spool.recovered_from`). A full `quick_check` runs in the background after start-up.
* Disk full while writing: the group's transaction rolls back, its requests get 507, the
  spool stays consistent, and the next group tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from worker.buffers import salvage
from worker.buffers.base import AppendResult, Entry, Lease, Priority, SpoolRow, StoreStats
from worker.buffers.quarantine import SqliteQuarantine
from worker.buffers.sqlite_file import (
    ENTRY_COLS,
    PENDING_COUNTS,
    SpoolFile,
    lease_slice,
    open_spool_file,
)
from worker.buffers.sqlite_group import Append, write_group
from worker.buffers.state import SqliteState
from worker.clock import Clock
from worker.config import SpoolConfig
from worker.errors import SpoolDamaged, SpoolFull, StorageFull, Unavailable
from worker.health import Health
from worker.records import Spooled, encode, type_of
from worker.sqlite_files import flag_file, is_damage, quick_check

log = logging.getLogger("possync.spool")

Row = SpoolRow


class _Counts:
    __slots__ = ("bytes", "rows")

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0


T = TypeVar("T")


def _storage_error(exc: sqlite3.Error) -> Exception:
    text = str(exc).lower()
    if "full" in text:
        return StorageFull("spool disk is full: nothing was written, retry later", field=None)
    if "locked" in text or "busy" in text:
        return Unavailable("spool is busy: retry", field=None, retry_after_s=1)
    return Unavailable(f"spool write failed: {exc}", field=None, retry_after_s=5)


class SqliteSpool:
    """The per-store spool (`Buffer`). Open with `open_spool`; invariants: module docstring."""

    def __init__(
        self, file: SpoolFile, cfg: SpoolConfig, clock: Clock, counts: dict[str, _Counts]
    ) -> None:
        self.file = file  # the spool's file and thread, shared with its quarantine and state
        self._cfg = cfg
        self._clock = clock
        self.path = file.path
        self.quarantined = SqliteQuarantine(file, clock, self._credit)
        self.state = SqliteState(file, clock)
        self._live: deque[Append] = deque()
        self._bulk: deque[Append] = deque()
        self._staged: dict[str, _Counts] = {}
        self._counts = counts
        self._wake = asyncio.Event()
        self._in_group = False  # a group commit is on the writer's thread
        self._after_group: list[asyncio.Future[None]] = []  # window work yielding to it
        self._written = asyncio.Event()  # a write committed: the checkpointer looks
        self._leases: dict[int, tuple[str, frozenset[int]]] = {}
        self._next_lease = 1
        self.failed: BaseException | None = None
        self.recovered_from: str | None = None
        self.file_note: str | None = None  # a spool opened before was missing or empty
        self.last_error: str | None = None
        self.groups = 0
        # Called after each committed group with (records, seconds): the metrics hook.
        self.on_group: Callable[[int, float], None] | None = None
        self._closing = False
        self.integrity: str | None = None  # None until the background check has run
        self.integrity_task: asyncio.Task[None] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.checkpoints = 0  # WAL checkpoints run by `run_checkpoints`
        self.checkpointed = asyncio.Event()  # set after each of them (tests wait on it)
        file.on_commit = self._written.set

    @property
    def writer_alive(self) -> bool:
        """Whether the group-commit writer is running."""
        return self.writer_task is not None and not self.writer_task.done()

    # ------------------------------------------------------------------ append

    def _check_open(self) -> None:
        if self.failed is not None:
            raise Unavailable("spool writer is down", field=None)
        if self._closing:
            raise Unavailable("spool is shutting down", field=None, retry_after_s=2)

    def _check_room(self, store: str, rows: int, nbytes: int) -> None:
        have = self._counts.get(store) or _Counts()
        staged = self._staged.get(store) or _Counts()
        cfg = self._cfg
        if have.rows + staged.rows + rows > cfg.max_records_per_store:
            why = (
                f"{have.rows} pending records, cap {cfg.max_records_per_store}); "
                "retry after the next window"
            )
        elif have.bytes + staged.bytes + nbytes > cfg.max_bytes_per_store:
            why = f"{have.bytes} bytes pending, cap {cfg.max_bytes_per_store})"
        else:
            return
        raise SpoolFull(
            f"spool for store {store!r} is full ({why}",
            field="store",
            retry_after_s=cfg.retry_after_s,
        )

    def check_room(self, store: str, records: Sequence[Spooled]) -> None:
        """Raise now (SpoolFull, Unavailable) if `append(store, records)` would be refused.

        Nothing is staged: intake calls it to decide a mixed push whole before writing any
        of it (a later concurrent append can still take the room; the append then refuses).
        """
        self._check_open()
        self._check_room(store, len(records), sum(len(encode(r)) for r in records))

    async def append(
        self, store: str, records: Sequence[Spooled], *, priority: Priority = "live"
    ) -> AppendResult:
        """Stage records; return when the group holding them is committed to disk."""
        if not records:
            return AppendResult(0, 0)
        self._check_open()
        rows = [
            (type_of(r), r.id, r.effective_version, getattr(r, "origin", "pos"), encode(r))
            for r in records
        ]
        return await self.append_rows(store, rows, priority=priority)

    async def append_rows(
        self,
        store: str,
        rows: Sequence[Row],
        *,
        priority: Priority = "live",
        nbytes: int | None = None,
    ) -> AppendResult:
        """`append` of records already encoded by the caller (backfill encodes off the loop).

        Each row is (kind, id, effective version, origin, canonical body); `nbytes` is the
        sum of the bodies' lengths when the caller has it. Same guarantees as `append`.
        """
        if not rows:
            return AppendResult(0, 0)
        self._check_open()
        if nbytes is None:
            nbytes = sum(len(r[4]) for r in rows)
        self._check_room(store, len(rows), nbytes)
        staged = self._staged.setdefault(store, _Counts())
        staged.rows += len(rows)
        staged.bytes += nbytes
        item = Append(store, rows, self._clock.now().timestamp(), nbytes)
        (self._live if priority == "live" else self._bulk).append(item)
        self._wake.set()
        try:
            # Not shielded: a cancelled request only cancels its own future; its rows stay
            # staged and the group writes them (answering a done future is skipped).
            return await item.future
        finally:
            staged.rows -= len(rows)
            staged.bytes -= nbytes

    def check_room_rows(self, store: str, rows: int, nbytes: int) -> None:
        """`check_room` for rows already encoded: `rows` records of `nbytes` bytes in all."""
        self._check_open()
        self._check_room(store, rows, nbytes)

    def live_waiting(self) -> bool:
        """True while live appends are staged (bulk producers yield to them)."""
        return bool(self._live)

    async def run_writer(self) -> None:
        """The group-commit loop. Owned by `open_spool`; its death fails every waiter."""
        group: list[Append] = []  # the group in flight: its waiters are failed too
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._cfg.linger_ms:
                    await asyncio.sleep(self._cfg.linger_ms / 1000)
                while self._live or self._bulk:
                    group = self._take_group()
                    await self._commit_group(group)
                    group = []
                if self._closing:
                    return
        except asyncio.CancelledError:
            self._fail_all(Unavailable("spool is shutting down", field=None), group)
            raise
        except BaseException as exc:
            self.failed = exc
            log.exception("spool writer died")
            self._fail_all(Unavailable(f"spool writer died: {exc}", field=None), group)
            raise

    def _take_group(self) -> list[Append]:
        limit = self._cfg.max_group_records
        group: list[Append] = []
        n = 0
        # Live requests first; bulk (backfill) only fills what is left of the group.
        for queue in (self._live, self._bulk):
            while queue and (n == 0 or n + len(queue[0].rows) <= limit):
                item = queue.popleft()
                group.append(item)
                n += len(item.rows)
        return group

    async def _commit_group(self, group: list[Append]) -> None:
        self._in_group = True
        try:
            await self._write(group)
        finally:
            self._in_group = False
            waiters, self._after_group = self._after_group, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def _yield_to_live(self) -> None:
        """Before a slice of window work on the writer's thread: let live appends go first.

        Waits for one group commit when live appends are staged or a group is being
        written, never longer: the writer submits its next group in the same loop step
        as it finishes one, so staged pushes stay ahead of the slice, and window work
        still advances one slice per group under constant live load.
        """
        if not (self._live or self._in_group) or not self.writer_alive:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._after_group.append(waiter)
        if not self._in_group:
            self._wake.set()
        await waiter

    async def _write(self, group: list[Append]) -> None:
        t0 = time.perf_counter()  # a latency measurement, not a schedule: real time
        try:
            results = await self.file.run(lambda db: write_group(db, group))
        except Exception as exc:
            err = (
                _storage_error(exc)
                if isinstance(exc, sqlite3.Error)
                else Unavailable(f"spool write failed: {type(exc).__name__}", field=None)
            )
            self.last_error = str(exc)
            log.exception("spool group of %d requests failed", len(group))
            for item in group:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        self.last_error = None
        self.groups += 1
        if self.on_group is not None:
            self.on_group(sum(len(item.rows) for item in group), time.perf_counter() - t0)
        for item, (result, deltas) in zip(group, results, strict=True):
            for store, (drows, dbytes) in deltas.items():
                c = self._counts.setdefault(store, _Counts())
                c.rows += drows
                c.bytes += dbytes
            if not item.future.done():
                item.future.set_result(result)

    def _fail_all(self, exc: Exception, inflight: list[Append]) -> None:
        waiters, self._after_group = self._after_group, []
        for w in waiters:  # window work waiting for a group goes on (and meets the error)
            if not w.done():
                w.set_result(None)
        for item in inflight:
            if not item.future.done():
                item.future.set_exception(exc)
        for queue in (self._live, self._bulk):
            while queue:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(exc)

    # ------------------------------------------------------------------ lease / ack

    async def lease(self, store: str, *, upto: datetime, after_seq: int, limit: int) -> Lease:
        """A page of pending rows (received at or before `upto`), held in memory only."""
        cutoff = upto.timestamp()
        leased = {s for st, seqs in self._leases.values() if st == store for s in seqs}

        # Read in slices, each its own hop on the connection thread, so live group commits
        # queued behind a big lease wait for one slice, not for the whole page.
        entries: list[Entry] = []
        cursor = after_seq
        while len(entries) < limit:
            n = min(_SLICE, limit - len(entries))
            got = await self._read(functools.partial(lease_slice, store, cursor, cutoff, n))
            entries.extend(e for e in got if e.seq not in leased)
            if len(got) < n:
                break
            cursor = got[-1].seq
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = (store, frozenset(e.seq for e in entries))
        return Lease(lease_id, store, entries)

    def _lease_seqs(self, lease_id: int, seqs: Sequence[int]) -> tuple[str, list[int]]:
        store, owned = self._leases.get(lease_id, ("", frozenset()))
        return store, [s for s in seqs if s in owned]

    async def ack(self, lease_id: int, seqs: Sequence[int]) -> None:
        """Retire committed rows (key and version stay for dedup; body is dropped)."""
        store, mine = self._lease_seqs(lease_id, seqs)
        # One transaction per slice: live group commits interleave with a large ack, and a
        # crash between slices only leaves rows pending that the sink already has (the next
        # window finds them unchanged there and retires them).
        for i in range(0, len(mine), _SLICE):
            part = mine[i : i + _SLICE]
            await self._yield_to_live()
            freed = await self.file.run(functools.partial(_retire, seqs=part), durable=False)
            self._debit(store, freed)
        self._forget(lease_id, mine)

    async def hold(self, lease_id: int, seqs: Sequence[int]) -> None:
        """Count one more hold on these rows and leave them pending."""
        _, mine = self._lease_seqs(lease_id, seqs)
        if mine:
            await self._yield_to_live()
            await self.file.run(
                lambda db: db.executemany(
                    "UPDATE spool SET held=held+1 WHERE seq=?", [(s,) for s in mine]
                ),
                durable=False,
            )
        self._forget(lease_id, mine)

    async def quarantine(
        self, lease_id: int, items: Sequence[tuple[int, list[dict[str, Any]]]]
    ) -> None:
        """Move rows to quarantine with every reason; the key leaves the spool entirely."""
        store, mine = self._lease_seqs(lease_id, [s for s, _ in items])
        if not mine:
            return
        reasons = {s: orjson.dumps(r).decode() for s, r in items if s in set(mine)}
        now = self._clock.now().timestamp()

        def q(db: sqlite3.Connection) -> tuple[int, int]:
            rows = 0
            size = 0
            for seq, why in reasons.items():
                got = db.execute(
                    "SELECT size FROM spool WHERE seq=? AND state=0", (seq,)
                ).fetchone()
                if got is None:
                    continue
                db.execute(
                    "INSERT INTO quarantine(store, kind, rid, version, received_at, quarantined_at, reasons, body) "
                    "SELECT store, kind, rid, version, received_at, ?, ?, body FROM spool WHERE seq=?",
                    (now, why, seq),
                )
                db.execute("DELETE FROM spool WHERE seq=?", (seq,))
                rows += 1
                size += got[0]
            return rows, size

        await self._yield_to_live()
        freed = await self.file.run(q, durable=False)
        self._debit(store, freed)
        self._forget(lease_id, mine)

    async def release(self, lease_id: int) -> None:
        """Forget a lease; its rows stay pending."""
        self._leases.pop(lease_id, None)

    def _forget(self, lease_id: int, seqs: Sequence[int]) -> None:
        got = self._leases.get(lease_id)
        if got is None:
            return
        store, owned = got
        rest = owned.difference(seqs)
        if rest:
            self._leases[lease_id] = (store, rest)
        else:
            del self._leases[lease_id]

    def _debit(self, store: str, freed: tuple[int, int]) -> None:
        self._credit(store, -freed[0], -freed[1])

    def _credit(self, store: str, rows: int, nbytes: int) -> None:
        c = self._counts.setdefault(store, _Counts())
        c.rows += rows
        c.bytes += nbytes

    # ------------------------------------------------------------------ queries

    def stats(self, store: str) -> StoreStats:
        """Pending rows and bytes (exact, from memory); oldest is filled by `oldest`."""
        c = self._counts.get(store) or _Counts()
        return StoreStats(c.rows, c.bytes, None)

    async def oldest(self, store: str) -> float | None:
        """Arrival time of the oldest pending row of a store."""
        return (await self.oldest_many([store])).get(store)

    async def oldest_many(self, stores: Sequence[str]) -> dict[str, float]:
        """`oldest` of many stores in one hop to the reader thread (/status with many stores).
        On a damaged file, unknown (left out): /status still answers, its integrity says why."""

        def q(db: sqlite3.Connection) -> dict[str, float]:
            out: dict[str, float] = {}
            for store in stores:
                row = db.execute(
                    "SELECT min(received_at) FROM (SELECT received_at FROM spool WHERE store=? "
                    "AND state=0 ORDER BY seq LIMIT 1000)",
                    (store,),
                ).fetchone()
                if row is not None and row[0] is not None:
                    out[store] = float(row[0])
            return out

        if not stores:
            return {}
        with contextlib.suppress(SpoolDamaged):
            return await self._read(q)
        return {}

    async def pending_ids(self, store: str, kind: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are pending (not retired) in the store's spool."""
        if not ids:
            return set()

        def q(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                marks = ",".join("?" * len(chunk))
                cur = db.execute(
                    f"SELECT rid FROM spool WHERE store=? AND kind=? AND +state=0 AND rid IN ({marks})",
                    (store, kind, *chunk),
                )
                found.update(r[0] for r in cur)
            return found

        return await self._read(q)

    async def pending_entries(self, store: str, limit: int = 100_000) -> list[Entry]:
        """Every pending row of a store (for previews)."""

        def q(db: sqlite3.Connection) -> list[Entry]:
            cur = db.execute(
                f"SELECT {ENTRY_COLS} FROM spool WHERE store=? AND state=0 ORDER BY seq LIMIT ?",
                (store, limit),
            )
            return list(itertools.starmap(Entry, cur))

        return await self._read(q)

    async def check(self) -> None:
        """Readiness: the spool accepts a write transaction."""
        if self.failed is not None:
            raise Unavailable(f"spool writer died: {self.failed}", field="spool")
        try:
            await self.file.run(lambda db: db.execute("SELECT 1").fetchone())
        except sqlite3.Error as exc:
            raise _storage_error(exc) from None

    async def check_wal(self) -> None:
        """Readiness: red while a WAL that dropped committed frames awaits review."""
        flag = salvage.wal_flag(self.path)
        if flag.exists():
            raise Unavailable(flag.read_text(encoding="utf-8", errors="replace"), field="spool_wal")

    async def check_integrity(self) -> None:
        """Full `PRAGMA quick_check` on a separate read-only connection; flag damage."""
        # Start after the service is up, so reading the whole file does not compete with
        # the start-up's own reads (restart-to-ready).
        delay = timedelta(seconds=self._cfg.integrity_check_delay_s)
        await self._clock.wait_until(self._clock.now() + delay, asyncio.Event())
        problem = await asyncio.to_thread(quick_check, self.path)
        self.integrity = "ok"
        if problem:
            self._flag(problem)
            log.error(
                "spool %s failed its integrity check (%s): restart to salvage", self.path, problem
            )

    def _flag(self, problem: str) -> None:
        """Damage found: the next start moves the file aside and salvages it (`flag_file`);
        /readyz and /status say so now (`integrity`)."""
        self.integrity = problem
        flag_file(self.path).write_text(problem, encoding="utf-8")

    def found_damage(self, exc: sqlite3.Error) -> SpoolDamaged:
        """A read hit a damaged page: flag the file for the next start's salvage, as the
        background check does, and say so on /readyz (the integrity note) and /status."""
        problem = f"{exc.__class__.__name__}: {exc}"
        try:
            self._flag(problem)
        except OSError:
            log.exception("spool %s: damage flag not written", self.path)
        log.error(
            "spool %s: a page could not be read (%s): restart to salvage",
            self.path,
            problem,
            extra={"event": "spool.damaged"},
        )
        return SpoolDamaged(f"spool file is damaged ({problem}): restart to salvage it")

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`file.read(fn)`, where damage of the file becomes `SpoolDamaged` (flagged)."""
        try:
            return await self.file.read(fn)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise self.found_damage(exc) from None
            raise

    def total_pending(self) -> int:
        """Pending rows over all stores."""
        return sum(c.rows for c in self._counts.values())

    async def run_checkpoints(self) -> None:
        """Copy the WAL back into the file, off the writer's thread. Owned by `open_spool`.

        After a commit, once `_CHECKPOINT_FRAMES` frames wait in the WAL (SQLite's own
        autocheckpoint figure), one PASSIVE checkpoint on the checkpointer's connection:
        the writer's commits never run one themselves (`SqliteFile` with `reader=True`).
        """
        while True:
            await self._written.wait()
            self._written.clear()
            if self.file.wal_backlog() >= _CHECKPOINT_FRAMES:
                await self.file.checkpoint()
                self.checkpoints += 1
                self.checkpointed.set()


# Rows per lease read / ack transaction: bounds how long a live append can queue behind them.
_SLICE = 500

# WAL frames (pages) that make the checkpointer run: SQLite's default autocheckpoint.
_CHECKPOINT_FRAMES = 1000


def _retire(db: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
    rows = 0
    size = 0
    for i in range(0, len(seqs), 500):
        chunk = seqs[i : i + 500]
        marks = ",".join("?" * len(chunk))
        got = db.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM spool WHERE state=0 AND seq IN ({marks})",
            chunk,
        ).fetchone()
        rows += int(got[0])
        size += int(got[1])
        db.execute(
            f"UPDATE spool SET state=2, body=NULL, size=0 WHERE state=0 AND seq IN ({marks})", chunk
        )
    return rows, size


def _pending_counts(db: sqlite3.Connection) -> dict[str, _Counts]:
    """Pending rows and bytes per store: the first read of the file at start-up."""
    counts: dict[str, _Counts] = {}
    for store, n, size in db.execute(PENDING_COUNTS):
        c = counts.setdefault(store, _Counts())
        c.rows, c.bytes = int(n), int(size)
    return counts


@contextlib.asynccontextmanager
async def open_spool(
    cfg: SpoolConfig, path: Path, clock: Clock, health: Health | None = None
) -> AsyncIterator[SqliteSpool]:
    """Open (creating or recovering) the spool and run its group-commit writer.

    The writer and the integrity check are tasks of `health` (the app's registry; a
    private one when none is given), so /readyz sees a dead writer.
    """
    owner = health if health is not None else Health()
    async with open_spool_file(path, cfg, _pending_counts) as (file, counts, notes):
        spool = SqliteSpool(file, cfg, clock, counts)
        spool.file_note = notes.missing
        spool.recovered_from = notes.recovered_from
        # The full page-by-page check reads the whole file: run it after start-up, off the
        # loop, so a large spool does not delay readiness. A verdict of damage is reported now
        # and acted on (move aside + salvage) at the next start.
        async with (
            owner.owned_task("spool-writer", spool.run_writer()) as writer,
            owner.owned_task("spool-integrity", spool.check_integrity(), once=True) as checker,
            owner.owned_task("spool-checkpoint", spool.run_checkpoints()),
        ):
            spool.writer_task = writer
            spool.integrity_task = checker
            try:
                yield spool
            finally:
                # Final bounded group commit: staged requests are written and answered, then
                # the writer returns. New appends are refused from here on. Leaving the
                # contexts then cancels and awaits both tasks.
                spool._closing = True
                spool._wake.set()
                try:
                    await asyncio.wait_for(asyncio.shield(writer), timeout=30)
                except TimeoutError:
                    log.exception("spool writer did not drain in 30 s; cancelling")
                except Exception:  # noqa: BLE001 - already logged and recorded in spool.failed
                    log.debug("spool writer ended with an error")
