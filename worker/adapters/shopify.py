"""Shopify webhooks (REST-shaped JSON) into canonical records.

Order of work: verify the HMAC over the raw body (before any parsing), read the topic, then
decode. Invariants:

- **Signature.** `X-Shopify-Hmac-Sha256` (or the un-prefixed `Shopify-Hmac-Sha256` of the
  Events delivery) is base64(HMAC-SHA256(secret, raw body)). The store's `secret` and, during a
  rotation, its `previous_secret` are both tried, each with `hmac.compare_digest`. No secret
  configured, a missing, malformed or wrong header: `AuthError` naming the header.
- **Money** is shop money (`*_set.shop_money` when present, else the plain field, which is in
  shop currency), exact Decimal. Presentment currency is kept as `presentment_currency` only.
- **Orders** become a `Sale` keyed by the order id, versioned by `updated_at`, occurring at
  `processed_at`. Lines keep what was *sold*: `current_quantity` plus everything refunded from
  the line (edits that removed items shrink the line; refunds do not, because each refund is its
  own return sale). Test orders (`test: true`) are dropped and counted as `dropped["test"]`.
- **Refunds, no double counting (pitfall 8).** A refund becomes a return sale with id
  `refund:<refund id>`, built from the refund object alone, so `refunds/create` and the copy
  embedded in `orders/updated` (or `orders/paid`, `orders/edited`, ...) produce the same natural
  key. They differ only in version: the standalone one is versioned by the refund's
  `created_at`; the embedded one by the order's `updated_at` (never earlier) and also carries the
  order's customer and currency. The sink keeps one row per key and the highest version, so the
  refund counts once whichever arrives first, and a stale retry never wins.
- **Cancellation** (`orders/cancelled`, `cancelled_at` set, or `financial_status: voided`) emits
  the order's sale, a `Void` of it, and a `Void` of each refund embedded in the cancelled order
  (the cancellation's own refund would otherwise count as a return against a sale that no longer
  counts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.native import (
    JSON_TYPES,
    ZERO,
    Dropped,
    Obj,
    build,
    decode_json,
    divide,
    local_date,
    money,
    prorate,
    run_items,
    source_ref,
    tax_exclusive_unit,
)
from worker.config import RulePolicy
from worker.errors import AuthError, RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Record, Sale, Void, sum_decimals

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
ORDER_TOPICS = frozenset(
    {"orders/create", "orders/updated", "orders/paid", "orders/edited", "orders/cancelled"}
)
TOPICS = ORDER_TOPICS | {
    "orders/delete",
    "refunds/create",
    "customers/create",
    "customers/update",
    "customers/delete",
    "products/create",
    "products/update",
    "products/delete",
}
_CONSENT = {"subscribed": "opted_in", "not_subscribed": "opted_out", "unsubscribed": "opted_out"}
_WEB_SOURCES = frozenset({"web", "shopify_draft_order", "iphone", "android"})


def _header(ctx: AdapterContext, name: str) -> tuple[str, str] | None:
    """(header name as sent, value) for `x-shopify-<name>` or the un-prefixed `shopify-<name>`."""
    for prefix, shown in (("x-shopify-", "X-Shopify-"), ("shopify-", "Shopify-")):
        value = ctx.headers.get(prefix + name)
        if value is not None:
            return shown + "-".join(p.capitalize() for p in name.split("-")), value
    return None


def verify_signature(body: bytes, ctx: AdapterContext) -> None:
    """Check the webhook HMAC over the raw body against the current or previous secret."""
    found = _header(ctx, "hmac-sha256")
    field = found[0] if found else HMAC_HEADER
    secrets = [s for s in (ctx.store.secret, ctx.store.previous_secret) if s]
    if not secrets:
        raise AuthError(
            "no signing secret configured for this store (stores.secret): a signed source "
            "cannot be accepted unsigned",
            field=field,
        )
    if found is None:
        raise AuthError(f"missing {HMAC_HEADER}", field=field)
    try:
        given = base64.b64decode(found[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"{field} is not base64", field=field) from None
    ok = False
    for secret in secrets:  # try both, no early exit: timing does not reveal which matched
        digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        ok = hmac.compare_digest(digest, given) or ok
    if not ok:
        raise AuthError(f"{field} does not match the body", field=field)


class ShopifyAdapter:
    """`POST /v1/push/shopify/{store}`: one webhook delivery, topic from its header."""

    name = "shopify"
    signed = True
    rule_defaults: Mapping[str, RulePolicy] = MappingProxyType({})

    def parse(self, body: bytes, ctx: AdapterContext) -> Parsed:
        """Verify, then turn the delivery into records (one item: all or nothing)."""
        verify_signature(body, ctx)
        if ctx.content_type not in JSON_TYPES:
            raise UnsupportedMediaType(
                f"content type {ctx.content_type!r} not supported: Shopify sends application/json",
                field="Content-Type",
            )
        topic_header = _header(ctx, "topic")
        topic = (topic_header[1] if topic_header else ctx.topic or "").strip().lower()
        if not topic:
            raise RecordInvalid(f"missing {TOPIC_HEADER}", field=TOPIC_HEADER)
        if topic not in TOPICS:
            raise RecordInvalid(f"unsupported Shopify topic {topic[:64]!r}", field=TOPIC_HEADER)
        delivery = _header(ctx, "webhook-id")
        out = Parsed(delivery_id=delivery[1].strip() if delivery else None)
        doc = Obj.of(decode_json(body), "$")
        ref = source_ref("shopify", topic, out.delivery_id)
        run_items(out, [(0, lambda: _dispatch(topic, doc, ctx, ref))], single=True)
        return out


def _dispatch(topic: str, doc: Obj, ctx: AdapterContext, ref: str | None) -> list[Record] | Dropped:
    if topic in ORDER_TOPICS:
        return order_records(doc, ctx, ref, cancelled=topic == "orders/cancelled")
    if topic == "orders/delete":
        at = doc.instant("cancelled_at") or doc.instant("updated_at")
        return [
            build(
                Void,
                {
                    "id": doc.req_ident("id"),
                    "occurred_at": at[0] if at else ctx.received_at,
                    "reason": "deleted",
                    "source_ref": ref,
                },
                "void",
            )
        ]
    if topic == "refunds/create":
        refund = refund_sale(doc, ctx, ref)
        return refund if isinstance(refund, Dropped) else [refund]
    if topic.startswith("customers/"):
        return [customer_record(doc, ref, deleted=topic == "customers/delete")]
    return product_records(doc, ref, deleted=topic == "products/delete")


# -- orders ------------------------------------------------------------------------------


def _when(o: Obj, *keys: str) -> datetime | None:
    for key in keys:
        at = o.instant(key)
        if at is not None:
            if at[1]:
                raise RecordInvalid("Shopify times carry an offset; this one has none", o.at(key))
            return at[0]
    return None


def _channel(source_name: str | None) -> str:
    if source_name is None or source_name == "pos":
        return "pos"
    return "web" if source_name in _WEB_SOURCES else "other"


def order_records(
    o: Obj, ctx: AdapterContext, ref: str | None, *, cancelled: bool
) -> list[Record] | Dropped:
    """An order's sale, its embedded customer and refunds, and voids when cancelled."""
    if o.boolean("test"):
        return Dropped("test")
    order_id = o.req_ident("id")
    occurred = _when(o, "processed_at", "created_at")
    if occurred is None:
        raise RecordInvalid("missing required field `processed_at`", field=o.at("processed_at"))
    updated = _when(o, "updated_at")
    currency = o.text("currency", limit=8) or _shop_currency(o)
    if currency is None:
        raise RecordInvalid("missing required field `currency`", field=o.at("currency"))
    records: list[Record] = []
    customer_id: str | None = None
    customer = o.obj("customer")
    if customer is not None and customer.has("id"):  # null customer: a walk-in, no Customer
        record = customer_record(customer, ref, deleted=False)
        customer_id = record.id
        records.append(record)

    refunds = o.objs("refunds")
    refunded: dict[str, Decimal] = {}
    for r in refunds:
        for rli in r.objs("refund_line_items"):
            line_item_id = rli.ident("line_item_id")
            if line_item_id is not None:
                refunded[line_item_id] = refunded.get(line_item_id, ZERO) + rli.req_dec("quantity")

    taxes_included = bool(o.boolean("taxes_included"))
    lines = [
        line
        for li in o.objs("line_items")
        if (line := _order_line(li, refunded, taxes_included)) is not None
    ]
    shipping = ZERO
    shipping_tax = ZERO
    for sl in o.objs("shipping_lines"):
        price = money(sl, "price") or ZERO
        discounts = sum_decimals(
            money(d, "amount") or ZERO for d in sl.objs("discount_allocations")
        )
        tax = sum_decimals(money(t, "price") or ZERO for t in sl.objs("tax_lines"))
        shipping += price - discounts - (tax if taxes_included else ZERO)
        shipping_tax += tax
    tip = money(o, "total_tip_received") or ZERO
    subtotal = sum_decimals(ln["quantity"] * ln["unit_price"] - ln["discount"] for ln in lines)
    tax = sum_decimals(ln["tax"] for ln in lines) + shipping_tax
    total = subtotal + tax + shipping + tip
    sale = build(
        Sale,
        {
            "id": order_id,
            "occurred_at": occurred,
            "currency": currency,
            "lines": lines,
            "subtotal": subtotal,
            "tax": tax,
            "total": total,
            "shipping": shipping,
            "tip": tip,
            "tenders": _order_tenders(o, total),
            "customer_id": customer_id,
            "employee_id": o.ident("user_id"),
            "display_number": o.text("name", limit=256),
            "location_id": o.ident("location_id"),
            "channel": _channel(o.text("source_name", limit=256)),
            "presentment_currency": o.text("presentment_currency", limit=8),
            "business_date": local_date(occurred, ctx.zone),
            "updated_at": updated,
            "source_ref": ref,
        },
        f"order {order_id}",
    )
    records.append(sale)

    cancelled_at = _when(o, "cancelled_at")
    is_cancelled = cancelled or cancelled_at is not None or o.text("financial_status") == "voided"
    void_at = cancelled_at or updated or occurred
    order_lines = {li.ident("id"): li for li in o.objs("line_items")}
    for r in refunds:
        refund = refund_sale(
            r,
            ctx,
            ref,
            order_id=order_id,
            currency=currency,
            customer_id=customer_id,
            version_at=updated,
            order_lines=order_lines,
        )
        if isinstance(refund, Dropped):
            continue
        records.append(refund)
        if is_cancelled:
            records.append(_void(refund.id, void_at, "order cancelled", ref))
    if is_cancelled:
        records.append(
            _void(order_id, void_at, o.text("cancel_reason", limit=256) or "cancelled", ref)
        )
    return records


