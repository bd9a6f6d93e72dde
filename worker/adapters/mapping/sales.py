"""One sale from the rows that share its `sale.id`: lines, tenders, figures, attributes.

Figures are the export's own: an order-level column that is mapped (subtotal, discount,
tax, shipping, fees, tip, rounding, total) is taken as the file states it and the lines
are checked against it at the window. A figure the export does not state is the sum of
the lines (subtotal = Σ quantity × unit price − discount; tax = Σ line tax; discount =
Σ line discount when a line discount column is mapped) and the total is subtotal + tax
(unless tax is included) + shipping + fees + tip + rounding.

Tenders come only from payment columns. A sale whose export has no payment column (or
whose rows all leave it absent) has `tenders_known = false`: no tender is made up.

Unmapped columns: one whose cell is the same on every row of the sale is an order-level
attribute (`header`); any other is per row, kept as `lines[N].<header>` on the row's line
(N from 0) or `rows[N].<header>` for a row with no line (N = its position in the sale),
unless the mapping says `line_attributes = "drop"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from worker.adapters.base import AdapterContext
from worker.adapters.mapping.spec import _ENUMS, Field, mapped_columns
from worker.adapters.mapping.values import (
    Reader,
    Row,
    bounded,
    cell_text,
    leftovers,
    lookup,
    version_fields,
)
from worker.adapters.native import (
    ZERO,
    Dropped,
    build,
    default_currency,
    divide,
    sale_kind,
    source_ref,
)
from worker.errors import RecordInvalid
from worker.records import Record, Sale, Void, sum_decimals

_LINE_CELLS = ("sku", "product_id", "quantity", "unit_price", "amount", "description")


def first(reader: Reader, rows: list[Row], f: Field | None, read: Any) -> Any:
    """The first non-empty value of a header field across a sale's rows."""
    if f is None:
        return None
    for _, row in rows:
        value = read(row, f)
        if value is not None:
            return value
    return None


def build_sale(
    reader: Reader, sale_id: str, rows: list[Row], ref: str, ctx: AdapterContext
) -> list[Record] | Dropped:
    """The sale (or its void, or a drop for an open/suspended one) of a group of rows."""
    spec = reader.spec
    s, ln = spec.sale, spec.line
    status = first(
        reader, rows, s.get("status"), lambda r, f: reader.enum(r, f, _ENUMS["sale.status"])
    )
    when = first(reader, rows, s.get("occurred_at"), reader.when)
    if when is None:
        column = s["occurred_at"].column or "sale.occurred_at"
        raise RecordInvalid(f"sale {sale_id} has no time in `{column}`", field=column)
    occurred, assumed, business = when
    sale_ref = source_ref(ref, ctx.filename, f"row{rows[0][0]}")
    if status == "open":
        return Dropped("open")
    if status == "voided":
        return [
            build(
                Void,
                {
                    "id": sale_id,
                    "occurred_at": occurred,
                    "reason": "voided",
                    "source_ref": sale_ref,
                },
                f"void {sale_id}",
            )
        ]
    lines: list[dict[str, Any]] = []
    line_rows: list[int | None] = []  # per row: its line's position, or None
    for _, row in rows:
        if any(reader.raw(row, ln.get(k))[0] is not None for k in _LINE_CELLS if k in ln):
            line_rows.append(len(lines))
            lines.append(_line(reader, row))
        else:
            line_rows.append(None)
    tenders, tenders_known = _tenders(reader, rows)

    def header(name: str) -> Decimal | None:
        return first(reader, rows, s.get(name), reader.decimal)  # type: ignore[no-any-return]

    subtotal = header("subtotal")
    if subtotal is None:
        subtotal = sum_decimals(x["quantity"] * x["unit_price"] - x["discount"] for x in lines)
    tax = header("tax")
    if tax is None:
        tax = sum_decimals(x["tax"] for x in lines)
    discount = header("discount")
    line_discount = ln.get("discount")
    if discount is None and line_discount is not None and _stated(reader, rows, line_discount):
        discount = sum_decimals(x["discount"] for x in lines)
    shipping, fees, tip, rounding = (
        header(n) or ZERO for n in ("shipping", "fees", "tip", "rounding")
    )
    included = first(reader, rows, s.get("tax_included"), reader.boolean) is True
    total = header("total")
    if total is None:
        total = subtotal + (ZERO if included else tax) + shipping + fees + tip + rounding
    currency = first(reader, rows, s.get("currency"), lambda r, f: reader.text(r, f, limit=8))
    kind = first(reader, rows, s.get("kind"), lambda r, f: reader.enum(r, f, _ENUMS["sale.kind"]))
    fields: dict[str, Any] = {
        "id": sale_id,
        "kind": kind or sale_kind(x["quantity"] for x in lines),
        "occurred_at": occurred,
        "tz_assumed": assumed,
        "business_date": business,
        "currency": (currency or "").upper() or spec.currency or default_currency(ctx),
        "lines": lines,
        "subtotal": subtotal,
        "discount": discount,
        "tax": tax,
        "tax_included": included,
        "shipping": shipping,
        "fees": fees,
        "tip": tip,
        "rounding": rounding,
        "total": total,
        "tenders": tenders,
        "tenders_known": tenders_known,
        "attributes": _attributes(reader, rows, line_rows),
        **{
            name: first(reader, rows, s.get(name), reader.ident)
            for name in ("customer_id", "employee_id", "original_id", "location_id", "register_id")
        },
        "display_number": first(
            reader, rows, s.get("display_number"), lambda r, f: reader.text(r, f, 256)
        ),
        "channel": first(
            reader, rows, s.get("channel"), lambda r, f: reader.enum(r, f, _ENUMS["sale.channel"])
        ),
        **version_fields(reader, rows[0][1], s, ctx),
        "source_ref": sale_ref,
    }
    return [build(Sale, fields, f"sale {sale_id}")]


