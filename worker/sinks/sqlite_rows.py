"""The SQLite dialect of the SQL sink core (`worker.sinks.sql`): placeholders `?`, id lists
bound as one JSON array, and how records map to the SQLite sink's rows (column lists,
statements, parameter tuples). The tables are described in `worker.sinks.sqlite`, their
DDL is in `worker.sinks.sqlite_schema`. Money is exact decimal text, never REAL; instants
fixed-width UTC text, dates ISO text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import aiosqlite
import msgspec

from worker.batch import CommitBatch, SaleRow, TriggerEvent
from worker.money import at_minor
from worker.records import Customer, Product, Void, encode
from worker.sinks.base import (
    SALE_LOG_COLUMNS,
    SALE_LOG_FROM_BODY,
    ReportRow,
    utc_text,
)
from worker.sinks.sql_rows import (
    AS_TEXT,
    TRIGGER_COLUMNS,
    customer_values,
    instant_text,
    money_text,
    no_business_date,
    product_values,
    trigger_values,
)

_JSON = msgspec.json.Encoder()


def _cols(names: str) -> tuple[str, ...]:
    return tuple(names.split())


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT ... ON CONFLICT DO UPDATE guarded so only a strictly newer version lands."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates} "
        f"WHERE excluded.version > {table}.version"
    )


def _insert(table: str, columns: Sequence[str], suffix: str = "") -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {suffix}".rstrip()


_CUSTOMER_COLS = _cols(
    "store id version first_name last_name email phone status updated_at synced_at body"
)
_PRODUCT_COLS = _cols(
    "store id version sku name category price currency status is_unique_piece "
    "updated_at synced_at body"
)
_SALE_COLS = _cols(
    "store id version business_date occurred_at kind origin channel customer_id "
    "customer_linked employee_id original_id display_number location_id register_id "
    "currency subtotal tax total shipping fees tip line_count voided voided_at "
    "warning committed_at batch_id body"
)
_LINE_COLS = _cols(
    "store sale_id line_no line_id sku product_id description category quantity "
    "unit_price discount tax line_kind employee_id original_line_id restock"
)
_TENDER_COLS = ("store", "sale_id", "seq", "method", "amount", "reference", "method_id")
_VOID_COLS = ("store", "sale_id", "occurred_at", "reason", "version", "batch_id")
_BATCH_COLS = _cols(
    "batch_id store window_at sales voids triggers total_sum ids_sha256 committed_at outcome"
)

UPSERT_CUSTOMER = _upsert("customers", _CUSTOMER_COLS, ("store", "id"))
UPSERT_PRODUCT = _upsert("products", _PRODUCT_COLS, ("store", "id"))
UPSERT_SALE = _upsert("sales", _SALE_COLS, ("store", "id"))
INSERT_LINE = _insert("sale_lines", _LINE_COLS)
INSERT_TENDER = _insert("tenders", _TENDER_COLS)
INSERT_VOID = _insert("voids", _VOID_COLS, "ON CONFLICT (store, sale_id) DO NOTHING")
INSERT_TRIGGER = _insert(
    "trigger_outbox", (*TRIGGER_COLUMNS, "batch_id"), "ON CONFLICT (event_id) DO NOTHING"
)
INSERT_BATCH = _insert("commit_batches", _BATCH_COLS)

# A JSON array bound as one parameter: one round-trip for any number of ids.
IN_IDS = "(SELECT value FROM json_each(?))"


# The log's figures that only the canonical body holds (one source of truth): a body
# committed before they existed has none, which is what the record said then.
def _from_body(column: str) -> str:
    default = SALE_LOG_FROM_BODY.get(column, column)
    if column not in SALE_LOG_FROM_BODY:
        return column
    extract = f"json_extract(body, '$.{column}')"
    if default is None:
        return extract
    literal = int(default) if isinstance(default, bool) else f"'{default}'"
    return f"coalesce({extract}, {literal})"


SALE_LOG_SELECT = ", ".join(_from_body(c) for c in SALE_LOG_COLUMNS)


def json_list(values: Iterable[str]) -> str:
    """Ids as one JSON array (bound to `IN_IDS`)."""
    return _JSON.encode(list(values)).decode()


def _text(values: Iterable[Any]) -> tuple[Any, ...]:
    # `sqlite_value` inlined: this runs for every column of every row of a batch.
    conv = AS_TEXT.get
    return tuple([v if (f := conv(type(v))) is None else f(v) for v in values])


def customer_params(store: str, c: Customer, synced_at: str) -> tuple[Any, ...]:
    """`UPSERT_CUSTOMER`'s parameters."""
    return (store, *_text(customer_values(c)), synced_at, encode(c).decode())


