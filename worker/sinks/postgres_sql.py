"""The PostgreSQL dialect of the SQL sink core (`worker.sinks.sql`): placeholders `$n`, id
lists bound as one `text[]`, native types (NUMERIC, TIMESTAMPTZ, DATE, JSONB), and how
records map to the PostgreSQL sink's rows. The tables are described in
`worker.sinks.sqlite`, their DDL is in `worker.sinks.postgres_schema`.

A window page is bulk-loaded: its sales and outbox rows are COPYed (binary) into temporary
staging tables of the session (`ON COMMIT DELETE ROWS`, created once per connection), then
`INSERT ... SELECT ... ON CONFLICT` moves them into the real tables, the sales upsert guarded
by version and `RETURNING` which rows landed; lines and tenders of the sales written are
COPYed straight into their tables (their old rows were deleted first, nothing can conflict).
Entities and voids send one array per column and `INSERT ... SELECT FROM unnest(...)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from worker.batch import CommitBatch, SaleRow
from worker.money import minor_unit_sql
from worker.records import Customer, Product, encode
from worker.sinks.base import SALE_LOG_COLUMNS, SALE_LOG_FROM_BODY, ReportRow
from worker.sinks.postgres_schema import ddl
from worker.sinks.sql_rows import (
    customer_values,
    line_values,
    product_values,
    sale_values,
    tender_values,
    trigger_values,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn = PoolConnectionProxy[asyncpg.Record]

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
# Session-local staging tables (pg_temp: never seen by another connection; emptied at commit).
STAGE_SALES = "possync_stage_sales"
STAGE_OUTBOX = "possync_stage_outbox"


def _stage(table: str, cols: Cols) -> str:
    """The staging table, created on a connection's first page and kept for the session."""
    spec = ", ".join(f"{n} {t}" for n, t in cols)
    return f"CREATE TEMP TABLE IF NOT EXISTS {table} ({spec}) ON COMMIT DELETE ROWS"


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


# The Sales Log's select list.
SALE_LOG_SELECT = ", ".join(_log_column(c) for c in SALE_LOG_COLUMNS)


def _upsert_entity(s: str, table: str, cols: Cols) -> str:
    """The version-guarded bulk upsert of customers or products (`synced_at` = now())."""
    names = [n for n, _ in cols]
    return (
        f"INSERT INTO {s}.{table} AS t (store, {', '.join(names)}, synced_at)"
        f" SELECT $1::text, {', '.join(f'u.{n}' for n in names[:-1])}, u.body::jsonb, now()"
        f" FROM {_unnest(cols, 2)}"
        f" ON CONFLICT (store, id) DO UPDATE SET {_set_excluded([*names, 'synced_at'], ['id'])}"
        " WHERE excluded.version > t.version RETURNING t.id"
    )


