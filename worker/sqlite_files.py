"""SQLite files: one connection on its own thread (`SqliteFile`); damaged files detected at
open, moved aside, and what still reads salvaged.

Used by the spool and the embedded SQLite sink so that a corrupted file is reported on
/readyz and /status and the service keeps serving, instead of crash-looping at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("possync.files")
T = TypeVar("T")


def quick_check(path: Path) -> str | None:
    """None if the file is sound (or absent), else what is wrong with it."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) or type(exc).__name__
    if row is None or row[0] != "ok":
        return str(row[0] if row else "quick_check returned nothing")
    return None


def cheap_check(path: Path) -> str | None:
    """A start-up check that reads a few pages, not the whole file.

    Catches a garbage header, an unreadable schema and a truncated file (page_count x
    page_size beyond the file's size). Damage inside data pages is found by the full
    `quick_check`, which runs in the background after start-up (`flag_file` carries its
    verdict to the next start).
    """
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            size = con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) or type(exc).__name__
    wal = Path(str(path) + "-wal")
    # With a WAL, pages may still live only in the WAL: compare against both files.
    have = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if pages * size > have:
        return f"file is truncated: {pages} pages of {size} bytes expected, {have} bytes present"
    return None


# SQLite's primary result codes for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB).
_DAMAGE_CODES = frozenset({11, 26})


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not busy, full or closed)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _DAMAGE_CODES


def flag_file(path: Path) -> Path:
    """Where a background check leaves its verdict for the next start."""
    return path.with_name(path.name + ".damaged")


def move_aside(path: Path, problem: str, what: str) -> Path:
    """Rename the file (and its -wal/-shm) to `<name>.corrupt-<stamp>`; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(target) + suffix))
    log.error(
        "%s %s is damaged (%s); moved aside to %s, starting fresh", what, path, problem, target
    )
    return target


@dataclass(slots=True)
class SalvageStats:
    """Work done by a salvage, for logs and for tests that bound it (not wall time)."""

    reads: int = 0  # SELECTs issued against the damaged file
    failed_reads: int = 0  # of which raised (a damaged page on their path)
    rows: int = 0  # rows yielded
    skipped_ranges: int = 0  # rowid ranges given up on (left to the page scan)
    readable: bool = True  # False when not even the schema reads: nothing to walk


def open_damaged(path: Path) -> sqlite3.Connection:
    """A read-only connection that tolerates a truncated file.

    SQLite refuses a file shorter than its header's page count ("malformed") unless
    `writable_schema` is on; with it, every page that is still present reads.
    """
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.execute("PRAGMA writable_schema=ON")
    return con


def salvage_rows(
    path: Path,
    table: str,
    columns: str,
    where: str = "1",
    *,
    step: int = 1000,
    min_width: int = 1,
    stats: SalvageStats | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Yield every row of `table` that still reads, bisecting rowid ranges around bad pages.

    Reads ranges of `step` rowids; a range that fails is split in halves until the failing
    part is `min_width` rowids wide, so the cost is O(ranges + bad pages x log(step)) reads,
    not one read per row. An unreadable schema ends the walk at once (a garbage file).
    """
    st = stats if stats is not None else SalvageStats()
    try:
        con = open_damaged(path)
    except sqlite3.DatabaseError:
        st.readable = False
        return
    try:
        st.reads += 1
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError:
            st.failed_reads += 1
            st.readable = False
            return
        top = _top_rowid(con, table, st)
        if top is None:
            return
        sql = f"SELECT {columns} FROM {table} WHERE rowid > ? AND rowid <= ? AND ({where})"
        one = f"SELECT {columns} FROM {table} WHERE rowid = ?2 AND ?1 < ?2 AND ({where})"
        # A stack of (lo, hi] ranges, lowest first, so rows come out in rowid order.
        todo = [(lo, min(lo + step, top)) for lo in range(top - top % step, -1, -step)]
        todo = [(lo, hi) for lo, hi in todo if hi > lo]
        while todo:
            lo, hi = todo.pop()
            st.reads += 1
            try:
                # One rowid: a point lookup, which does not step onto the next (bad) leaf.
                rows = con.execute(one if hi - lo == 1 else sql, (lo, hi)).fetchall()
            except sqlite3.DatabaseError:
                st.failed_reads += 1
                if hi - lo <= min_width:
                    st.skipped_ranges += 1
                    continue
                mid = (lo + hi) // 2
                todo.append((mid, hi))
                todo.append((lo, mid))
                continue
            st.rows += len(rows)
            yield from rows
    finally:
        con.close()


