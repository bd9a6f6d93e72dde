"""Sink rows as the read API shows them: money at the currency's minor unit, one format.

The sinks return exact decimal text, as the POS sent it ("73.00000", "63.47826"); every
figure the API shows goes through `worker.money.show` here, with the currency of the sale
(or product) it belongs to: "0.00" never "0", "1200" for JPY. Quantities are shown exactly,
without trailing zeros ("1", "2.5"). The exact canonical record stays under `record`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from worker.money import show, show_opt
from worker.sinks.base import SALE_LOG_COLUMNS, ReportRow

__all__ = [
    "SALE_MONEY",
    "product_json",
    "quantity",
    "report_rows",
    "sale_detail",
    "sale_log_item",
    "trigger_item",
]

# The sale-level figures, in the order the API lists them.
SALE_MONEY = ("subtotal", "discount", "tax", "shipping", "fees", "tip", "rounding", "total")
_LINE_MONEY = ("unit_price", "discount", "tax")

# Detail fields taken as they are from the stored sale: the Sales Log's identity and link
# columns (those before its figures, without `version`, shown with the sink state below),
# and two the log does not carry.
_DETAIL_FIELDS = (
    *(c for c in SALE_LOG_COLUMNS[: SALE_LOG_COLUMNS.index("subtotal")] if c != "version"),
    "presentment_currency",
    "tz_assumed",
)
_LINE_FIELDS = (
    "line_id",
    "sku",
    "product_id",
    "description",
    "category",
    "line_kind",
    "employee_id",
    "original_line_id",
    "restock",
)


def quantity(value: Decimal | str | int) -> str:
    """An exact quantity without trailing zeros or exponent: "1", "2.5", "100"."""
    amount = value if isinstance(value, Decimal) else Decimal(value)
    shown = amount.normalize()
    if shown.is_zero():
        shown = abs(shown)
    return f"{shown:f}"


def _money_fields(row: Mapping[str, Any], names: Iterable[str], currency: str) -> dict[str, Any]:
    return {name: show_opt(row.get(name), currency) for name in names}


def sale_log_item(row: Mapping[str, Any]) -> dict[str, Any]:
    """One Sales Log item: the sink's row with its figures at the currency's minor unit."""
    out = dict(row)
    out.update(_money_fields(row, SALE_MONEY, str(row["currency"])))
    return out


def _line_json(no: int, line: Mapping[str, Any], currency: str) -> dict[str, Any]:
    qty = Decimal(line["quantity"])
    out: dict[str, Any] = {"line_no": no, **{k: line.get(k) for k in _LINE_FIELDS}}
    out["quantity"] = quantity(qty)
    out.update(_money_fields(line, _LINE_MONEY, currency))
    # qty x unit_price - discount, computed exactly and shown once at the minor unit.
    out["net"] = show(qty * Decimal(line["unit_price"]) - Decimal(line["discount"]), currency)
    return out


def _tender_json(tender: Mapping[str, Any], currency: str) -> dict[str, Any]:
    return {
        "method": tender["method"],
        "method_id": tender.get("method_id"),
        "amount": show(tender["amount"], currency),
        "reference": tender.get("reference"),
    }


def _adjustment_json(adj: Mapping[str, Any], currency: str) -> dict[str, Any]:
    return {
        "kind": adj["kind"],
        "amount": show(adj["amount"], currency),
        "description": adj.get("description"),
        "code": adj.get("code"),
        "reference": adj.get("reference"),
    }


def sale_detail(got: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One committed sale as `GET /v1/stores/{store}/sales/{id}` shows it.

    `got` is the sink's `get_sale`; `source` the store's configured source. Lines and
    tenders come from the sink's tables, everything else the canonical model has (discount,
    rounding, adjustments, attributes, tenders_known, tax_included) from the stored record.
    """
    currency = str(got["currency"])
    out: dict[str, Any] = {k: got.get(k) for k in _DETAIL_FIELDS}
    out.update(_money_fields(got, SALE_MONEY, currency))
    # A record stored before a field existed has none: the model's default is what it meant.
    out["rounding"] = show(got.get("rounding") or "0", currency)
    out["tax_included"] = bool(got.get("tax_included", False))
    lines = got.get("lines") or []
    out["line_count"] = len(lines)
    out["lines"] = [_line_json(no, ln, currency) for no, ln in enumerate(lines, 1)]
    out["tenders_known"] = bool(got.get("tenders_known", True))
    out["tenders"] = [_tender_json(t, currency) for t in got.get("tenders") or []]
    out["adjustments"] = [_adjustment_json(a, currency) for a in got.get("adjustments") or []]
    out["attributes"] = dict(got.get("attributes") or {})
    out["warnings"] = list(got.get("warnings") or [])
    out["source"] = source
    for key in ("source_ref", "version", "voided", "voided_at", "committed_at", "batch_id"):
        out[key] = got.get(key)
    out["record"] = got.get("record")
    return out


def report_rows(rows: Iterable[ReportRow]) -> list[dict[str, Any]]:
    """Sales Report rows with gross, returns and net at each row's currency."""
    return [
        {
            "date": r.date.isoformat(),
            "currency": r.currency,
            "count": r.count,
            "gross": show(r.gross, r.currency),
            "returns": show(r.returns, r.currency),
            "returns_count": r.returns_count,
            "net": show(r.net, r.currency),
            "voided": r.voided,
        }
        for r in rows
    ]


def trigger_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A trigger event with its total at the sale's currency (2 places when unknown)."""
    out = dict(item)
    out["total"] = show(item["total"], item.get("currency"))
    return out


def product_json(got: Mapping[str, Any]) -> dict[str, Any]:
    """A stored product with `price` at its currency; the exact record under `record`."""
    out = dict(got)
    record = {k: v for k, v in got.items() if k != "version"}
    out["price"] = show_opt(got.get("price"), got.get("currency"))
    out["record"] = record
    return out