def _void(sale_id: str, at: datetime, reason: str, ref: str | None) -> Void:
    return build(
        Void, {"id": sale_id, "occurred_at": at, "reason": reason, "source_ref": ref}, "void"
    )


def _shop_currency(o: Obj) -> str | None:
    total_set = o.obj("total_price_set")
    shop = total_set.obj("shop_money") if total_set else None
    return shop.text("currency_code", limit=8) if shop else None


def _order_line(
    li: Obj, refunded: dict[str, Decimal], taxes_included: bool
) -> dict[str, Any] | None:
    quantity = li.req_dec("quantity")
    line_id = li.ident("id")
    current = li.dec("current_quantity")
    sold = quantity
    if current is not None:
        sold = min(quantity, current + refunded.get(line_id or "", ZERO))
    if sold <= 0:
        return None  # removed by an edit
    price = money(li, "price")
    if price is None:
        raise RecordInvalid("missing required field `price`", field=li.at("price"))
    allocations = li.objs("discount_allocations")
    if allocations:
        discount = sum_decimals(money(a, "amount") or ZERO for a in allocations)
    else:
        discount = money(li, "total_discount") or ZERO
    tax = sum_decimals(money(t, "price") or ZERO for t in li.objs("tax_lines"))
    if sold != quantity:
        discount = prorate(discount, sold, quantity)
        tax = prorate(tax, sold, quantity)
    unit = tax_exclusive_unit(sold, price, tax) if taxes_included else price
    return {
        "sku": li.text("sku", limit=256) or "",
        "quantity": sold,
        "unit_price": unit,
        "discount": discount,
        "tax": tax,
        "product_id": li.ident("variant_id") or li.ident("product_id"),
        "description": li.text("name") or li.text("title"),
        "line_id": line_id,
        "line_kind": "gift_card" if li.boolean("gift_card") else "item",
    }


