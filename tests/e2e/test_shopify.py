"""Shopify end to end: signed webhooks over HTTP to the real server, the window on the fake
clock, then the Sales Log, the sale detail, the report and the quarantine, every figure
compared with the fixture's own figure (issue 9) — and the topic swap refused (issue 12.5).
"""

from __future__ import annotations

import itertools
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.adapter_helpers import fixture, sign
from tests.appserver import Harness
from tests.e2e import harness as e2e

SECRET = "shpss_e2e_secret"
DAY = date(2026, 3, 14)
_DELIVERY = itertools.count(1)

# (fixture, topic) of every self-consistent sample; each is one sale in the window.
VALID = [
    ("orders_create_order_discount.json", "orders/create"),
    ("orders_create_order_tax.json", "orders/create"),
    ("orders_paid_transactions.json", "orders/paid"),
    ("orders_create_taxes_included.json", "orders/create"),
    ("refunds_create_legacy.json", "refunds/create"),
]


def doc_of(name: str) -> dict[str, Any]:
    """A fixture as JSON (figures read from it, never typed again here)."""
    out: dict[str, Any] = json.loads(fixture("shopify", name))
    return out


def shop(doc: dict[str, Any], key: str) -> str:
    """The shop-money figure of `key` (`*_set.shop_money` where it exists, as the adapter)."""
    money_set = doc.get(f"{key}_set")
    if money_set:
        amount: str = money_set["shop_money"]["amount"]
        return amount
    plain: str = doc[key]
    return plain


def cents(value: Decimal) -> str:
    """A two-decimal figure as the API shows money in USD/GBP."""
    return str(value.quantize(Decimal("0.01")))


async def deliver(h: Harness, name: str, topic: str, *, expect: int = 202) -> dict[str, Any]:
    """POST one fixture's exact bytes, signed with the store secret, as a Shopify delivery."""
    body = fixture("shopify", name)
    return await push_signed(h, body, topic, sign(body, SECRET), expect=expect)


async def push_signed(
    h: Harness, body: bytes, topic: str, signature: str, *, expect: int = 202
) -> dict[str, Any]:
    """POST raw bytes with a given topic and signature (the HMAC alone authenticates)."""
    headers = {
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": signature,
        "X-Shopify-Webhook-Id": f"e2e-{next(_DELIVERY)}",
        "X-Shopify-Shop-Domain": "lumen-jewelers.myshopify.com",
    }
    return await e2e.push(h, body, headers=headers, expect=expect)


def order_refund_sale_id(doc: dict[str, Any]) -> str:
    """The sale id a fixture becomes: the order id, or `refund:<id>` for a refund."""
    return f"refund:{doc['id']}" if "refund_line_items" in doc else str(doc["id"])


