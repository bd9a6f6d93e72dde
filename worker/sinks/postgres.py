"""PostgreSQL sink: the clienteling database behind an asyncpg pool.

Same tables, keys and invariants as the SQLite sink (see `worker.sinks.sqlite`), and the
same commit algorithm and reads (`worker.sinks.sql`, over `postgres_sql.PostgresDialect`), with native
types: money and quantities are NUMERIC (exact, scale kept), instants TIMESTAMPTZ, business
dates DATE, record bodies JSONB. Every table lives in `[sink] schema`; the schema and
tables are created at start-up by idempotent DDL, serialized across processes by an
advisory lock.

Invariants specific to PostgreSQL:

* A batch starts by claiming its `commit_batches` row (`ON CONFLICT DO NOTHING`). A second
  commit of the same batch id blocks on that row until the first one ends, then sees it
  and returns `already_committed`; the outcome is filled in before the transaction commits.
* Bulk writes send one array per column and `INSERT ... SELECT FROM unnest(...)`: one
  round-trip per table whatever the batch size.
* The sales upsert is guarded in SQL (`WHERE excluded.version > sales.version`) and
  `RETURNING` tells which rows were written, so lines/tenders are rewritten only for those.
* Delivery locks due outbox rows with `FOR UPDATE SKIP LOCKED`: concurrent deliverers never
  hand out the same event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import asyncpg

from worker.config import Config, PostgresSinkConfig
from worker.errors import ConfigError, SinkError, SinkFull
from worker.sinks.postgres_schema import DDL_LOCK
from worker.sinks.postgres_sql import PostgresDialect, Sql
from worker.sinks.sql import SqlSink

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("possync.sink")

# SQLSTATE classes worth retrying: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources (disk full, too many
# connections), operator intervention (shutdown, cancel), system error (I/O).
_RETRIABLE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_RETRIABLE_STATES = frozenset({"55P03", "55006"})  # lock_not_available, object_in_use

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


_DISK_FULL = "53100"


def _sink_error(exc: BaseException, what: str) -> SinkError:
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state == _DISK_FULL:
            return SinkFull(f"postgres sink: {what}: disk full on the server (SQLSTATE 53100)")
        retriable = state[:2] in _RETRIABLE_CLASSES or state in _RETRIABLE_STATES
    elif isinstance(exc, asyncpg.InterfaceError):
        # Client-side data/config errors are ValueErrors; the rest (connection closed, ...)
        # are connection trouble and clear once the pool reconnects.
        retriable = not isinstance(
            exc,
            ValueError
            | asyncpg.UnsupportedClientFeatureError
            | asyncpg.UnsupportedServerFeatureError,
        )
    elif isinstance(exc, asyncpg.InternalClientError):
        retriable = False
    else:  # OSError, TimeoutError: network or server down
        retriable = True
    return SinkError(f"postgres sink: {what}: {exc!r}", retriable=retriable)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn every driver error into a SinkError with the right `retriable` flag."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise _sink_error(exc, what) from exc


class PostgresSink(SqlSink["PoolConnectionProxy[asyncpg.Record]"]):
    """Both sink sides over an asyncpg pool: pooled connections and their transactions
    (writes READ COMMITTED, reads a REPEATABLE READ snapshot); the rest is `SqlSink`."""

    name: str = "postgres"

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], sql: Sql, timeout_s: float) -> None:
        super().__init__(PostgresDialect(sql))
        self._pool = pool
        self._sql = sql
        self._timeout = timeout_s
        self._closed = False

    def close(self) -> None:
        """Refuse further calls (the pool is closed by `open_postgres_sink`)."""
        self._closed = True

    def _write(self, what: str) -> AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]:
        return self._conn(what)

    def _read(self, what: str) -> AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]:
        return self._conn(what, write=False)

    @asynccontextmanager
    async def _conn(
        self, what: str, *, write: bool = True
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection inside one transaction; driver errors become SinkError."""
        if self._closed:
            raise SinkError("postgres sink is closed", retriable=False)
        with _errors(what):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                tx = conn.transaction(
                    readonly=not write, isolation="read_committed" if write else "repeatable_read"
                )
                async with tx:
                    yield conn

    async def health(self) -> None:
        """Raise SinkError unless the server answers and accepts writes."""
        # A read-write transaction: inside a READ ONLY one the setting would always be on.
        async with self._conn("health") as conn:
            read_only = await conn.fetchval(self._sql.health)
        if read_only:
            raise SinkError(
                "postgres sink: server is read-only (recovery or standby)", retriable=True
            )


async def _create_schema(pool: asyncpg.Pool[asyncpg.Record], sql: Sql) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs; the
        # transaction-scoped advisory lock makes start-up DDL one-at-a-time.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
        await conn.execute(sql.ddl)


async def _close_pool(pool: asyncpg.Pool[asyncpg.Record], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout_s)
    except TimeoutError:
        log.warning("postgres sink: pool did not close in %.0fs; terminating", timeout_s)
        pool.terminate()


@asynccontextmanager
async def open_postgres_sink(cfg: Config) -> AsyncIterator[PostgresSink]:
    """Open the asyncpg pool, create schema and tables if missing, close the pool on exit."""
    pc = cfg.sink
    if not isinstance(pc, PostgresSinkConfig):
        raise ConfigError("open_postgres_sink needs [sink] kind = 'postgres'", field="$.sink.kind")
    sql = Sql(pc.schema)
    with _errors("connect"):
        pool = await asyncpg.create_pool(
            pc.dsn,
            min_size=min(pc.pool_min, pc.pool_max),
            max_size=pc.pool_max,
            command_timeout=pc.command_timeout_s,
            timeout=pc.command_timeout_s,
        )
    try:
        with _errors("create schema"):
            await _create_schema(pool, sql)
        sink = PostgresSink(pool, sql, pc.command_timeout_s)
        try:
            yield sink
        finally:
            sink.close()
    finally:
        await _close_pool(pool, pc.command_timeout_s)
