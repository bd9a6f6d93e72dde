"""Shopify webhooks (REST-shaped JSON) into canonical records.

Order of work: verify the HMAC over the raw body (before any parsing), read the topic, decode,
check that the body's shape fits its topic, then map. Invariants:

- **Signature.** `X-Shopify-Hmac-Sha256` (or the un-prefixed `Shopify-Hmac-Sha256` of the
  Events delivery) is base64(HMAC-SHA256(secret, raw body)). The store's `secret` and, during a
  rotation, its `previous_secret` are both tried, each with `hmac.compare_digest`. No secret
  configured, a missing, malformed or wrong header: `AuthError` naming the header.
- **Topic and shape (issue 12.5).** The HMAC covers the body only, not the topic header, so a
  captured signed `orders/create` body re-sent as `orders/delete` would void the sale, and as
  `customers/update` would make a customer of an order. Every topic therefore names the shape
  its body must have, and a body of another shape is a 400 naming `X-Shopify-Topic`:
  an order has `line_items` and is not a refund (under `orders/cancelled` it also has
  `cancelled_at`, or a replayed `orders/create` would void the sale); a refund has `order_id` and
  `refund_line_items`; a customer and a product carry nothing order- or refund-like (a
  product also needs `variants` or `title`); `orders/delete` and `products/delete` must be a
  bare delete notice (`{"id": ...}` and nothing else).
- **Money** is shop money (`*_set.shop_money` when present, else the plain field, which is in
  shop currency), exact Decimal. Presentment currency is kept as `presentment_currency` only.
- **Orders, refunds** (`worker.adapters.shopify_orders`): Shopify's own figures, lines and
  order-level adjustments, tenders only from transactions, refunds as return sales without
  double counting, cancellations as voids. Test orders (`test: true`) are dropped and counted
  as `dropped["test"]`.
- **Customers, products** (`worker.adapters.shopify_entities`): consent as Shopify states it,
  every address, unmapped fields in `attributes`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from types import MappingProxyType

from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.native import (
    JSON_TYPES,
    Dropped,
    Obj,
    build,
    decode_json,
    run_items,
    source_ref,
)
from worker.adapters.shopify_entities import customer_record, product_records
from worker.adapters.shopify_orders import order_records, refund_sale
from worker.config import RulePolicy
from worker.errors import AuthError, RecordInvalid, UnsupportedMediaType
from worker.records import Record, Void

__all__ = ["HMAC_HEADER", "ORDER_TOPICS", "TOPICS", "TOPIC_HEADER", "ShopifyAdapter"]

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
ORDER_TOPICS = frozenset(
    {"orders/create", "orders/updated", "orders/paid", "orders/edited", "orders/cancelled"}
)
DELETE_NOTICES = frozenset({"orders/delete", "products/delete"})
TOPICS = (
    ORDER_TOPICS
    | DELETE_NOTICES
    | {
        "refunds/create",
        "customers/create",
        "customers/update",
        "customers/delete",
        "products/create",
        "products/update",
    }
)
# Keys only an order (or an order's copy of its money) carries at the top level.
_ORDER_KEYS = frozenset(
    {
        "line_items",
        "total_price",
        "subtotal_price",
        "financial_status",
        "order_number",
        "shipping_lines",
        "total_price_set",
    }
)
_REFUND_KEYS = frozenset({"refund_line_items", "order_id", "order_adjustments"})
_PRODUCT_KEYS = frozenset({"variants", "options", "product_type", "handle"})


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


def _misfit(topic: str, what: str) -> RecordInvalid:
    return RecordInvalid(f"the body is {what}, which does not fit topic {topic}", TOPIC_HEADER)


def check_shape(topic: str, doc: Obj) -> None:
    """Refuse a body whose shape does not fit its topic (the HMAC does not cover the topic)."""
    keys = {k for k, v in doc.data.items() if v is not None}
    order_like = keys & _ORDER_KEYS
    refund_like = keys & _REFUND_KEYS
    if topic in DELETE_NOTICES:
        if set(doc.data) != {"id"}:
            raise _misfit(topic, 'not a bare delete notice {"id": ...}')
        return
    if topic in ORDER_TOPICS:
        if "line_items" not in keys:
            raise _misfit(topic, "not an order (no line_items)")
        if refund_like:
            raise _misfit(topic, "refund-shaped (order_id / refund_line_items)")
        if topic == "orders/cancelled" and "cancelled_at" not in keys:
            # Shopify's orders/cancelled body is the order as cancelled: a captured order
            # without `cancelled_at` re-sent under this topic would void the sale.
            raise _misfit(topic, "not a cancelled order (no cancelled_at)")
        return
    if topic == "refunds/create":
        if not {"order_id", "refund_line_items"} <= set(doc.data):
            raise _misfit(topic, "not a refund (a refund has order_id and refund_line_items)")
        if order_like:
            raise _misfit(topic, "order-shaped (line_items / order totals)")
        return
    if order_like or refund_like:
        raise _misfit(topic, "order- or refund-shaped")
    if topic.startswith("customers/"):
        if keys & _PRODUCT_KEYS:
            raise _misfit(topic, "product-shaped (variants / options)")
        return
    if not keys & (_PRODUCT_KEYS | {"title"}):
        raise _misfit(topic, "not a product (no variants, no title)")


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
        check_shape(topic, doc)
        ref = source_ref("shopify", topic, out.delivery_id)
        run_items(out, [(0, lambda: _dispatch(topic, doc, ctx, ref))], single=True)
        return out


def _dispatch(topic: str, doc: Obj, ctx: AdapterContext, ref: str | None) -> list[Record] | Dropped:
    if topic in ORDER_TOPICS:
        return order_records(doc, ctx, ref, cancelled=topic == "orders/cancelled")
    if topic == "orders/delete":
        fields = {"id": doc.req_ident("id"), "occurred_at": ctx.received_at, "reason": "deleted"}
        return [build(Void, {**fields, "source_ref": ref}, "void")]
    if topic == "refunds/create":
        refund = refund_sale(doc, ctx, ref)
        return refund if isinstance(refund, Dropped) else [refund]
    if topic.startswith("customers/"):
        return [customer_record(doc, ref, deleted=topic == "customers/delete")]
    return product_records(doc, ref, deleted=topic == "products/delete")
