"""Shared helpers of the Shopify adapter tests: signed deliveries, fixtures, the window's rules."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.adapter_helpers import fixture_json, make_ctx, sign, window_ctx
from worker.adapters.base import AdapterContext, Parsed
from worker.adapters.shopify import ShopifyAdapter
from worker.records import Sale
from worker.validation import (
    Failure,
    validate_sale,
)

SECRET = "shpss_current"
OLD_SECRET = "shpss_previous"
ORDER_ID = "6120458733912"
REFUND_ID = "refund:990011220001"
ADAPTER = ShopifyAdapter()


def ctx_for(body: bytes, topic: str, **kw: Any) -> AdapterContext:
    """A store-S1 context for one delivery, signed with `SECRET` (or `signing_secret`)."""
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(body, kw.pop("signing_secret", SECRET)),
        "X-Shopify-Webhook-Id": "3f0b8e52-6d1a-4c39-9a7e-1b2f61e0c4d7",
        "X-Shopify-Shop-Domain": "lumen-jewelers.myshopify.com",
    }
    headers.update(kw.pop("headers", {}))
    kw.setdefault("secret", SECRET)
    return make_ctx("shopify", headers=headers, **kw)


def push(doc: Any, topic: str, **kw: Any) -> Parsed:
    """Sign and parse one delivery (a JSON document or raw bytes)."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return ADAPTER.parse(body, ctx_for(body, topic, **kw))


def failures(s: Sale) -> list[Failure]:
    """What the window's validation says of this sale (originals count as known)."""
    return validate_sale(s, window_ctx(known=frozenset({s.original_id or ""})))


def assert_valid(s: Sale) -> None:
    """The sale passes every window rule as the adapter built it."""
    assert failures(s) == []


def order() -> dict[str, Any]:
    """A fresh copy of the orders/create fixture."""
    return copy.deepcopy(fixture_json("shopify", "orders_create.json"))


def refund() -> dict[str, Any]:
    """A fresh copy of the refunds/create fixture."""
    return copy.deepcopy(fixture_json("shopify", "refunds_create.json"))


def order_with_embedded_refund() -> dict[str, Any]:
    """The order after a refund: the refund embedded, one cloth fewer."""
    doc = order()
    doc["financial_status"] = "partially_refunded"
    doc["updated_at"] = "2026-03-21T11:05:43-05:00"
    doc["line_items"][1]["current_quantity"] = 1
    doc["current_total_price"] = "1231.34"
    doc["refunds"] = [refund()]
    return doc