def _top_rowid(con: sqlite3.Connection, table: str, st: SalvageStats) -> int | None:
    """The highest rowid to walk to: max(rowid), else sqlite_sequence, else None."""
    for sql in (
        f"SELECT max(rowid) FROM {table}",
        f"SELECT seq FROM sqlite_sequence WHERE name='{table}'",
    ):
        st.reads += 1
        try:
            row = con.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            st.failed_reads += 1
            continue
        if row is not None and row[0] is not None:
            return int(row[0])
        if row is not None:
            return None  # the table reads and is empty
    return None


def opened_marker(path: Path) -> Path:
    """Written after the first successful open: a spool with a schema is expected here."""
    return path.with_name(path.name + ".opened")


def mark_opened(path: Path) -> None:
    """Leave the marker (once); what it holds is for operators, not read back."""
    marker = opened_marker(path)
    if not marker.exists():
        marker.write_text(f"{path.name} first opened {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")


def missing_problem(path: Path) -> str | None:
    """Why a missing or zero-length file is suspicious here, or None on a first start."""
    if not opened_marker(path).exists():
        return None  # never opened: a fresh install, nothing was expected
    if not path.exists():
        return f"{path.name} is missing although it was opened before: started with an empty one"
    if path.stat().st_size == 0:
        return f"{path.name} is zero bytes long although it was opened before: started empty"
    return None


