"""Shared helpers for the adapter tests: contexts, fixtures, signatures, record lookups."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from worker.adapters.base import AdapterContext, Parsed
from worker.config import StoreConfig
from worker.records import Customer, Product, Record, Sale, Void
from worker.validation import ValidationContext

FIXTURES = Path(__file__).parent / "fixtures"
RECEIVED_AT = datetime(2026, 3, 22, 12, 0, 0, tzinfo=UTC)
ALLOWED_ERRORS = ("RecordInvalid", "AuthError", "UnsupportedMediaType")
# The first customer of tests/fixtures/kwi/customers.csv (100234): each documented column with
# no canonical field, under its own header, its cell's text as the file writes it.
KWI_AVA_ATTRIBUTES = {
    "Home Store": "012",
    "Store Purchased": "012",
    "Sales Associate Name": "Jo Park",
    "Last Purchase Date": "03/20/26",
    "Total Net Sales": "$1,234.50",
    "Mail Opt-In": "N",
}


def fixture(source: str, name: str) -> bytes:
    """Raw bytes of tests/fixtures/<source>/<name>."""
    return (FIXTURES / source / name).read_bytes()


def fixture_json(source: str, name: str) -> Any:
    """A JSON fixture, decoded (floats kept as text-exact via str round-trip not needed here)."""
    return json.loads(fixture(source, name))


def make_ctx(
    source: str,
    *,
    zone: str = "America/Chicago",
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    secret: str = "",
    previous_secret: str = "",
    filename: str | None = None,
    topic: str | None = None,
    mapping: Mapping[str, Any] | None = None,
    brand: str | None = None,
    received_at: datetime = RECEIVED_AT,
) -> AdapterContext:
    """An AdapterContext for store S1 of the given source."""
    store = StoreConfig(
        id="S1",
        source=source,
        timezone=zone,
        secret=secret,
        previous_secret=previous_secret,
        brand=brand,
    )
    return AdapterContext(
        store=store,
        zone=ZoneInfo(zone),
        headers={k.lower(): v for k, v in (headers or {}).items()},
        content_type=content_type,
        received_at=received_at,
        topic=topic,
        filename=filename,
        mapping=mapping,
    )


def window_ctx(hold_windows: int = 0, known: frozenset[str] = frozenset()) -> ValidationContext:
    """The window's own validation context for store S1 (no sink: nothing known unless named)."""
    return ValidationContext(
        store="S1",
        zone=ZoneInfo("America/Chicago"),
        now=RECEIVED_AT,
        existing_customers=frozenset(),
        existing_sales=known,
        pending_sale_ids=frozenset(),
        hold_windows=hold_windows,
    )


def sign(body: bytes, secret: str) -> str:
    """Shopify's signature: base64(HMAC-SHA256(secret, body))."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def by_type(parsed: Parsed) -> dict[str, list[Record]]:
    """Records grouped by type name."""
    out: dict[str, list[Record]] = {"customer": [], "product": [], "sale": [], "void": []}
    for r in parsed.records:
        key = {Customer: "customer", Product: "product", Sale: "sale", Void: "void"}[type(r)]
        out[key].append(r)
    return out


def sale(parsed: Parsed, sale_id: str) -> Sale:
    """The one sale with this id."""
    found = [r for r in parsed.records if isinstance(r, Sale) and r.id == sale_id]
    assert len(found) == 1, f"expected one sale {sale_id}, got {len(found)}"
    return found[0]


def line_net_sum(s: Sale) -> Any:
    """Σ (quantity x unit price - discount) of a sale's lines."""
    total = sum((ln.net for ln in s.lines), start=type(s.subtotal)(0))
    return total


def assert_consistent(s: Sale) -> None:
    """The window validator's arithmetic: lines = subtotal, subtotal + tax (+...) = total, tenders = total."""
    assert line_net_sum(s) == s.subtotal, (line_net_sum(s), s.subtotal)
    assert s.subtotal + s.tax + s.shipping + s.fees + s.tip == s.total
    if s.tenders:
        assert sum((t.amount for t in s.tenders), start=type(s.total)(0)) == s.total