async def test_every_figure_is_shopifys_own(tmp_path: Path) -> None:
    async with e2e.store_app(tmp_path, "shopify", secret=SECRET) as h:
        for name, topic in VALID:
            await deliver(h, name, topic)
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined, result.held) == (len(VALID), 0, 0)
        assert await e2e.quarantine(h) == []

        log = {s["id"]: s for s in await e2e.sales_log(h, DAY)}
        assert set(log) == {order_refund_sale_id(doc_of(n)) for n, _ in VALID}

        for name, _ in VALID[:4]:  # the orders
            doc = doc_of(name)
            sale = await e2e.sale_detail(h, str(doc["id"]))
            listed = log[str(doc["id"])]
            for field, key in (
                ("total", "total_price"),
                ("subtotal", "subtotal_price"),
                ("tax", "total_tax"),
                ("discount", "total_discounts"),
                ("shipping", "total_shipping_price"),
            ):
                assert sale[field] == shop(doc, key), (name, field)
                assert listed[field] == shop(doc, key), (name, field)
            assert sale["tip"] == doc["total_tip_received"]
            assert sale["currency"] == doc["currency"]
            assert sale["tax_included"] is doc["taxes_included"]
            assert sale["record"]["total"] == shop(doc, "total_price")  # the exact stored value
            assert [ln["sku"] for ln in sale["lines"]] == [li["sku"] for li in doc["line_items"]]
            assert [ln["unit_price"] for ln in sale["lines"]] == [
                li["price"] for li in doc["line_items"]
            ]
            assert [ln["quantity"] for ln in sale["lines"]] == [
                str(li["quantity"]) for li in doc["line_items"]
            ]
            paid = [
                (t["gateway"], t["amount"], str(t["id"]))
                for t in doc.get("transactions", [])
                if t["status"] == "success" and t["kind"] in ("sale", "capture")
            ]
            assert [(t["method"], t["amount"], t["reference"]) for t in sale["tenders"]] == paid
            assert sale["tenders_known"] is ("transactions" in doc)
            assert sale["attributes"]["name"] == doc["name"]
            assert sale["warnings"] == [] and sale["source"] == "shopify"

        # the 404.95 case: the order-level discount is its own adjustment, named by its code
        doc = doc_of("orders_create_order_discount.json")
        sale = await e2e.sale_detail(h, str(doc["id"]))
        (code,) = [c["code"] for c in doc["discount_codes"]]
        assert sale["adjustments"] == [
            {
                "kind": "discount",
                "amount": f"-{doc['total_discounts']}",
                "description": code,
                "code": code,
                "reference": None,
            }
        ]
        assert sale["attributes"]["payment_gateway_names"] == json.dumps(
            doc["payment_gateway_names"], separators=(",", ":")
        )
        # the 11.94 case: tax stated only on the order
        doc = doc_of("orders_create_order_tax.json")
        sale = await e2e.sale_detail(h, str(doc["id"]))
        assert [(a["kind"], a["amount"]) for a in sale["adjustments"]] == [
            ("tax", t["price"]) for t in doc["tax_lines"]
        ]
        assert all(ln["tax"] == "0.00" for ln in sale["lines"])

        # the older refund shape: figures from its line item, tender from its transaction
        doc = doc_of("refunds_create_legacy.json")
        refund = await e2e.sale_detail(h, f"refund:{doc['id']}")
        (txn,) = doc["transactions"]
        assert refund["total"] == f"-{txn['amount']}"
        assert [(t["method"], t["amount"]) for t in refund["tenders"]] == [
            (txn["gateway"], f"-{txn['amount']}")
        ]
        assert [ln["sku"] for ln in refund["lines"]] == [
            rli["line_item"]["sku"] for rli in doc["refund_line_items"]
        ]
        assert (refund["kind"], refund["original_id"]) == ("return", str(doc["order_id"]))
        assert log[refund["id"]]["kind"] == "return"

        # the report: each currency's sales and the refund, from the fixtures' own totals
        usd = [doc_of(n) for n, _ in VALID[:3]]
        gross = sum((Decimal(shop(d, "total_price")) for d in usd), start=Decimal(0))
        rows = {r["currency"]: r for r in await e2e.report(h, DAY)}
        returned = Decimal(txn["amount"])
        assert rows["USD"] == {
            "date": DAY.isoformat(),
            "currency": "USD",
            "count": len(usd) + 1,
            "gross": cents(gross),
            "returns": cents(returned),
            "returns_count": 1,
            "net": cents(gross - returned),
            "voided": 0,
        }
        gbp = doc_of("orders_create_taxes_included.json")
        assert (rows["GBP"]["count"], rows["GBP"]["gross"], rows["GBP"]["net"]) == (
            1,
            shop(gbp, "total_price"),
            shop(gbp, "total_price"),
        )