def keep_copy(path: Path, why: str) -> Path:
    """Copy the file and its -wal (as they are, before SQLite touches them) aside."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    for suffix in ("", "-wal"):
        src = Path(str(path) + suffix)
        if src.exists():
            shutil.copyfile(src, Path(str(target) + suffix))
    return target


# The writer's own `wal_autocheckpoint` when checkpoints have their own connection: only a
# backstop, far above the 1,000 frames at which the owner's checkpoints run.
WRITER_AUTOCHECKPOINT = 20_000


class SqliteFile:
    """One sqlite3 connection on its own thread; one function per hop, one transaction each.

    The spool's file (`worker.buffers.sqlite_file.SpoolFile`) and the outbox's
    (`worker.sinks.outbox`): the loop never blocks on SQLite or fsync, and the file has
    exactly one writer. `schema` is run at connect; `name` names the thread and errors.

    With `reader=True` the file also gets a read-only connection on a second thread: `read`
    runs there (one WAL snapshot per call), so reads never queue behind writes on the
    writer's thread, and the writer's connection does not checkpoint (no
    `wal_autocheckpoint`): `checkpoint` copies the WAL back on a third connection and
    thread, so a commit never pays for a checkpoint. Whoever opens such a file runs
    `checkpoint` (the spool: an owned task after writes). Without `reader`, `read` runs on
    the writer's thread and SQLite checkpoints as usual.
    """

    def __init__(
        self,
        path: Path,
        synchronous: str,
        schema: str,
        name: str,
        *,
        reader: bool = False,
        before_schema: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._schema = schema
        # Run on the writer's connection just before the schema (e.g. to log a migration).
        self._before_schema = before_schema
        self._name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"possync-{name}")
        self._db: sqlite3.Connection | None = None
        self._reader = reader
        self._read_pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"possync-{name}-read")
            if reader
            else None
        )
        self._ckpt_pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"possync-{name}-ckpt")
            if reader
            else None
        )
        self._rdb: sqlite3.Connection | None = None
        self._cdb: sqlite3.Connection | None = None
        self._shm: int | None = None  # fd of the WAL index, read by `wal_backlog`
        # Called on the loop after each committed `run` (the spool's checkpointer wakes).
        self.on_commit: Callable[[], None] | None = None

    async def _hop(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"the {self._name} file is closed")
        return self._db

    async def connect(self) -> None:
        """Open the connection on the file's thread (WAL, busy timeout, the schema)."""

        def go() -> None:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self._synchronous}")
                db.execute("PRAGMA busy_timeout=5000")
                if self._reader:
                    # Checkpoints run on their own connection (`checkpoint`), not inside a
                    # commit of the writer; this one only backs them up (a WAL of ~80 MiB).
                    db.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
                if self._before_schema is not None:
                    self._before_schema(db)
                db.executescript(self._schema)
            except BaseException:
                db.close()
                raise
            self._db = db

        await self._hop(go)
        if self._read_pool is not None and self._ckpt_pool is not None:
            loop = asyncio.get_running_loop()
            self._rdb = await loop.run_in_executor(self._read_pool, self._open_side)
            self._cdb = await loop.run_in_executor(self._ckpt_pool, self._open_side)

    def _open_side(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(f"PRAGMA synchronous={self._synchronous}")  # the checkpoint's fsyncs
            db.execute("PRAGMA query_only=ON")  # checkpoints are allowed; writes are not
        except BaseException:
            db.close()
            raise
        return db

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run `fn(conn)` on the file's thread inside one transaction.

        `durable=False` is for bookkeeping whose loss on power failure is harmless (acks,
        holds, quarantine moves, scheduler state: each is redone idempotently). Those commit
        with synchronous=NORMAL: safe against a process crash, no fsync of their own; the
        next durable group commit fsyncs them along with itself. Appends are always durable.
        """
        relax = not durable and self._synchronous != "NORMAL"

        def tx() -> T:
            db = self._conn()
            if relax:
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")  # fsync (synchronous=FULL): durable from here on
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                if relax:
                    db.execute(f"PRAGMA synchronous={self._synchronous}")
            return result

        result = await self._hop(tx)
        if self.on_commit is not None:
            self.on_commit()
        return result

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `fn(conn)` (one consistent view per call).

        On the reader's thread when there is one: one read transaction, so every statement
        of `fn` sees the same snapshot, which holds every write committed before the call.
        """
        if self._read_pool is None:
            return await self.call(fn)

        def go() -> T:
            db = self._rdb
            if db is None:
                raise sqlite3.ProgrammingError(f"the {self._name} file is closed")
            db.execute("BEGIN")
            try:
                return fn(db)
            finally:
                db.execute("COMMIT")  # ends the read transaction: releases the snapshot

        return await asyncio.get_running_loop().run_in_executor(self._read_pool, go)

    async def checkpoint(self) -> tuple[int, int, int]:
        """A PASSIVE WAL checkpoint on the checkpointer's connection: (busy, log, copied).

        PASSIVE never waits for the writer or the readers: it copies what it can, and the
        writer restarts the WAL from its beginning once every frame was copied back.
        """
        if self._ckpt_pool is None:
            raise sqlite3.ProgrammingError(f"the {self._name} file checkpoints by itself")

        def go() -> tuple[int, int, int]:
            db = self._cdb
            if db is None:
                raise sqlite3.ProgrammingError(f"the {self._name} file is closed")
            row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(row[0]), int(row[1]), int(row[2])

        return await asyncio.get_running_loop().run_in_executor(self._ckpt_pool, go)

    def wal_backlog(self) -> int:
        """WAL frames not yet copied back into the file (0 when there is no WAL index).

        Read from the WAL index (`-shm`, sqlite.org/walformat.html: the header's mxFrame at
        offset 16, the checkpoint's nBackfill at 96), a page of shared memory: no lock, no
        SQLite call, so it is cheap enough to ask after every commit. A read that races a
        header update only moves the next checkpoint by one commit.
        """
        if self._shm is None:
            try:
                self._shm = os.open(str(self.path) + "-shm", os.O_RDONLY)
            except FileNotFoundError:
                return 0
        head = os.pread(self._shm, 100, 0)
        if len(head) < 100 or head[12] != 1:  # isInit
            return 0
        max_frame = int(struct.unpack_from("=I", head, 16)[0])
        backfilled = int(struct.unpack_from("=I", head, 96)[0])
        return max(0, max_frame - backfilled)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the file's thread outside any transaction of ours (salvage)."""
        return await self._hop(lambda: fn(self._conn()))

    async def close(self, *, checkpoint: bool) -> None:
        """Close the side connections, checkpoint the WAL (when asked), close, end threads."""
        loop = asyncio.get_running_loop()
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None
        for pool, attr in ((self._read_pool, "_rdb"), (self._ckpt_pool, "_cdb")):
            if pool is None:
                continue

            def shut(attr: str = attr) -> None:
                side: sqlite3.Connection | None = getattr(self, attr)
                setattr(self, attr, None)
                if side is not None:
                    side.close()

            try:
                await loop.run_in_executor(pool, shut)
            finally:
                await asyncio.to_thread(pool.shutdown, True)

        def go() -> None:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                if checkpoint:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()

        try:
            await self._hop(go)
        finally:
            # The thread is idle now: joining it is immediate, but never on the loop.
            await asyncio.to_thread(self._pool.shutdown, True)
