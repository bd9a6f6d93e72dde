"""Every statement of the PostgreSQL sink, and how records map to its rows (the tables are
described in `worker.sinks.sqlite`, their DDL is in `worker.sinks.postgres_schema`). Bulk
writes send one array per column and `INSERT ... SELECT FROM unnest(...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from worker.errors import SinkError
from worker.records import Customer, Product, encode
from worker.sinks.base import SALE_LOG_COLUMNS, SALE_LOG_FROM_BODY, SaleRow, TriggerEvent, utc_text
from worker.sinks.postgres_schema import ddl

TABLES = (
    "customers",
    "products",
    "sales",
    "sale_lines",
    "tenders",
    "voids",
    "trigger_outbox",
    "trigger_events",
    "commit_batches",
)

Cols = Sequence[tuple[str, str]]


def _cols(spec: str) -> tuple[tuple[str, str], ...]:
    """'name:type name:type' -> ((name, type), ...)."""
    return tuple((n, t) for n, _, t in (item.partition(":") for item in spec.split()))


def _unnest(cols: Cols, first: int) -> str:
    """`unnest($first::t1[], ...) AS u(c1, ...)`: one array parameter per column."""
    args = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(cols, first))
    return f"unnest({args}) AS u({', '.join(n for n, _ in cols)})"


def _set_excluded(columns: Sequence[str], key: Sequence[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)


# Per-row columns sent as arrays ($2... after store = $1).
CUSTOMER = _cols(
    "id:text version:int8 first_name:text last_name:text email:text phone:text status:text "
    "updated_at:timestamptz body:text"
)
PRODUCT = _cols(
    "id:text version:int8 sku:text name:text category:text price:numeric currency:text "
    "status:text is_unique_piece:bool updated_at:timestamptz body:text"
)
SALE = _cols(
    "id:text version:int8 business_date:date occurred_at:timestamptz kind:text origin:text "
    "channel:text customer_id:text customer_linked:bool employee_id:text original_id:text "
    "display_number:text location_id:text register_id:text currency:text subtotal:numeric "
    "tax:numeric total:numeric shipping:numeric fees:numeric tip:numeric line_count:int4 "
    "warning:text body:text"
)
LINE = _cols(
    "sale_id:text line_no:int4 line_id:text sku:text product_id:text description:text "
    "category:text quantity:numeric unit_price:numeric discount:numeric tax:numeric "
    "line_kind:text employee_id:text original_line_id:text restock:bool"
)
TENDER = _cols("sale_id:text seq:int4 method:text amount:numeric reference:text method_id:text")
VOID = _cols("sale_id:text occurred_at:timestamptz reason:text version:int8")
TRIGGER = _cols(
    "event_id:text store:text sale_id:text trigger_name:text action:text customer_id:text "
    "total:numeric business_date:date due_date:date due_at:timestamptz created_at:timestamptz"
)
_TRIGGER_NAMES = ", ".join(n for n, _ in TRIGGER)


def _log_column(column: str) -> str:
    """A Sales Log column; the figures only the canonical body holds come from it."""
    if column not in SALE_LOG_FROM_BODY:
        return column
    default = SALE_LOG_FROM_BODY[column]
    if isinstance(default, bool):
        return f"coalesce((body->>'{column}')::boolean, {str(default).lower()})"
    if default is None:
        return f"body->>'{column}'"
    return f"coalesce(body->>'{column}', '{default}')"


# The Sales Log's select list (`worker.sinks.postgres_reads`).
SALE_LOG_SELECT = ", ".join(_log_column(c) for c in SALE_LOG_COLUMNS)


class Sql:
    """Every statement of the sink, with the schema name baked in once."""

    def __init__(self, schema: str) -> None:
        s = '"' + schema.replace('"', '""') + '"'
        self.schema = s  # quoted, for the statements built per call (`postgres_reads`)
        self.ddl = ddl(schema)
        names = [n for n, _ in CUSTOMER]
        self.upsert_customers = (
            f"INSERT INTO {s}.customers AS t (store, {', '.join(names)}, synced_at)"
            f" SELECT $1::text, {', '.join(f'u.{n}' for n in names[:-1])}, u.body::jsonb, now()"
            f" FROM {_unnest(CUSTOMER, 2)}"
            f" ON CONFLICT (store, id) DO UPDATE SET {_set_excluded([*names, 'synced_at'], ['id'])}"
            " WHERE excluded.version > t.version RETURNING t.id"
        )
        names = [n for n, _ in PRODUCT]
        self.upsert_products = (
            f"INSERT INTO {s}.products AS t (store, {', '.join(names)}, synced_at)"
            f" SELECT $1::text, {', '.join(f'u.{n}' for n in names[:-1])}, u.body::jsonb, now()"
            f" FROM {_unnest(PRODUCT, 2)}"
            f" ON CONFLICT (store, id) DO UPDATE SET {_set_excluded([*names, 'synced_at'], ['id'])}"
            " WHERE excluded.version > t.version RETURNING t.id"
        )
        names = [n for n, _ in SALE]
        sale_cols = [
            *names[:-2],
            "voided",
            "voided_at",
            "warning",
            "committed_at",
            "batch_id",
            "body",
        ]
        self.claim_batch = (
            f"INSERT INTO {s}.commit_batches (batch_id, store, window_at, sales, voids, triggers,"
            " total_sum, ids_sha256, committed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())"
            " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"
        )
        self.batch_outcome = f"SELECT outcome::text FROM {s}.commit_batches WHERE batch_id = $1"
        self.finish_batch = f"UPDATE {s}.commit_batches SET outcome = $2::jsonb WHERE batch_id = $1"
        self.lock_sales = (
            f"SELECT id, version, voided FROM {s}.sales WHERE store = $1 AND id = ANY($2::text[])"
            " FOR UPDATE"
        )
        self.insert_voids = (
            f"INSERT INTO {s}.voids (store, sale_id, occurred_at, reason, version, batch_id)"
            f" SELECT $1::text, u.sale_id, u.occurred_at, u.reason, u.version, $2::text"
            f" FROM {_unnest(VOID, 3)} ON CONFLICT (store, sale_id) DO NOTHING"
        )
        self.upsert_sales = (
            f"INSERT INTO {s}.sales AS t (store, {', '.join(sale_cols)})"
            f" SELECT $1::text, {', '.join(f'u.{n}' for n in names[:-2])},"
            " v.sale_id IS NOT NULL, v.occurred_at, u.warning, now(), $2::text, u.body::jsonb"
            f" FROM {_unnest(SALE, 3)}"
            f" LEFT JOIN {s}.voids v ON v.store = $1::text AND v.sale_id = u.id"
            f" ON CONFLICT (store, id) DO UPDATE SET {_set_excluded(sale_cols, ['id'])}"
            " WHERE excluded.version > t.version RETURNING t.id, t.voided"
        )
        self.delete_lines = (
            f"DELETE FROM {s}.sale_lines WHERE store = $1 AND sale_id = ANY($2::text[])"
        )
        self.delete_tenders = (
            f"DELETE FROM {s}.tenders WHERE store = $1 AND sale_id = ANY($2::text[])"
        )
        self.insert_lines = (
            f"INSERT INTO {s}.sale_lines (store, {', '.join(n for n, _ in LINE)})"
            f" SELECT $1::text, u.* FROM {_unnest(LINE, 2)}"
        )
        self.insert_tenders = (
            f"INSERT INTO {s}.tenders (store, {', '.join(n for n, _ in TENDER)})"
            f" SELECT $1::text, u.* FROM {_unnest(TENDER, 2)}"
        )
        self.void_existing = (
            f"UPDATE {s}.sales t SET voided = true, voided_at = v.occurred_at FROM {s}.voids v"
            " WHERE t.store = $1 AND t.id = ANY($2::text[]) AND NOT t.voided"
            " AND v.store = t.store AND v.sale_id = t.id RETURNING t.id"
        )
        self.insert_outbox = (
            f"INSERT INTO {s}.trigger_outbox ({_TRIGGER_NAMES}, batch_id)"
            f" SELECT u.*, $1::text FROM {_unnest(TRIGGER, 2)}"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        )
        self.due_outbox = (
            f"SELECT {', '.join(f'o.{n}' for n, _ in TRIGGER)}, coalesce(s.voided, false)"
            f" FROM {s}.trigger_outbox o LEFT JOIN {s}.sales s"
            " ON s.store = o.store AND s.id = o.sale_id"
            " WHERE o.delivered_at IS NULL AND o.due_at <= $1"
            " ORDER BY o.due_at, o.event_id LIMIT $2 FOR UPDATE OF o SKIP LOCKED"
        )
        self.fire = (
            f"INSERT INTO {s}.trigger_events ({_TRIGGER_NAMES}, fired_at)"
            f" SELECT {_TRIGGER_NAMES}, $1 FROM {s}.trigger_outbox"
            " WHERE event_id = ANY($2::text[]) ON CONFLICT (event_id) DO NOTHING"
        )
        self.mark_outbox = (
            f"UPDATE {s}.trigger_outbox SET delivered_at = $1, cancelled = $3"
            " WHERE event_id = ANY($2::text[])"
        )
        self.existing = {
            t: f"SELECT id FROM {s}.{t} WHERE store = $1 AND id = ANY($2::text[])"
            for t in ("customers", "sales")
        }
        self.entity = {
            t: f"SELECT version, body::text FROM {s}.{t} WHERE store = $1 AND id = $2"
            for t in ("customers", "products")
        }
        self.sale_head = (
            "SELECT version, voided, voided_at, customer_linked, warning, committed_at, batch_id,"
            f" body::text FROM {s}.sales WHERE store = $1 AND id = $2"
        )
        self.sale_lines = (
            "SELECT line_id, sku, product_id, description, category, quantity, unit_price,"
            " discount, tax, line_kind, employee_id, original_line_id, restock"
            f" FROM {s}.sale_lines WHERE store = $1 AND sale_id = $2 ORDER BY line_no"
        )
        self.sale_tenders = (
            f"SELECT method, amount, reference, method_id FROM {s}.tenders"
            " WHERE store = $1 AND sale_id = $2 ORDER BY seq"
        )
        self.sales_report = (
            "SELECT business_date, currency, count(*) FILTER (WHERE NOT voided),"
            " coalesce(sum(total) FILTER (WHERE NOT voided AND total > 0), 0),"
            " coalesce(sum(-total) FILTER (WHERE NOT voided AND total < 0), 0),"
            " count(*) FILTER (WHERE voided),"
            " count(*) FILTER (WHERE NOT voided AND (kind = 'return' OR total < 0))"
            f" FROM {s}.sales WHERE store = $1 AND business_date BETWEEN $2 AND $3"
            " GROUP BY business_date, currency ORDER BY business_date, currency"
        )
        self.counts = "SELECT " + ", ".join(f"(SELECT count(*) FROM {s}.{t})" for t in TABLES)
        self.health = (
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
        )


def jsonable(value: Any) -> Any:
    """Column value -> the JSON-able form the SQLite sink stores (same strings)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Row tuples -> one list per column (the unnest parameters)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