class Sql:
    """Every statement of the sink, with the schema name baked in once."""

    def __init__(self, schema: str) -> None:
        s = '"' + schema.replace('"', '""') + '"'
        self.schema = s  # quoted, for the statements `worker.sinks.sql` writes
        self.schema_name = schema  # as it is, for COPY (asyncpg quotes it)
        self.stage_sales = _stage(STAGE_SALES, SALE)
        self.stage_outbox = _stage(STAGE_OUTBOX, TRIGGER)
        self.ddl = ddl(schema)
        self.upsert_customers = _upsert_entity(s, "customers", CUSTOMER)
        self.upsert_products = _upsert_entity(s, "products", PRODUCT)
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
        self.insert_voids = (
            f"INSERT INTO {s}.voids (store, sale_id, occurred_at, reason, version, batch_id)"
            f" SELECT $1::text, u.sale_id, u.occurred_at, u.reason, u.version, $2::text"
            f" FROM {_unnest(VOID, 3)} ON CONFLICT (store, sale_id) DO NOTHING"
        )
        self.upsert_sales = (
            f"INSERT INTO {s}.sales AS t (store, {', '.join(sale_cols)})"
            f" SELECT $1::text, {', '.join(f'u.{n}' for n in names[:-2])},"
            " v.sale_id IS NOT NULL, v.occurred_at, u.warning, now(), $2::text, u.body::jsonb"
            f" FROM {STAGE_SALES} u"
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
        self.line_columns = ("store", *(n for n, _ in LINE))
        self.tender_columns = ("store", *(n for n, _ in TENDER))
        self.void_existing = (
            f"UPDATE {s}.sales t SET voided = true, voided_at = v.occurred_at FROM {s}.voids v"
            " WHERE t.store = $1 AND t.id = ANY($2::text[]) AND NOT t.voided"
            " AND v.store = t.store AND v.sale_id = t.id RETURNING t.id"
        )
        self.insert_outbox = (
            f"INSERT INTO {s}.trigger_outbox ({_TRIGGER_NAMES}, batch_id)"
            f" SELECT {_TRIGGER_NAMES}, $1::text FROM {STAGE_OUTBOX}"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
        )
        # Each total at its currency's minor unit first (round() on numeric ties away from
        # zero, as `worker.money.at_minor`), then summed: the report is the Sales Log's sum.
        self.sales_report = (
            "SELECT business_date, currency, count(*) FILTER (WHERE NOT voided),"
            " coalesce(sum(total) FILTER (WHERE NOT voided AND total > 0), 0),"
            " coalesce(sum(-total) FILTER (WHERE NOT voided AND total < 0), 0),"
            " count(*) FILTER (WHERE voided),"
            " count(*) FILTER (WHERE NOT voided AND (kind = 'return' OR total < 0))"
            f" FROM (SELECT business_date, currency, kind, voided,"
            f" round(total, {minor_unit_sql('currency')}) AS total"
            f" FROM {s}.sales WHERE store = $1 AND business_date BETWEEN $2 AND $3) AS shown"
            " GROUP BY business_date, currency ORDER BY business_date, currency"
        )
        self.health = (
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
        )


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Row tuples -> one list per column (the unnest parameters)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


def customer_row(c: Customer) -> tuple[Any, ...]:
    """The `CUSTOMER` columns of one customer."""
    return (*customer_values(c), encode(c).decode())


def product_row(p: Product) -> tuple[Any, ...]:
    """The `PRODUCT` columns of one product."""
    return (*product_values(p), encode(p).decode())


def sale_row(row: SaleRow) -> tuple[Any, ...]:
    """The `SALE` columns of one sale."""
    return (*sale_values(row), row.warning_text(), row.body_text())


class PostgresDialect:
    """`worker.sinks.sql.Dialect` for asyncpg, every table in one schema."""

    log_select = SALE_LOG_SELECT
    body = "body::text"
    # The stored versions a commit compares against stay put until it ends; concurrent
    # deliverers never hand out the same outbox event.
    lock_sales = " FOR UPDATE"
    lock_due = " FOR UPDATE OF o SKIP LOCKED"

    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    def mark(self, n: int) -> str:
        """`$n`."""
        return f"${n}"

    def table(self, name: str) -> str:
        """The table in the sink's schema."""
        return f"{self.sql.schema}.{name}"

    def in_ids(self, mark: str) -> str:
        """Membership in a `text[]` bound as one parameter."""
        return f"= ANY({mark}::text[])"

    def ids(self, values: Iterable[str]) -> Any:
        """The ids as one array."""
        return list(values)

    def param(self, value: date | datetime) -> Any:
        """Dates and instants bind natively (DATE, TIMESTAMPTZ)."""
        return value

    async def fetch(self, tx: Conn, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """Run a statement, return its rows."""
        # asyncpg.Record is indexable by position; its stubs type it as a Mapping only.
        return cast("Sequence[Sequence[Any]]", await tx.fetch(sql, *args))

    async def execute(self, tx: Conn, sql: str, args: Sequence[Any]) -> None:
        """Run a statement."""
        await tx.execute(sql, *args)

    async def upsert_entities(
        self,
        tx: Conn,
        store: str,
        customers: Sequence[Customer],
        products: Sequence[Product],
        synced_at: datetime,
    ) -> int:
        """Version-guarded upserts; `synced_at` is the server's now()."""
        applied = 0
        if customers:
            cols = columns([customer_row(c) for c in customers], len(CUSTOMER))
            applied += len(await tx.fetch(self.sql.upsert_customers, store, *cols))
        if products:
            cols = columns([product_row(p) for p in products], len(PRODUCT))
            applied += len(await tx.fetch(self.sql.upsert_products, store, *cols))
        return applied

    async def claim_batch(self, tx: Conn, batch: CommitBatch, committed_at: datetime) -> str | None:
        """Claim the batch's row first: a second commit of the same id waits on it, then
        finds the outcome the first one stored."""
        m = batch.manifest
        claimed = await tx.fetchval(
            self.sql.claim_batch,
            batch.batch_id,
            batch.store,
            batch.window_at,
            m.sales,
            m.voids,
            m.triggers,
            m.total_sum,
            m.ids_sha256,
        )
        if claimed is not None:
            return None
        outcome: str = await tx.fetchval(self.sql.batch_outcome, batch.batch_id)
        return outcome

    async def finish_batch(
        self, tx: Conn, batch: CommitBatch, outcome: str, committed_at: datetime
    ) -> None:
        """The outcome, filled in before the transaction commits."""
        await tx.execute(self.sql.finish_batch, batch.batch_id, outcome)

    async def insert_voids(self, tx: Conn, batch: CommitBatch) -> None:
        """Every void of the batch; the first void of a sale wins."""
        voids = [(v.id, v.occurred_at, v.reason, v.effective_version) for v in batch.voids]
        await tx.execute(
            self.sql.insert_voids, batch.store, batch.batch_id, *columns(voids, len(VOID))
        )

    async def _copy_stage(
        self, tx: Conn, create: str, table: str, cols: Cols, records: Iterable[Sequence[Any]]
    ) -> None:
        """COPY rows into a (fresh, empty) staging table of this session."""
        await tx.execute(create)
        await tx.copy_records_to_table(table, records=records, columns=[n for n, _ in cols])

    async def upsert_sales(
        self, tx: Conn, batch: CommitBatch, rows: Sequence[SaleRow], committed_at: datetime
    ) -> dict[str, bool]:
        """COPY into the staging table, then the guarded upsert joined to `voids`;
        RETURNING says which rows landed."""
        sql = self.sql
        await self._copy_stage(tx, sql.stage_sales, STAGE_SALES, SALE, map(sale_row, rows))
        returned = await tx.fetch(sql.upsert_sales, batch.store, batch.batch_id)
        return {r[0]: r[1] for r in returned}

    async def delete_children(self, tx: Conn, store: str, sale_ids: Sequence[str]) -> None:
        """Delete the lines and tenders of these sales."""
        await tx.execute(self.sql.delete_lines, store, list(sale_ids))
        await tx.execute(self.sql.delete_tenders, store, list(sale_ids))

    async def insert_children(self, tx: Conn, store: str, rows: Sequence[SaleRow]) -> None:
        """COPY the lines and tenders of these sales straight into their tables."""
        sql = self.sql
        lines = [(store, *v) for v in line_values(rows)]
        if lines:
            await tx.copy_records_to_table(
                "sale_lines", records=lines, columns=sql.line_columns, schema_name=sql.schema_name
            )
        tenders = [(store, *v) for v in tender_values(rows)]
        if tenders:
            await tx.copy_records_to_table(
                "tenders", records=tenders, columns=sql.tender_columns, schema_name=sql.schema_name
            )

    async def void_existing(self, tx: Conn, store: str, sale_ids: Sequence[str]) -> int:
        """Mark stored sales voided at their void's instant; how many changed."""
        return len(await tx.fetch(self.sql.void_existing, store, list(sale_ids)))

    async def insert_triggers(self, tx: Conn, batch: CommitBatch) -> int:
        """The batch's outbox rows; an existing event id is kept."""
        sql = self.sql
        rows = map(trigger_values, batch.triggers)
        await self._copy_stage(tx, sql.stage_outbox, STAGE_OUTBOX, TRIGGER, rows)
        return len(await tx.fetch(sql.insert_outbox, batch.batch_id))

    async def sales_report(self, tx: Conn, store: str, start: date, end: date) -> list[ReportRow]:
        """Summed by the server in NUMERIC (exact)."""
        rows = await tx.fetch(self.sql.sales_report, store, start, end)
        return [
            ReportRow(
                date=r[0],
                currency=r[1],
                count=r[2],
                gross=Decimal(r[3]),
                returns=Decimal(r[4]),
                returns_count=r[6],
                net=Decimal(r[3]) - Decimal(r[4]),
                voided=r[5],
            )
            for r in rows
        ]
