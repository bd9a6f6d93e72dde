"""Deterministic record builders for tests and benchmarks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.records import Sale, SaleLine, Tender

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def sale_dict(
    sid: str, *, lines: int = 2, at: datetime = T0, version: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A consistent canonical sale as a JSON-able dict (decimal strings)."""
    ls = []
    subtotal = Decimal(0)
    for i in range(lines):
        price = Decimal(f"{19 + i * 10}.99")
        qty = Decimal(1 + i % 2)
        ls.append(
            {
                "sku": f"SKU-{i:04d}",
                "quantity": str(qty),
                "unit_price": str(price),
                "category": "rings",
            }
        )
        subtotal += qty * price
    tax = (subtotal * Decimal("0.08")).quantize(Decimal("0.01"))
    total = subtotal + tax
    d: dict[str, Any] = {
        "type": "sale",
        "id": sid,
        "occurred_at": at.isoformat(),
        "currency": "USD",
        "lines": ls,
        "subtotal": str(subtotal),
        "tax": str(tax),
        "total": str(total),
        "tenders": [{"method": "card", "amount": str(total)}],
    }
    if version is not None:
        d["version"] = version
    d.update(extra)
    return d


def one_line_sale(
    sid: str,
    at: str,
    *,
    sku: str = "A",
    quantity: str = "1",
    price: str = "10.00",
    tax: str = "0",
    currency: str = "USD",
    method: str = "Cash",
    **extra: Any,
) -> dict[str, Any]:
    """A sale of one line (`quantity` at `price`) plus `tax`, paid in full by one tender, as a
    POS's JSON states it (`at` its occurred_at text): the smallest sale whose figures agree."""
    subtotal = Decimal(quantity) * Decimal(price)
    total = str(subtotal + Decimal(tax))
    return {
        "type": "sale",
        "id": sid,
        "occurred_at": at,
        "currency": currency,
        "lines": [{"sku": sku, "quantity": quantity, "unit_price": price}],
        "subtotal": str(subtotal),
        "tax": tax,
        "total": total,
        "tenders": [{"method": method, "amount": total}],
        **extra,
    }


def make_sale(
    sid: str, *, version: int | None = None, at: datetime = T0, origin: str = "pos", **extra: Any
) -> Sale:
    """A consistent canonical Sale."""
    line = SaleLine(sku="SKU-1", quantity=Decimal(1), unit_price=Decimal("10.00"), category="rings")
    return Sale(
        id=sid,
        occurred_at=at,
        currency="USD",
        lines=[line],
        subtotal=Decimal("10.00"),
        tax=Decimal("0.80"),
        total=Decimal("10.80"),
        tenders=[Tender(method="card", amount=Decimal("10.80"))],
        version=version,
        origin=origin,  # type: ignore[arg-type]
        **extra,
    )


def later(minutes: int) -> datetime:
    """T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)
