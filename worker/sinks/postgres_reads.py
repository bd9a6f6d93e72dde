"""The PostgreSQL sink's paged list reads: the Sales Log, its count, the trigger events.

The same lists, orders and filters as `worker.sinks.sqlite_reads`; the keyset position
comes as `utc_text` and is compared as TIMESTAMPTZ (microseconds, like the stored value).
Statements are built per call from fixed fragments; every value is a bind parameter.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from worker.sinks.base import SALE_LOG_COLUMNS, PageKey, utc_text_opt, warnings_of
from worker.sinks.postgres_sql import SALE_LOG_SELECT, TRIGGER, jsonable

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[asyncpg.Record]


class _Where:
    """A WHERE clause and its $n parameters, built one condition at a time."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *values: Any) -> None:
        """`condition` with `{}` for each value's placeholder, in order."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.parts.append(condition.format(*marks))

    def sql(self) -> str:
        return " AND ".join(self.parts)

    def next_mark(self) -> str:
        return f"${len(self.args) + 1}"


def _log_where(store: str, day: date, customer: str | None) -> _Where:
    w = _Where()
    w.add("store = {}", store)
    w.add("business_date = {}", day)
    if customer is not None:
        w.add("customer_id = {}", customer)
    return w


async def sales_log(
    conn: Conn,
    schema: str,
    store: str,
    day: date,
    limit: int,
    after: PageKey | None,
    customer: str | None,
) -> list[dict[str, Any]]:
    """One page of a business date's committed sales, after `after` in (occurred_at, id)."""
    w = _log_where(store, day, customer)
    if after is not None:
        w.add("(occurred_at, id) > ({}, {})", datetime.fromisoformat(after[0]), after[1])
    rows = await conn.fetch(
        f"SELECT {SALE_LOG_SELECT} FROM {schema}.sales WHERE {w.sql()}"
        f" ORDER BY occurred_at, id LIMIT {w.next_mark()}",
        *w.args,
        limit,
    )
    out = []
    for r in rows:
        item = {k: jsonable(v) for k, v in zip(SALE_LOG_COLUMNS, r, strict=True)}
        item["warnings"] = warnings_of(item.pop("warning"))
        out.append(item)
    return out


async def count_sales(conn: Conn, schema: str, store: str, day: date, customer: str | None) -> int:
    """How many sales the whole Sales Log of `day` (with its filter) holds."""
    w = _log_where(store, day, customer)
    got = await conn.fetchval(f"SELECT count(*) FROM {schema}.sales WHERE {w.sql()}", *w.args)
    return int(got)


_STATE_WHERE = {
    "pending": "o.delivered_at IS NULL",
    "due": "o.delivered_at IS NULL AND o.due_at <= {}",
    "delivered": "o.delivered_at IS NOT NULL AND NOT o.cancelled",
    "cancelled": "o.cancelled",
}


async def list_triggers(
    conn: Conn,
    schema: str,
    store: str,
    limit: int,
    before: PageKey | None,
    state: str | None,
    trigger: str | None,
    now: datetime | None,
) -> list[dict[str, Any]]:
    """One page of a store's trigger events, newest first, before `before`."""
    w = _Where()
    w.add("o.store = {}", store)
    if state == "due":
        if now is None:
            raise ValueError("the `due` state needs `now`")
        w.add(_STATE_WHERE[state], now)
    elif state is not None:
        w.add(_STATE_WHERE[state])
    if trigger is not None:
        w.add("o.trigger_name = {}", trigger)
    if before is not None:
        w.add("(o.created_at, o.event_id) < ({}, {})", datetime.fromisoformat(before[0]), before[1])
    rows = await conn.fetch(
        f"SELECT {', '.join(f'o.{n}' for n, _ in TRIGGER)}, s.currency, o.delivered_at,"
        f" o.cancelled FROM {schema}.trigger_outbox o LEFT JOIN {schema}.sales s"
        f" ON s.store = o.store AND s.id = o.sale_id WHERE {w.sql()}"
        f" ORDER BY o.created_at DESC, o.event_id DESC LIMIT {w.next_mark()}",
        *w.args,
        limit,
    )
    out = []
    for r in rows:
        item = {n: jsonable(v) for (n, _), v in zip(TRIGGER, r, strict=False)}
        item["trigger"] = item.pop("trigger_name")
        item["currency"] = r[-3]
        delivered_at, cancelled = r[-2], r[-1]
        item["delivered_at"] = utc_text_opt(delivered_at)
        item["status"] = "cancelled" if cancelled else "delivered" if delivered_at else "pending"
        out.append(item)
    return out
