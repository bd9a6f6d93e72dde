"""Shopify customers and products, and the `attributes` every Shopify record keeps.

- **Attributes.** Every field of a Shopify object that the canonical record has no slot for is
  kept under its own name: scalars as text (`true`/`false` for booleans), small nested values
  as compact JSON text. Nulls, empty strings and empty arrays say nothing and are left out; a
  nested value whose JSON passes 4096 characters is left out rather than cut (a cut JSON text
  would be a lie); strings are clipped at 4096 like every other text field.
- **Consent** is three-valued and only what Shopify says: `email_marketing_consent.state` /
  `sms_marketing_consent.state` `subscribed` is `opted_in`, `unsubscribed` is `opted_out`,
  anything else (`not_subscribed`, `pending`, `redacted`, `invalid`) is `unknown`. The legacy
  `accepts_marketing: true` is an opt-in; `accepts_marketing: false` only says "not
  subscribed", which is `unknown` (never `opted_out`).
- **Addresses.** `default_address` is the primary `address` (kind `default`); every entry of
  `addresses[]` is kept in `addresses`, kind `default` for the one Shopify flags `default`,
  else `other` (Shopify does not type a customer's saved addresses). The customer embedded in
  an order also keeps that order's `billing_address` and `shipping_address` (kinds `billing`,
  `shipping`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from worker.adapters.native import Obj, build
from worker.errors import RecordInvalid
from worker.records import Customer, Product, Record

_CONSENT = {"subscribed": "opted_in", "unsubscribed": "opted_out"}
_MAX_ATTRIBUTES = 256
_MAX_TEXT = 4096
# Numbers were decoded as exact Decimals: written back as the JSON numbers they were.
_JSON = msgspec.json.Encoder(decimal_format="number")

# Customer fields the canonical Customer maps; the rest go to its attributes.
_CUSTOMER_MAPPED = frozenset(
    {
        "id",
        "first_name",
        "last_name",
        "email",
        "phone",
        "tags",
        "note",
        "created_at",
        "updated_at",
        "default_address",
        "addresses",
    }
)


def when(o: Obj, *keys: str) -> datetime | None:
    """The first of `keys` present, as UTC; Shopify times always carry an offset."""
    for key in keys:
        at = o.instant(key)
        if at is not None:
            if at[1]:
                raise RecordInvalid("Shopify times carry an offset; this one has none", o.at(key))
            return at[0]
    return None


def attribute_text(value: Any) -> str | None:
    """A JSON value as attribute text, or None when it says nothing or cannot be kept whole."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, int | float | Decimal):
        return str(value)
    text = _JSON.encode(value).decode()
    return text if len(text) <= _MAX_TEXT else None


def attributes_of(
    o: Obj, mapped: frozenset[str], extra: Iterable[tuple[str, Any]] = ()
) -> dict[str, str]:
    """Every field of `o` not in `mapped` (plus `extra` pairs), as attribute text."""
    out: dict[str, str] = {}
    fields = [(k, v) for k, v in o.data.items() if k not in mapped]
    for key, value in [*fields, *extra]:
        if len(key) > 256 or len(out) >= _MAX_ATTRIBUTES:
            continue
        text = attribute_text(value)
        if text is not None:
            out[key] = text
    return out


def _consent(c: Obj, key: str, legacy: str | None = None) -> str | None:
    consent = c.obj(key)
    if consent is not None:
        return _CONSENT.get(consent.text("state") or "", "unknown")
    if legacy is not None and c.boolean(legacy):
        return "opted_in"  # `false` means "not subscribed": unknown, the record's default
    return None


def _address(a: Obj, kind: str) -> dict[str, Any]:
    return {
        "line1": a.text("address1"),
        "line2": a.text("address2"),
        "city": a.text("city", limit=256),
        "region": a.text("province_code", limit=256) or a.text("province", limit=256),
        "postal_code": a.text("zip", limit=256),
        "country_code": a.text("country_code", limit=256),
        "kind": kind,
    }


