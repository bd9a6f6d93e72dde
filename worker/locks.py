"""Window locks: exactly one instance commits a store-window at a time.

    async with window_lock.hold(store_id, wait_s):   # WindowLocked if another holds it
        ... lease, validate, commit, ack ...

One Protocol (`WindowLock`), one registry (`LOCKS`, keyed by `[sink] kind`: the lock lives
where the data lands), opened as one async context by the app (`open_window_lock`).

* `postgres`: a session-level advisory lock per store (`pg_try_advisory_lock(bigint)`, or
  `pg_advisory_lock` under `lock_timeout` when `lock_wait_s` > 0: PostgreSQL wakes the
  waiter, no polling) on a dedicated asyncpg connection opened for the hold and closed
  after it (not the sink's pool: a pooled connection is reset when it goes back, and one
  session per hold keeps one store's wait from queueing another's). Chosen over a lease row with a fencing
  token because the lock's life is the session's: a holder that is SIGKILLed, loses its
  network or is `pg_terminate_backend`ed frees the lock when PostgreSQL ends its session,
  with no expiry to tune and no clean-up row; a lease row needs a TTL longer than the
  longest commit or it expires under a slow one. What a fencing token would add, the sink
  already has: every write is idempotent by batch id and by (store, sale, version), so a
  holder that lost its session mid-commit and a successor committing the same rows land
  each sale once (the second claim of a batch id blocks on the first, then sees it).
  The key is 64 bits of a hash of (schema, store id), so two schemas on one server never
  share a store's lock. The connection's `application_name` is `possync:<instance id>`,
  which is how `WindowLocked` names the holder (from `pg_locks` + `pg_stat_activity`).
* `sqlite`: the SQLite sink is one file on one host, written by one process. The lock is
  in-process (a set of held store ids): correct for one process only. Two processes on one
  SQLite sink are not supported (their spools are separate; run PostgreSQL for that).

`held` and `waiting` are what `/status` shows: the stores this instance holds the lock of
right now, and those whose window is waiting for another instance's lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import asyncpg

from worker.clock import Clock
from worker.config import Config, PostgresSinkConfig
from worker.errors import ConfigError, SinkError

log = logging.getLogger("possync.lock")

__all__ = [
    "LOCKS",
    "LocalLock",
    "PostgresLock",
    "WindowLock",
    "WindowLocked",
    "instance_id",
    "open_window_lock",
]


class WindowLocked(Exception):
    """Another instance holds the store's window lock."""

    def __init__(self, store: str, holder: str | None) -> None:
        super().__init__(f"store {store}: window lock held by {holder or 'another instance'}")
        self.store = store
        self.holder = holder


class WindowLock(Protocol):
    """A per-store lock across every instance committing into one sink."""

    kind: str
    held: set[str]
    waiting: set[str]

    def hold(self, store: str, wait_s: float = 0.0) -> AbstractAsyncContextManager[None]:
        """Hold the store's lock for the block; WindowLocked if not had within `wait_s`."""
        ...


def instance_id(cfg: Config) -> str:
    """`[instance] id`, else `<host name>:<pid>`."""
    return cfg.instance.id or f"{socket.gethostname()}:{os.getpid()}"