def product_params(store: str, p: Product, synced_at: str) -> tuple[Any, ...]:
    """`UPSERT_PRODUCT`'s parameters."""
    return (store, *_text(product_values(p)), synced_at, encode(p).decode())


def sale_params(
    store: str, row: SaleRow, voided_at: str | None, committed_at: str, batch_id: str
) -> tuple[Any, ...]:
    """`UPSERT_SALE`'s parameters: voided iff a void of the sale is kept. The conversions
    of `(store, *_text(sale_values(row)), ...)` written out per column (a window builds one
    per sale with the GIL held; a test holds it equal to the generic form)."""
    s = row.sale
    day = s.business_date
    if day is None:
        raise no_business_date(s.id)
    mt = money_text
    return (
        store,
        s.id,
        row.version,
        day.isoformat(),
        instant_text(s.occurred_at),
        s.kind,
        s.origin,
        s.channel,
        s.customer_id,
        int(row.customer_linked),
        s.employee_id,
        s.original_id,
        s.display_number,
        s.location_id,
        s.register_id,
        s.currency,
        mt(s.subtotal),
        mt(s.tax),
        mt(s.total),
        mt(s.shipping),
        mt(s.fees),
        mt(s.tip),
        len(s.lines),
        int(voided_at is not None),
        voided_at,
        row.warning_text(),
        committed_at,
        batch_id,
        row.body_text(),
    )


def line_params(store: str, rows: Sequence[SaleRow]) -> Iterator[tuple[Any, ...]]:
    """`INSERT_LINE`'s parameters: `(store, *_text(v)) for v in line_values(rows)`, with the
    conversions written out per column (the hottest loop of a window's sink write; a test
    holds it equal to the generic form)."""
    mt = money_text
    for row in rows:
        sid = row.sale.id
        for no, ln in enumerate(row.sale.lines, 1):
            restock = ln.restock
            yield (
                store,
                sid,
                no,
                ln.line_id,
                ln.sku,
                ln.product_id,
                ln.description,
                ln.category,
                mt(ln.quantity),
                mt(ln.unit_price),
                mt(ln.discount),
                mt(ln.tax),
                ln.line_kind,
                ln.employee_id,
                ln.original_line_id,
                None if restock is None else int(restock),
            )


def tender_params(store: str, rows: Sequence[SaleRow]) -> Iterator[tuple[Any, ...]]:
    """`INSERT_TENDER`'s parameters: `(store, *_text(v)) for v in tender_values(rows)`
    written out per column (a test holds it equal to the generic form)."""
    mt = money_text
    for row in rows:
        sid = row.sale.id
        for no, t in enumerate(row.sale.tenders, 1):
            yield (store, sid, no, t.method, mt(t.amount), t.reference, t.method_id)


def void_params(store: str, v: Void, batch_id: str) -> tuple[Any, ...]:
    return (store, v.id, utc_text(v.occurred_at), v.reason, v.effective_version, batch_id)


def trigger_params(t: TriggerEvent, batch_id: str) -> tuple[Any, ...]:
    """`INSERT_TRIGGER`'s parameters."""
    return (*_text(trigger_values(t)), batch_id)