def customer_record(
    c: Obj, ref: str | None, *, deleted: bool, order_addresses: Iterable[tuple[str, Obj]] = ()
) -> Customer:
    """A Shopify customer (also the customer embedded in an order, with that order's
    `billing_address`/`shipping_address` as `order_addresses`, kinds `billing`/`shipping`)."""
    customer_id = c.req_ident("id")
    primary = c.obj("default_address")
    listed = c.objs("addresses")
    addresses = [_address(a, "default" if a.boolean("default") else "other") for a in listed]
    if primary is not None and not listed:
        addresses = [_address(primary, "default")]
    for kind, a in order_addresses:
        addresses.append(_address(a, kind))
    if primary is None:
        primary = next((a for a in listed if a.boolean("default")), None)
    tags = [t.strip()[:256] for t in (c.text("tags") or "").split(",") if t.strip()]
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("first_name"),
            "last_name": c.text("last_name"),
            "email": c.text("email"),
            "phone": c.text("phone") or (primary.text("phone") if primary else None),
            "company": primary.text("company") if primary else None,
            "address": None if primary is None else _address(primary, "default"),
            "addresses": addresses[:20],
            "marketing_email": _consent(c, "email_marketing_consent", "accepts_marketing"),
            "marketing_sms": _consent(c, "sms_marketing_consent"),
            "tags": tags,
            "notes": c.text("note"),
            "status": "deleted" if deleted else None,
            "attributes": attributes_of(c, _CUSTOMER_MAPPED),
            "created_at": when(c, "created_at"),
            "updated_at": when(c, "updated_at"),
            "source_ref": ref,
        },
        f"customer {customer_id}",
    )


def product_records(p: Obj, ref: str | None, *, deleted: bool) -> list[Record]:
    """One Product per variant (the canonical product is SKU/variant level).

    `products/delete` carries only the product id: each variant listed (if any) is deleted,
    else a single record keyed by the product id says the product is gone.
    """
    product_id = p.req_ident("id")
    variants = p.objs("variants")
    if deleted and not variants:
        return [
            build(
                Product,
                {"id": product_id, "status": "deleted", "source_ref": ref},
                f"product {product_id}",
            )
        ]
    status = {"active": "active", "archived": "archived", "draft": "archived"}.get(
        p.text("status") or "active", "active"
    )
    options = [o.text("name", limit=256) for o in p.objs("options")]
    title = p.text("title")
    product_updated = when(p, "updated_at")
    records: list[Record] = []
    for v in variants:
        variant_id = v.req_ident("id")
        variant_title = v.text("title")
        attributes: dict[str, str] = {}
        for i, name in enumerate(options[:3], start=1):
            value = v.text(f"option{i}")
            if name and value:
                attributes[name] = value
        if v.has("compare_at_price"):
            attributes["compare_at_price"] = str(v.req_dec("compare_at_price"))
        variant_updated = when(v, "updated_at")
        stamps = [t for t in (product_updated, variant_updated) if t is not None]
        name = (
            title
            if not variant_title or variant_title == "Default Title"
            else f"{title} - {variant_title}"
        )
        records.append(
            build(
                Product,
                {
                    "id": variant_id,
                    "parent_id": product_id,
                    "sku": v.text("sku", limit=256),
                    "barcode": v.text("barcode", limit=256),
                    "name": name,
                    "category": p.text("product_type"),
                    "vendor": p.text("vendor"),
                    "description": p.text("body_html"),
                    "price": v.dec("price"),
                    "status": "deleted" if deleted else status,
                    "attributes": attributes,
                    "created_at": when(v, "created_at") or when(p, "created_at"),
                    "updated_at": max(stamps) if stamps else None,
                    "source_ref": ref,
                },
                f"variant {variant_id}",
            )
        )
    return records