def _order_tenders(o: Obj, total: Decimal) -> list[dict[str, Any]]:
    """Tenders from `transactions` when the body has them, else from the gateway names."""
    tenders = _transaction_tenders(o.objs("transactions"))
    if tenders:
        return tenders
    gateways = [
        g.strip() for g in o.get("payment_gateway_names") or [] if isinstance(g, str) and g.strip()
    ]
    if not gateways and total == 0:
        return []
    # The order body carries no split between several gateways: one tender for the total.
    return [{"method": "+".join(gateways)[:256] or "unknown", "amount": total}]


def _transaction_tenders(transactions: list[Obj]) -> list[dict[str, Any]]:
    tenders: list[dict[str, Any]] = []
    if transactions:
        captured_parents = {
            t.ident("parent_id")
            for t in transactions
            if t.text("kind") == "capture" and t.text("status") in (None, "success")
        }
        for t in transactions:
            kind = t.text("kind")
            if t.text("status") not in (None, "success") or kind not in (
                "sale",
                "capture",
                "authorization",
            ):
                continue
            if kind == "authorization" and t.ident("id") in captured_parents:
                continue
            amount = money(t, "amount")
            if amount is None:
                raise RecordInvalid("missing required field `amount`", field=t.at("amount"))
            tenders.append(
                {
                    "method": t.text("gateway", limit=256) or "unknown",
                    "amount": amount,
                    "reference": t.ident("id"),
                }
            )
    return tenders


