"""How records map to the SQLite sink's rows: column lists, statements, parameter tuples
and row decoders (the tables are described in `worker.sinks.sqlite`, their DDL is in
`worker.sinks.sqlite_schema`). Money is exact decimal text, never REAL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import msgspec

from worker.errors import SinkError
from worker.records import Customer, Product, SaleLine, Tender, Void, encode
from worker.sinks.base import (
    SALE_LOG_COLUMNS,
    SALE_LOG_FROM_BODY,
    SaleRow,
    TriggerEvent,
    utc_text,
    utc_text_opt,
)

_JSON = msgspec.json.Encoder()


def _cols(names: str) -> tuple[str, ...]:
    return tuple(names.split())


TABLES = _cols(
    "customers products sales sale_lines tenders voids trigger_outbox trigger_events commit_batches"
)


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
TRIGGER_COLS = _cols(
    "event_id store sale_id trigger_name action customer_id total business_date "
    "due_date due_at created_at"
)
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
    "trigger_outbox", (*TRIGGER_COLS, "batch_id"), "ON CONFLICT (event_id) DO NOTHING"
)
INSERT_BATCH = _insert("commit_batches", _BATCH_COLS)

# A JSON array bound as one parameter: one round-trip for any number of ids.
IN_IDS = "(SELECT value FROM json_each(?))"

SALE_LOG_COLS = SALE_LOG_COLUMNS


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


SALE_LOG_SELECT = ", ".join(_from_body(c) for c in SALE_LOG_COLS)
BOOL_COLS = frozenset({"customer_linked", "voided", "tax_included"})


def money_text(value: Decimal) -> str:
    """Exact decimal text without exponent ('1E+2' -> '100')."""
    text = str(value)  # 3-4x faster than format(); only exponent forms need the slow path
    return format(value, "f") if "E" in text else text


def _money_opt(value: Decimal | None) -> str | None:
    return None if value is None else money_text(value)


def json_list(values: Iterable[str]) -> str:
    return _JSON.encode(list(values)).decode()


def _bool_opt(value: bool | None) -> int | None:
    return None if value is None else int(value)


def customer_params(store: str, c: Customer, synced_at: str) -> tuple[Any, ...]:
    return (
        store,
        c.id,
        c.effective_version,
        c.first_name,
        c.last_name,
        c.email,
        c.phone,
        c.status,
        utc_text_opt(c.updated_at),
        synced_at,
        encode(c).decode(),
    )


def product_params(store: str, p: Product, synced_at: str) -> tuple[Any, ...]:
    return (
        store,
        p.id,
        p.effective_version,
        p.sku,
        p.name,
        p.category,
        _money_opt(p.price),
        p.currency,
        p.status,
        int(p.is_unique_piece),
        utc_text_opt(p.updated_at),
        synced_at,
        encode(p).decode(),
    )


def sale_params(
    store: str, row: SaleRow, voided_at: str | None, committed_at: str, batch_id: str
) -> tuple[Any, ...]:
    s = row.sale
    if s.business_date is None:
        raise SinkError(
            f"sale {s.id!r} has no business_date", retriable=False, field="$.business_date"
        )
    return (
        store,
        s.id,
        row.version,
        s.business_date.isoformat(),
        utc_text(s.occurred_at),
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
        money_text(s.subtotal),
        money_text(s.tax),
        money_text(s.total),
        money_text(s.shipping),
        money_text(s.fees),
        money_text(s.tip),
        len(s.lines),
        int(voided_at is not None),
        voided_at,
        row.warning_text(),
        committed_at,
        batch_id,
        encode(s).decode(),
    )


def line_params(store: str, sale_id: str, no: int, ln: SaleLine) -> tuple[Any, ...]:
    return (
        store,
        sale_id,
        no,
        ln.line_id,
        ln.sku,
        ln.product_id,
        ln.description,
        ln.category,
        money_text(ln.quantity),
        money_text(ln.unit_price),
        money_text(ln.discount),
        money_text(ln.tax),
        ln.line_kind,
        ln.employee_id,
        ln.original_line_id,
        _bool_opt(ln.restock),
    )


def void_params(store: str, v: Void, batch_id: str) -> tuple[Any, ...]:
    return (store, v.id, utc_text(v.occurred_at), v.reason, v.effective_version, batch_id)


def trigger_params(t: TriggerEvent, batch_id: str) -> tuple[Any, ...]:
    return (
        t.event_id,
        t.store,
        t.sale_id,
        t.trigger,
        t.action,
        t.customer_id,
        money_text(t.total),
        t.business_date.isoformat(),
        t.due_date.isoformat(),
        utc_text(t.due_at),
        utc_text(t.created_at),
        batch_id,
    )


def trigger_from_row(r: Sequence[Any]) -> TriggerEvent:
    return TriggerEvent(
        event_id=r[0],
        store=r[1],
        sale_id=r[2],
        trigger=r[3],
        action=r[4],
        customer_id=r[5],
        total=Decimal(r[6]),
        business_date=date.fromisoformat(r[7]),
        due_date=date.fromisoformat(r[8]),
        due_at=datetime.fromisoformat(r[9]),
        created_at=datetime.fromisoformat(r[10]),
    )


def line_dict(r: Sequence[Any]) -> dict[str, Any]:
    line = SaleLine(
        line_id=r[0],
        sku=r[1],
        product_id=r[2],
        description=r[3],
        category=r[4],
        quantity=Decimal(r[5]),
        unit_price=Decimal(r[6]),
        discount=Decimal(r[7]),
        tax=Decimal(r[8]),
        line_kind=r[9],
        employee_id=r[10],
        original_line_id=r[11],
        restock=None if r[12] is None else bool(r[12]),
    )
    out: dict[str, Any] = msgspec.to_builtins(line)
    return out


def tender_dict(r: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(
        Tender(method=r[0], amount=Decimal(r[1]), reference=r[2], method_id=r[3])
    )
    return out