async def test_a_sample_that_disagrees_with_itself_is_quarantined_with_both_figures(
    tmp_path: Path,
) -> None:
    doc = doc_of("orders_create_inconsistent.json")
    lines_sum = sum((Decimal(li["price"]) * li["quantity"] for li in doc["line_items"]), Decimal(0))
    assert lines_sum != Decimal(doc["subtotal_price"])  # the sample really disagrees
    async with e2e.store_app(tmp_path, "shopify", secret=SECRET) as h:
        await deliver(h, "orders_create_inconsistent.json", "orders/create")
        result = await e2e.run_window(h)
        assert (result.committed, result.quarantined) == (0, 1)
        (item,) = await e2e.quarantine(h)
        assert item["record_id"] == str(doc["id"])
        (reason,) = item["reasons"]
        assert (reason["rule"], reason["field"]) == ("subtotal.sum", "$.subtotal")
        assert doc["subtotal_price"] in reason["message"]
        assert cents(lines_sum) in reason["message"]
        assert item["record"]["subtotal"] == doc["subtotal_price"]  # kept as Shopify sent it
        assert await e2e.sales_log(h, DAY) == []


async def test_refund_of_an_unknown_order_is_held_then_committed_unlinked(tmp_path: Path) -> None:
    doc = doc_of("refunds_create_unknown_order.json")
    sale_id = f"refund:{doc['id']}"
    (txn,) = doc["transactions"]
    hold = 2
    async with e2e.store_app(
        tmp_path, "shopify", secret=SECRET, config={"windows": {"hold_windows": hold}}
    ) as h:
        await deliver(h, "refunds_create_unknown_order.json", "refunds/create")
        for _ in range(hold):
            result = await e2e.run_window(h)
            assert (result.held, result.committed, result.quarantined) == (1, 0, 0)
            assert await e2e.sales_log(h, DAY) == []
        result = await e2e.run_window(h)
        assert (result.held, result.committed, result.quarantined) == (0, 1, 0)
        assert await e2e.quarantine(h) == []
        sale = await e2e.sale_detail(h, sale_id)
        assert (sale["kind"], sale["original_id"]) == ("return", str(doc["order_id"]))
        assert sale["total"] == f"-{txn['amount']}"
        assert [(t["method"], t["amount"]) for t in sale["tenders"]] == [
            (txn["gateway"], f"-{txn['amount']}")
        ]
        (warning,) = sale["warnings"]
        assert warning.startswith("return.original:")
        (row,) = await e2e.report(h, DAY)
        assert (row["returns"], row["returns_count"], row["gross"], row["count"]) == (
            txn["amount"],
            1,
            "0.00",
            1,
        )


async def test_customer_with_addresses_and_consent(tmp_path: Path) -> None:
    doc = doc_of("customers_update_addresses.json")
    async with e2e.store_app(tmp_path, "shopify", secret=SECRET) as h:
        await deliver(h, "customers_update_addresses.json", "customers/update")
        got = await e2e.customer(h, str(doc["id"]))
        assert (got["marketing_email"], got["marketing_sms"]) == ("opted_out", "opted_in")
        assert [a["line1"] for a in got["addresses"]] == [a["address1"] for a in doc["addresses"]]
        assert got["address"]["line1"] == doc["default_address"]["address1"]
        assert got["tags"] == [t.strip() for t in doc["tags"].split(",")]
        assert got["attributes"]["total_spent"] == doc["total_spent"]


async def test_a_captured_order_body_under_another_topic_is_refused(tmp_path: Path) -> None:
    """Issue 12.5: the same signed bytes re-sent as orders/delete or customers/update."""
    body = fixture("shopify", "orders_create.json")
    signature = sign(body, SECRET)
    order_id = str(json.loads(body)["id"])
    async with e2e.store_app(tmp_path, "shopify", secret=SECRET) as h:
        await push_signed(h, body, "orders/create", signature)
        for topic in ("orders/delete", "customers/update", "customers/create", "refunds/create"):
            err = await push_signed(h, body, topic, signature, expect=400)
            assert err["field"] == "X-Shopify-Topic", (topic, err)
            assert set(err) >= {"error", "field"}
        resp = await h.client.get(f"/v1/stores/S1/customers/{order_id}", headers=h.admin())
        assert resp.status == 404  # no customer was made of the order
        result = await e2e.run_window(h)
        assert (result.committed, result.voids) == (1, 0)
        sale = await e2e.sale_detail(h, order_id)
        assert sale["voided"] is False  # the swapped delete voided nothing