# -- refunds -----------------------------------------------------------------------------


def refund_sale(
    r: Obj,
    ctx: AdapterContext,
    ref: str | None,
    *,
    order_id: str | None = None,
    currency: str | None = None,
    customer_id: str | None = None,
    version_at: datetime | None = None,
    order_lines: dict[str | None, Obj] | None = None,
) -> Sale | Dropped:
    """A refund as a return sale `refund:<id>`: negative lines, negative tenders.

    Embedded in an order, a refund line without its own `line_item` borrows the order's line
    (SKU, variant, name); the money always comes from the refund itself.
    """
    transactions = r.objs("transactions")
    if any(t.boolean("test") for t in transactions):
        return Dropped("test")
    refund_id = r.req_ident("id")
    original = r.ident("order_id") or order_id
    occurred = _when(r, "processed_at", "created_at")
    created = _when(r, "created_at") or occurred
    if occurred is None:
        raise RecordInvalid("missing required field `created_at`", field=r.at("created_at"))
    found_currency: str | None = None
    lines: list[dict[str, Any]] = []
    for rli in r.objs("refund_line_items"):
        found_currency = found_currency or _set_currency(rli, "subtotal")
        count = rli.req_dec("quantity")
        item = rli.obj("line_item") or (order_lines or {}).get(rli.ident("line_item_id"))
        subtotal = money(rli, "subtotal")
        if subtotal is None:
            raise RecordInvalid("missing required field `subtotal`", field=rli.at("subtotal"))
        price = money(item, "price") if item is not None else None
        # without a unit price, subtotal / quantity (Shopify's subtotal is after discounts)
        unit = price if price is not None else divide(subtotal, count)
        quantity = -count
        restock_type = rli.text("restock_type")
        lines.append(
            {
                "sku": (item.text("sku", limit=256) if item else None) or "",
                "quantity": quantity,
                "unit_price": unit,
                # net (quantity x unit - discount) must come to -subtotal exactly
                "discount": quantity * unit + subtotal,
                "tax": -(money(rli, "total_tax") or ZERO),
                "product_id": (item.ident("variant_id") or item.ident("product_id"))
                if item
                else None,
                "description": item.text("name") if item else None,
                "line_id": rli.ident("id"),
                "original_line_id": rli.ident("line_item_id"),
                "restock": None if restock_type is None else restock_type != "no_restock",
            }
        )
    for adj in r.objs("order_adjustments"):
        found_currency = found_currency or _set_currency(adj, "amount")
        # Shopify signs adjustments against the refund: a shipping refund is "-5.00", so the
        # return's total moves by +amount (more negative), a discrepancy the other way.
        lines.append(
            {
                "sku": "",
                "quantity": Decimal(1),
                "unit_price": money(adj, "amount") or ZERO,
                "tax": money(adj, "tax_amount") or ZERO,
                "line_kind": "fee",
                "description": adj.text("kind", limit=256) or adj.text("reason"),
                "line_id": adj.ident("id"),
            }
        )
    tenders: list[dict[str, Any]] = []
    for t in transactions:
        if t.text("kind") not in (None, "refund") or t.text("status") not in (None, "success"):
            continue
        amount = money(t, "amount")
        if amount is None:
            raise RecordInvalid("missing required field `amount`", field=t.at("amount"))
        found_currency = found_currency or t.text("currency", limit=8)
        tenders.append(
            {
                "method": t.text("gateway", limit=256) or "unknown",
                "amount": -amount,
                "reference": t.ident("id"),
            }
        )
    subtotal = sum_decimals(
        ln["quantity"] * ln["unit_price"] - ln.get("discount", ZERO) for ln in lines
    )
    tax = sum_decimals(ln["tax"] for ln in lines)
    if not lines and tenders:  # money refunded with nothing itemised: keep it visible as a fee
        amount = sum_decimals(t["amount"] for t in tenders)
        lines.append(
            {
                "sku": "",
                "quantity": Decimal(1),
                "unit_price": amount,
                "line_kind": "fee",
                "description": "refund",
            }
        )
        subtotal = amount
    currency = currency or found_currency
    if currency is None:
        raise RecordInvalid(
            "refund carries no currency (no *_set money, no transaction currency)",
            field=r.at("transactions"),
        )
    return build(
        Sale,
        {
            "id": f"refund:{refund_id}",
            "kind": "return",
            "original_id": original,
            "occurred_at": occurred,
            "currency": currency,
            "lines": lines,
            "subtotal": subtotal,
            "tax": tax,
            "total": subtotal + tax,
            "tenders": tenders,
            "customer_id": customer_id,
            "employee_id": r.ident("user_id"),
            "business_date": local_date(occurred, ctx.zone),
            "updated_at": max(version_at, created) if version_at and created else created,
            "source_ref": ref,
        },
        f"refund {refund_id}",
    )