def customer_row(c: Customer) -> tuple[Any, ...]:
    return (
        c.id,
        c.effective_version,
        c.first_name,
        c.last_name,
        c.email,
        c.phone,
        c.status,
        c.updated_at,
        encode(c).decode(),
    )


def product_row(p: Product) -> tuple[Any, ...]:
    return (
        p.id,
        p.effective_version,
        p.sku,
        p.name,
        p.category,
        p.price,
        p.currency,
        p.status,
        p.is_unique_piece,
        p.updated_at,
        encode(p).decode(),
    )


def sale_row(row: SaleRow) -> tuple[Any, ...]:
    s = row.sale
    if s.business_date is None:
        raise SinkError(
            f"sale {s.id!r} has no business_date", retriable=False, field="$.business_date"
        )
    return (
        s.id,
        row.version,
        s.business_date,
        s.occurred_at,
        s.kind,
        s.origin,
        s.channel,
        s.customer_id,
        row.customer_linked,
        s.employee_id,
        s.original_id,
        s.display_number,
        s.location_id,
        s.register_id,
        s.currency,
        s.subtotal,
        s.tax,
        s.total,
        s.shipping,
        s.fees,
        s.tip,
        len(s.lines),
        row.warning_text(),
        encode(s).decode(),
    )


def trigger_from(r: asyncpg.Record) -> TriggerEvent:
    return TriggerEvent(
        event_id=r[0],
        store=r[1],
        sale_id=r[2],
        trigger=r[3],
        action=r[4],
        customer_id=r[5],
        total=r[6],
        business_date=r[7],
        due_date=r[8],
        due_at=r[9],
        created_at=r[10],
    )