class ReportDay:
    """Running Sales Report sums of one (business date, currency), in exact Decimals."""

    __slots__ = ("count", "gross", "returns", "returns_count", "voided")

    def __init__(self) -> None:
        self.count = 0
        self.gross = Decimal(0)
        self.returns = Decimal(0)
        self.returns_count = 0
        self.voided = 0

    def add(self, total: Decimal, kind: str, voided: bool) -> None:
        """Count one committed sale."""
        if voided:
            self.voided += 1
            return
        self.count += 1
        if total > 0:
            self.gross += total
        elif total < 0:
            self.returns -= total
        if kind == "return" or total < 0:
            self.returns_count += 1

    def row(self, day: date, currency: str) -> ReportRow:
        """The finished row."""
        return ReportRow(
            date=day,
            currency=currency,
            count=self.count,
            gross=self.gross,
            returns=self.returns,
            returns_count=self.returns_count,
            net=self.gross - self.returns,
            voided=self.voided,
        )


class SqliteDialect:
    """`worker.sinks.sql.Dialect` for aiosqlite: one writer connection in BEGIN IMMEDIATE."""

    log_select = SALE_LOG_SELECT
    body = "body"
    # The writer holds the database's write lock for the whole transaction: no row locks.
    lock_sales = ""
    lock_due = ""

    def mark(self, n: int) -> str:
        """`?`: positional, in the order the marks appear."""
        return "?"

    def table(self, name: str) -> str:
        """Tables live in the file's main schema."""
        return name

    def in_ids(self, mark: str) -> str:
        """Membership in a JSON array bound as one parameter: one round-trip for any count."""
        return f"IN (SELECT value FROM json_each({mark}))"

    def ids(self, values: Iterable[str]) -> Any:
        """The ids as one JSON array."""
        return json_list(values)

    def param(self, value: date | datetime) -> Any:
        """Instants as fixed-width UTC text, dates as ISO text (text order is time order)."""
        return utc_text(value) if isinstance(value, datetime) else value.isoformat()

    async def fetch(
        self, tx: aiosqlite.Connection, sql: str, args: Sequence[Any]
    ) -> Sequence[Sequence[Any]]:
        """Run a statement, return its rows."""
        return list(await tx.execute_fetchall(sql, args))

    async def execute(self, tx: aiosqlite.Connection, sql: str, args: Sequence[Any]) -> None:
        """Run a statement."""
        await tx.execute(sql, args)

    async def upsert_entities(
        self,
        tx: aiosqlite.Connection,
        store: str,
        customers: Sequence[Customer],
        products: Sequence[Product],
        synced_at: datetime,
    ) -> int:
        """Version-guarded upserts (`UPSERT_CUSTOMER`, `UPSERT_PRODUCT`); rows written."""
        at = utc_text(synced_at)
        applied = 0
        if customers:
            params = [customer_params(store, c, at) for c in customers]
            async with tx.executemany(UPSERT_CUSTOMER, params) as cur:
                applied += cur.rowcount
        if products:
            params = [product_params(store, p, at) for p in products]
            async with tx.executemany(UPSERT_PRODUCT, params) as cur:
                applied += cur.rowcount
        return applied

    async def claim_batch(
        self, tx: aiosqlite.Connection, batch: CommitBatch, committed_at: datetime
    ) -> str | None:
        """The stored outcome of a committed batch; the write lock is the claim."""
        done = await tx.execute_fetchall(
            "SELECT outcome FROM commit_batches WHERE batch_id = ?", (batch.batch_id,)
        )
        for (outcome,) in done:
            return str(outcome)
        return None

    async def finish_batch(
        self, tx: aiosqlite.Connection, batch: CommitBatch, outcome: str, committed_at: datetime
    ) -> None:
        """The `commit_batches` row: its existence is what makes the batch committed."""
        m = batch.manifest
        await tx.execute(
            INSERT_BATCH,
            (
                batch.batch_id,
                batch.store,
                utc_text(batch.window_at),
                m.sales,
                m.voids,
                m.triggers,
                money_text(m.total_sum),
                m.ids_sha256,
                utc_text(committed_at),
                outcome,
            ),
        )

    async def insert_voids(self, tx: aiosqlite.Connection, batch: CommitBatch) -> None:
        """Every void of the batch; the first void of a sale wins."""
        await tx.executemany(
            INSERT_VOID, [void_params(batch.store, v, batch.batch_id) for v in batch.voids]
        )

    async def upsert_sales(
        self,
        tx: aiosqlite.Connection,
        batch: CommitBatch,
        rows: Sequence[SaleRow],
        committed_at: datetime,
    ) -> dict[str, bool]:
        """Write the (strictly newer) sales, voided where a void is kept."""
        store = batch.store
        found = await tx.execute_fetchall(
            f"SELECT sale_id, occurred_at FROM voids WHERE store = ? AND sale_id IN {IN_IDS}",
            (store, json_list(row.sale.id for row in rows)),
        )
        void_at: dict[str, str] = {r[0]: r[1] for r in found}
        at = utc_text(committed_at)
        # A generator, not a list: the rows are built on the connection thread while
        # executemany consumes them, so a 5,000-sale batch does not stall the loop.
        await tx.executemany(
            UPSERT_SALE,
            (sale_params(store, row, void_at.get(row.sale.id), at, batch.batch_id) for row in rows),
        )
        return {row.sale.id: row.sale.id in void_at for row in rows}

    async def delete_children(
        self, tx: aiosqlite.Connection, store: str, sale_ids: Sequence[str]
    ) -> None:
        """Delete the lines and tenders of these sales."""
        keys = [(store, sid) for sid in sale_ids]
        await tx.executemany("DELETE FROM sale_lines WHERE store = ? AND sale_id = ?", keys)
        await tx.executemany("DELETE FROM tenders WHERE store = ? AND sale_id = ?", keys)

    async def insert_children(
        self, tx: aiosqlite.Connection, store: str, rows: Sequence[SaleRow]
    ) -> None:
        """Insert the lines and tenders of these sales (streamed, like the sales)."""
        await tx.executemany(INSERT_LINE, line_params(store, rows))
        await tx.executemany(INSERT_TENDER, tender_params(store, rows))

    async def void_existing(
        self, tx: aiosqlite.Connection, store: str, sale_ids: Sequence[str]
    ) -> int:
        """Mark stored sales voided at their void's instant; how many changed."""
        async with tx.executemany(
            "UPDATE sales SET voided = 1, voided_at = (SELECT v.occurred_at FROM voids v"
            " WHERE v.store = sales.store AND v.sale_id = sales.id)"
            " WHERE store = ? AND id = ? AND voided = 0",
            [(store, sid) for sid in sale_ids],
        ) as cur:
            return int(cur.rowcount)

    async def insert_triggers(self, tx: aiosqlite.Connection, batch: CommitBatch) -> int:
        """The batch's outbox rows; an existing event id is kept."""
        async with tx.executemany(
            INSERT_TRIGGER, [trigger_params(t, batch.batch_id) for t in batch.triggers]
        ) as cur:
            return int(cur.rowcount)

    async def sales_report(
        self, tx: aiosqlite.Connection, store: str, start: date, end: date
    ) -> list[ReportRow]:
        """Summed in Python over exact decimal text (SQL sum() would go through float), each
        total at its currency's minor unit first, as the Sales Log shows it."""
        rows = await tx.execute_fetchall(
            "SELECT business_date, currency, kind, voided, total FROM sales"
            " WHERE store = ? AND business_date BETWEEN ? AND ?"
            " ORDER BY business_date, currency",
            (store, start.isoformat(), end.isoformat()),
        )
        days: dict[tuple[str, str], ReportDay] = {}
        for day, currency, kind, voided, total in rows:
            acc = days.get((day, currency))
            if acc is None:
                acc = days[day, currency] = ReportDay()
            acc.add(at_minor(total, currency), kind, bool(voided))
        return [acc.row(date.fromisoformat(d), cur) for (d, cur), acc in days.items()]