def _set_currency(o: Obj, key: str) -> str | None:
    money_set = o.obj(f"{key}_set")
    shop = money_set.obj("shop_money") if money_set else None
    return shop.text("currency_code", limit=8) if shop else None


# -- customers and products --------------------------------------------------------------


def _consent(c: Obj, key: str, legacy: str | None = None) -> str | None:
    consent = c.obj(key)
    if consent is not None:
        return _CONSENT.get(consent.text("state") or "", "unknown")
    if legacy is not None:
        accepts = c.boolean(legacy)
        if accepts is not None:
            return "opted_in" if accepts else "opted_out"
    return None


def customer_record(c: Obj, ref: str | None, *, deleted: bool) -> Customer:
    """A Shopify customer (also the customer embedded in an order)."""
    customer_id = c.req_ident("id")
    address = c.obj("default_address")
    tags = [t.strip()[:256] for t in (c.text("tags") or "").split(",") if t.strip()]
    created = _when(c, "created_at")
    updated = _when(c, "updated_at")
    return build(
        Customer,
        {
            "id": customer_id,
            "first_name": c.text("first_name"),
            "last_name": c.text("last_name"),
            "email": c.text("email"),
            "phone": c.text("phone") or (address.text("phone") if address else None),
            "company": address.text("company") if address else None,
            "address": None
            if address is None
            else {
                "line1": address.text("address1"),
                "line2": address.text("address2"),
                "city": address.text("city", limit=256),
                "region": address.text("province_code", limit=256)
                or address.text("province", limit=256),
                "postal_code": address.text("zip", limit=256),
                "country_code": address.text("country_code", limit=256),
            },
            "marketing_email": _consent(c, "email_marketing_consent", "accepts_marketing"),
            "marketing_sms": _consent(c, "sms_marketing_consent"),
            "tags": tags,
            "notes": c.text("note"),
            "status": "deleted" if deleted else None,
            "created_at": created,
            "updated_at": updated,
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
    product_updated = _when(p, "updated_at")
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
        variant_updated = _when(v, "updated_at")
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
                    "created_at": _when(v, "created_at") or _when(p, "created_at"),
                    "updated_at": max(stamps) if stamps else None,
                    "source_ref": ref,
                },
                f"variant {variant_id}",
            )
        )
    return records
