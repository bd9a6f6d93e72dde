"""The SQLite sink's paged list reads: the Sales Log, its count, the trigger events.

Each list is a keyset walk over its own order (`worker.pages`): the Sales Log by
(occurred_at, id) ascending, trigger events by (created_at, event_id) descending. Instants
are fixed-width UTC text (`utc_text`), so comparing the text compares the instants, and a
row-value comparison `(a, b) > (?, ?)` is the position. Every function runs inside the
sink's read snapshot (the caller's `_read`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import aiosqlite

from worker.sinks.base import PageKey, utc_text, warnings_of
from worker.sinks.sqlite_rows import BOOL_COLS, SALE_LOG_COLS, SALE_LOG_SELECT, TRIGGER_COLS


def _log_where(store: str, day: date, customer: str | None) -> tuple[str, list[Any]]:
    where = "store = ? AND business_date = ?"
    args: list[Any] = [store, day.isoformat()]
    if customer is not None:
        where += " AND customer_id = ?"
        args.append(customer)
    return where, args


async def sales_log(
    db: aiosqlite.Connection,
    store: str,
    day: date,
    limit: int,
    after: PageKey | None,
    customer: str | None,
) -> list[dict[str, Any]]:
    """One page of a business date's committed sales, after `after` in (occurred_at, id)."""
    where, args = _log_where(store, day, customer)
    if after is not None:
        where += " AND (occurred_at, id) > (?, ?)"
        args += after
    rows = await db.execute_fetchall(
        f"SELECT {SALE_LOG_SELECT} FROM sales WHERE {where} ORDER BY occurred_at, id LIMIT ?",
        (*args, limit),
    )
    out = []
    for r in rows:
        item: dict[str, Any] = {
            k: (bool(v) if k in BOOL_COLS and v is not None else v)
            for k, v in zip(SALE_LOG_COLS, r, strict=True)
        }
        item["warnings"] = warnings_of(item.pop("warning"))
        out.append(item)
    return out


async def count_sales(db: aiosqlite.Connection, store: str, day: date, customer: str | None) -> int:
    """How many sales the whole Sales Log of `day` (with its filter) holds."""
    where, args = _log_where(store, day, customer)
    rows = list(await db.execute_fetchall(f"SELECT count(*) FROM sales WHERE {where}", args))
    return int(rows[0][0])


_STATE_WHERE = {
    "pending": " AND o.delivered_at IS NULL",
    "due": " AND o.delivered_at IS NULL AND o.due_at <= ?",
    "delivered": " AND o.delivered_at IS NOT NULL AND o.cancelled = 0",
    "cancelled": " AND o.cancelled = 1",
}


async def list_triggers(
    db: aiosqlite.Connection,
    store: str,
    limit: int,
    before: PageKey | None,
    state: str | None,
    trigger: str | None,
    now: datetime | None,
) -> list[dict[str, Any]]:
    """One page of a store's trigger events, newest first, before `before`."""
    where = "o.store = ?"
    args: list[Any] = [store]
    if state is not None:
        where += _STATE_WHERE[state]
        if state == "due":
            if now is None:
                raise ValueError("the `due` state needs `now`")
            args.append(utc_text(now))
    if trigger is not None:
        where += " AND o.trigger_name = ?"
        args.append(trigger)
    if before is not None:
        where += " AND (o.created_at, o.event_id) < (?, ?)"
        args += before
    rows = await db.execute_fetchall(
        f"SELECT o.{', o.'.join(TRIGGER_COLS)}, s.currency, o.delivered_at, o.cancelled"
        " FROM trigger_outbox o LEFT JOIN sales s ON s.store = o.store AND s.id = o.sale_id"
        f" WHERE {where} ORDER BY o.created_at DESC, o.event_id DESC LIMIT ?",
        (*args, limit),
    )
    out = []
    for r in rows:
        item = {k: v for k, v in zip(TRIGGER_COLS, r, strict=False)}
        item["currency"] = r[-3]
        item["trigger"] = item.pop("trigger_name")
        delivered_at, cancelled = r[-2], r[-1]
        item["delivered_at"] = delivered_at
        item["status"] = "cancelled" if cancelled else "delivered" if delivered_at else "pending"
        out.append(item)
    return out