class LocalLock:
    """In-process lock per store (the SQLite sink: one host, one process)."""

    kind = "local"

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.waiting: set[str] = set()
        self._freed = asyncio.Event()

    @asynccontextmanager
    async def hold(self, store: str, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the store's lock for the block; WindowLocked if held past `wait_s`."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while store in self.held:
            left = until - loop.time()
            if left <= 0:
                raise WindowLocked(store, "this process")
            self.waiting.add(store)
            self._freed.clear()
            try:
                # The local holder sets `_freed` on release: an event, no polling.
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                pass
            finally:
                self.waiting.discard(store)
        self.held.add(store)
        try:
            yield
        finally:
            self.held.discard(store)
            self._freed.set()


def _key(schema: str, store: str) -> int:
    digest = hashlib.blake2b(f"{schema}\0{store}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_HOLDER_SQL = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = (($1::bigint >> 32) & 4294967295)::oid AND l.objid = ($1::bigint & 4294967295)::oid
LIMIT 1
"""


class PostgresLock:
    """Session advisory locks, one connection per held store (see the module docstring)."""

    kind = "postgres"

    def __init__(self, dsn: str, schema: str, instance: str, timeout_s: float) -> None:
        self.held: set[str] = set()
        self.waiting: set[str] = set()
        self._dsn = dsn
        self._schema = schema
        self._name = f"possync:{instance}"[:63]
        self._timeout = timeout_s
        self._sessions: set[asyncpg.Connection[asyncpg.Record]] = set()

    async def _take(
        self, conn: asyncpg.Connection[asyncpg.Record], key: int, wait_s: float
    ) -> bool:
        if wait_s <= 0:
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        # A server-side wait (lock_timeout) instead of polling: PostgreSQL wakes us when the
        # holder's session unlocks or ends.
        await conn.execute(f"SET lock_timeout = {int(wait_s * 1000)}")
        try:
            await conn.fetchval("SELECT pg_advisory_lock($1)", key, timeout=wait_s + self._timeout)
        except asyncpg.LockNotAvailableError:
            return False
        finally:
            await conn.execute("RESET lock_timeout")
        return True

    @asynccontextmanager
    async def hold(self, store: str, wait_s: float = 0.0) -> AsyncIterator[None]:
        """Hold the store's advisory lock for the block; WindowLocked if not had in `wait_s`."""
        if store in self.held:
            raise WindowLocked(store, "this instance")
        key = _key(self._schema, store)
        conn: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                command_timeout=self._timeout,
                server_settings={"application_name": self._name},
            )
            self.waiting.add(store)
            try:
                got = await self._take(conn, key, wait_s)
            finally:
                self.waiting.discard(store)
            holder = None if got else _instance_of(await conn.fetchval(_HOLDER_SQL, key))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if conn is not None:
                conn.terminate()
            raise SinkError(
                f"window lock: {type(exc).__name__}", retriable=True, field="sink"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.terminate()
            raise
        if not got:
            await self._end(store, conn)
            raise WindowLocked(store, holder)
        self.held.add(store)
        self._sessions.add(conn)
        try:
            yield
        finally:
            self.held.discard(store)
            self._sessions.discard(conn)
            await self._end(store, conn)

    async def _end(self, store: str, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        """End the lock's session: closing it frees the lock, whatever state it is in."""
        if conn.is_closed():
            # The session died under the commit (the sink's idempotence keeps the rows once
            # if another instance took the lock meanwhile): say so, the lock is long free.
            log.warning(
                "store %s: window lock session was lost during the commit",
                store,
                extra={"event": "window.lock_lost", "store": store},
            )
            return
        try:
            await asyncio.wait_for(conn.close(), self._timeout)
        except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.PostgresError):
            conn.terminate()

    async def close(self) -> None:
        """Terminate any session still open (PostgreSQL frees its locks)."""
        for conn in list(self._sessions):
            conn.terminate()
        self._sessions.clear()


def _instance_of(application_name: object) -> str | None:
    if isinstance(application_name, str) and application_name.startswith("possync:"):
        return application_name[len("possync:") :]
    return None


LockFactory = Callable[[Config, Clock], AbstractAsyncContextManager[WindowLock]]


@asynccontextmanager
async def _local(cfg: Config, clock: Clock) -> AsyncIterator[WindowLock]:
    yield LocalLock()


@asynccontextmanager
async def _postgres(cfg: Config, clock: Clock) -> AsyncIterator[WindowLock]:
    pc = cfg.sink
    if not isinstance(pc, PostgresSinkConfig):
        raise ConfigError("the postgres window lock needs [sink] kind = 'postgres'", field="$.sink")
    lock = PostgresLock(pc.dsn, pc.schema, instance_id(cfg), pc.command_timeout_s)
    try:
        yield lock
    finally:
        await lock.close()


LOCKS: dict[str, LockFactory] = {"sqlite": _local, "postgres": _postgres}


def open_window_lock(cfg: Config, clock: Clock) -> AbstractAsyncContextManager[WindowLock]:
    """Open the window lock that fits the configured sink, as one async context."""
    kind = str(type(cfg.sink).__struct_config__.tag)
    return LOCKS[kind](cfg, clock)
