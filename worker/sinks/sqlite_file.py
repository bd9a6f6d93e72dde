"""Is the SQLite sink's file still the one it opened? And is there room on its disk?

In WAL mode SQLite keeps writing to a database file that was deleted or replaced under it:
every transaction commits into an inode no name points to, and all of it is gone at the next
start. `FileIdentity` keeps the (device, inode) of the database and its `-wal` from open
time; `problem()` compares them with what the paths hold now (one `os.stat` each, no
thread hop: a few microseconds), so the sink can check before and after every write.

When the file vanished, the sink folds the WAL into it through its still-open descriptors
and closes it (`abandon`); when a database file is back at the path (the operator restored
it, ideally by renaming a whole copy into place) it is re-opened WITHOUT a restart
(`reopen`): it must pass the start-up check (`cheap_check`), no non-empty -wal of the
vanished file may sit beside it (its frames would be applied to the restored file), and it
is migrated like a file found at start-up. Until then every write answers 503 with
Retry-After, and the window keeps its rows in the spool and retries.

`space_problem` answers "has space returned?" after SQLITE_FULL without writing to the
database: it reserves `PROBE_BYTES` in a scratch file beside it (`posix_fallocate`, which
allocates blocks without writing them) and deletes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path

import aiosqlite
import msgspec

from worker.config import SqliteSinkConfig
from worker.errors import SinkError, SinkUnavailable
from worker.sinks.sqlite_schema import migrate
from worker.sqlite_files import cheap_check

log = logging.getLogger("possync.sink")

# What a window page needs at least (WAL frames of a 1,000-sale page are a few MiB; one
# MiB free means "a write can start" rather than "a full page fits").
PROBE_BYTES = 1 << 20


class _Id(msgspec.Struct, frozen=True):
    dev: int
    ino: int


def _id_of(path: Path) -> _Id | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Id(st.st_dev, st.st_ino)


def wal_path(path: Path) -> Path:
    """The database's write-ahead log beside it."""
    return Path(f"{path}-wal")


class FileIdentity:
    """The (device, inode) of a database file and of its -wal as they were at open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = _id_of(path)
        # The WAL exists once the connection is in WAL mode and has written (migrate does);
        # SQLite keeps it (same inode) while any connection is open.
        self.wal = _id_of(wal_path(path))

    def problem(self) -> str | None:
        """None while both paths still name the opened files, else what happened."""
        now = _id_of(self.path)
        if now is None:
            return "database file deleted since it was opened"
        if now != self.db:
            return "database file replaced since it was opened"
        if self.wal is not None and _id_of(wal_path(self.path)) != self.wal:
            return "write-ahead log (-wal) deleted or replaced since it was opened"
        return None

    def stale_wal(self) -> bool:
        """True when the -wal at the path is still the one of this (vanished) file, with
        frames in it: opening another database beside it would apply them to that one."""
        wal = wal_path(self.path)
        if self.wal is None or _id_of(wal) != self.wal:
            return False
        try:
            return wal.stat().st_size > 0
        except FileNotFoundError:
            return False


def space_problem(directory: Path, nbytes: int = PROBE_BYTES) -> str | None:
    """None when `nbytes` can be allocated on the filesystem of `directory`, else why not."""
    probe = directory / f".possync-space-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return _space_text(exc, nbytes)
    try:
        _allocate(fd, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            return _space_text(exc, nbytes)
        # No fallocate here (the platform or the filesystem): what statvfs says is free.
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < nbytes:
            return f"disk full: less than {nbytes} bytes free"
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    return None


def _allocate(fd: int, nbytes: int) -> None:
    """Reserve `nbytes` blocks for `fd` without writing them (EOPNOTSUPP where impossible)."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available")
    os.posix_fallocate(fd, 0, nbytes)


def _space_text(exc: OSError, nbytes: int) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: cannot allocate {nbytes} bytes beside the database"
    return f"cannot probe free space: {os.strerror(exc.errno or 0)}"


async def _configure(
    db: aiosqlite.Connection, path: Path, sc: SqliteSinkConfig, reader: bool
) -> None:
    await db.execute(f"PRAGMA busy_timeout = {int(sc.busy_timeout_ms)}")
    if reader:
        await db.execute("PRAGMA query_only = ON")
        return
    async with db.execute("PRAGMA journal_mode = WAL") as cur:
        mode = await cur.fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise SinkError(f"sqlite sink: cannot enable WAL on {path}", retriable=False)
    await db.execute(f"PRAGMA synchronous = {sc.synchronous}")
    await db.execute("PRAGMA temp_store = MEMORY")
    await db.execute("PRAGMA cache_size = -32768")  # 32 MiB page cache for batch commits


async def _connect(path: Path, sc: SqliteSinkConfig, *, reader: bool) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; the sink issues BEGIN/COMMIT itself.
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await _configure(db, path, sc, reader)
    except BaseException:
        await db.close()
        raise
    return db


async def open_pair(
    path: Path, sc: SqliteSinkConfig
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """The writer (WAL, migrated) and the query-only reader of `path`."""
    writer = await _connect(path, sc, reader=False)
    try:
        # Migrate before any other use: the reader must see the current schema.
        await migrate(writer)
        reader = await _connect(path, sc, reader=True)
    except BaseException:
        await writer.close()
        raise
    return writer, reader


async def close_pair(writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
    """Close both connections (a failure is logged: the other one still closes)."""
    for db in (reader, writer):
        try:
            await db.close()
        except sqlite3.Error:
            log.exception("sqlite sink: closing a connection failed")


async def abandon(writer: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path) -> None:
    """Close the connections of a vanished file, first folding its WAL into it.

    The checkpoint writes through the open descriptors, so a file that still exists under
    another name (a hard link, a rename) keeps every committed transaction, and a database
    whose -wal alone was deleted gets that WAL's frames back. (SQLite itself neither
    checkpoints on close once the database has moved nor deletes the -wal by name then.)
    """
    try:
        await writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning("sqlite sink %s: checkpoint of the vanished file failed: %s", path, exc)
    await close_pair(writer, reader)


async def reopen(
    path: Path, sc: SqliteSinkConfig, old: FileIdentity
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """Open the database file that is back at `path`, or say why not (SinkUnavailable)."""
    if old.stale_wal():
        raise SinkUnavailable(
            "sqlite sink: the -wal of the vanished database is still beside the path;"
            " remove it before restoring the database file"
        )
    problem = await asyncio.to_thread(cheap_check, path)
    if problem is not None:
        raise SinkUnavailable(f"sqlite sink: the file back at the path does not open: {problem}")
    try:
        return await open_pair(path, sc)
    except sqlite3.Error as exc:
        raise SinkUnavailable(f"sqlite sink: re-open failed: {exc}") from exc
    except SinkError as exc:
        raise SinkUnavailable(f"sqlite sink: re-open failed: {exc.message}") from exc