def _tenders(reader: Reader, rows: list[Row]) -> tuple[list[dict[str, Any]], bool]:
    """The payments of a sale's rows, and whether the export carries payments at all."""
    spec, tn = reader.spec, reader.spec.tender
    amount_field = tn.get("amount")
    if amount_field is None:
        return [], False
    known = _stated(reader, rows, amount_field)
    tenders: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for _, row in rows:
        amount = reader.decimal(row, amount_field)
        if amount is None or (spec.tenders == "first" and tenders):
            continue
        tender = {
            "method": reader.text(row, tn.get("method"), limit=256) or "unspecified",
            "method_id": reader.text(row, tn.get("method_id"), limit=256),
            "amount": amount,
            "reference": reader.text(row, tn.get("reference"), limit=256),
        }
        signature = (tender["method"], tender["method_id"], amount, tender["reference"])
        if spec.tenders == "distinct" and signature in seen:
            continue
        seen.add(signature)
        tenders.append(tender)
    return tenders, known or bool(tenders)


def _stated(reader: Reader, rows: list[Row], f: Field) -> bool:
    """The export has this field for the sale (CSV: the column exists; JSON: a non-null value)."""
    if f.value is not None:
        return True
    column = f.column or ""
    if not reader.json:
        return any(column in row for _, row in rows)
    return any(lookup(row, column, True) is not None for _, row in rows)


def _attributes(reader: Reader, rows: list[Row], line_rows: list[int | None]) -> dict[str, str]:
    """Order-level leftovers as `header`, per-row ones as `lines[N].header` / `rows[N].header`."""
    mapped = mapped_columns(reader.spec, "sale")
    cells = [leftovers(row, mapped, reader.json) for _, row in rows]
    keys: dict[str, None] = {}
    for c in cells:
        keys.update(dict.fromkeys(c))
    out: dict[str, str] = {}
    per_row: list[str] = []
    for key in keys:
        values = {c.get(key) for c in cells}
        if len(values) == 1 and None not in values:
            out[key] = cells[0][key]
        else:
            per_row.append(key)
    if reader.spec.line_attributes == "keep":
        for position, (c, line_no) in enumerate(zip(cells, line_rows, strict=True)):
            where = f"lines[{line_no}]" if line_no is not None else f"rows[{position}]"
            for key in per_row:
                text = cell_text(c.get(key))
                if text is not None:
                    out[f"{where}.{key}"] = text
    return bounded(out)


def _line(reader: Reader, row: Mapping[str, Any]) -> dict[str, Any]:
    ln = reader.spec.line
    quantity = reader.decimal(row, ln.get("quantity"))
    quantity = Decimal(1) if quantity is None else quantity
    unit = reader.decimal(row, ln.get("unit_price"))
    amount = reader.decimal(row, ln.get("amount"))
    discount = reader.decimal(row, ln.get("discount")) or ZERO
    if unit is None:
        if amount is None:
            column = (
                ln.get("unit_price") or ln.get("amount") or Field(column="line.unit_price")
            ).column
            raise RecordInvalid(
                "line has neither a unit price nor an amount", field=column or "line.unit_price"
            )
        if (amount < 0 < quantity) or (quantity < 0 < amount):  # signed amount, unsigned quantity
            quantity = -quantity
        if quantity == 0:
            quantity = Decimal(-1) if amount < 0 else Decimal(1)
        unit = divide(amount, quantity)
        discount += quantity * unit - amount  # rounding of the unit price, exact net
    return {
        "sku": reader.text(row, ln.get("sku"), limit=256),
        "quantity": quantity,
        "unit_price": unit,
        "discount": discount,
        "tax": reader.decimal(row, ln.get("tax")) or ZERO,
        "product_id": reader.ident(row, ln.get("product_id")),
        "description": reader.text(row, ln.get("description")),
        "category": reader.text(row, ln.get("category")),
        "line_id": reader.ident(row, ln.get("line_id")),
        "line_kind": reader.enum(row, ln.get("line_kind"), _ENUMS["line.line_kind"]),
        "employee_id": reader.ident(row, ln.get("employee_id")),
        "original_line_id": reader.ident(row, ln.get("original_line_id")),
        "restock": reader.boolean(row, ln.get("restock")),
    }
