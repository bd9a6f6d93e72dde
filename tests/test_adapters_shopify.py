"""Shopify adapter: HMAC, topics, orders, refunds (no double counting), voids, customers, products."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.adapter_helpers import (
    by_type,
    fixture,
    make_ctx,
    sale,
    sign,
)
from tests.shopify_helpers import (
    ADAPTER,
    OLD_SECRET,
    ORDER_ID,
    REFUND_ID,
    SECRET,
    assert_valid,
    ctx_for,
    order,
    order_with_embedded_refund,
    push,
    refund,
)
from worker.adapters import get_adapter
from worker.adapters.shopify import ShopifyAdapter
from worker.errors import AuthError, RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Sale, Void

# -- signature --------------------------------------------------------------------------


def test_registered_under_shopify() -> None:
    assert isinstance(get_adapter("shopify"), ShopifyAdapter)


def test_good_signature_is_accepted_and_delivery_id_kept() -> None:
    parsed = push(fixture("shopify", "orders_create.json"), "orders/create")
    assert parsed.delivery_id == "3f0b8e52-6d1a-4c39-9a7e-1b2f61e0c4d7"
    assert parsed.rejected == []


def test_rotated_secret_is_accepted_during_rotation() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = ctx_for(body, "orders/create", signing_secret=OLD_SECRET, previous_secret=OLD_SECRET)
    assert len(by_type(ADAPTER.parse(body, ctx))["sale"]) == 1


def test_previous_secret_alone_does_not_cover_a_third_secret() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = ctx_for(body, "orders/create", signing_secret="someone-else", previous_secret=OLD_SECRET)
    with pytest.raises(AuthError) as err:
        ADAPTER.parse(body, ctx)
    assert err.value.field == "X-Shopify-Hmac-Sha256"


def test_wrong_signature_is_refused_before_parsing() -> None:
    body = b"{not json at all"
    ctx = ctx_for(body, "orders/create", signing_secret="wrong")
    with pytest.raises(AuthError) as err:
        ADAPTER.parse(body, ctx)
    assert err.value.field == "X-Shopify-Hmac-Sha256"
    assert err.value.status == 401


def test_signature_over_a_reserialized_body_does_not_match() -> None:
    raw = fixture("shopify", "orders_create.json")
    reserialized = json.dumps(json.loads(raw)).encode()  # same JSON, other bytes
    ctx = ctx_for(reserialized, "orders/create")
    with pytest.raises(AuthError):
        ADAPTER.parse(raw, ctx)


def test_missing_signature() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = make_ctx("shopify", headers={"X-Shopify-Topic": "orders/create"}, secret=SECRET)
    with pytest.raises(AuthError) as err:
        ADAPTER.parse(body, ctx)
    assert err.value.field == "X-Shopify-Hmac-Sha256"


def test_malformed_signature() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = ctx_for(body, "orders/create", headers={"X-Shopify-Hmac-Sha256": "not base64!!"})
    with pytest.raises(AuthError):
        ADAPTER.parse(body, ctx)


def test_no_secret_configured_is_an_auth_error() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = ctx_for(body, "orders/create", secret="", signing_secret="")
    with pytest.raises(AuthError) as err:
        ADAPTER.parse(body, ctx)
    assert "secret" in err.value.message


def test_unprefixed_event_headers_are_accepted() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = make_ctx(
        "shopify",
        headers={
            "Shopify-Hmac-Sha256": sign(body, SECRET),
            "Shopify-Topic": "orders/create",
            "Shopify-Webhook-Id": "evt-1",
        },
        secret=SECRET,
    )
    parsed = ADAPTER.parse(body, ctx)
    assert parsed.delivery_id == "evt-1"
    assert len(by_type(parsed)["sale"]) == 1


# -- topics and unreadable payloads ------------------------------------------------------


def test_unknown_topic_names_the_header() -> None:
    with pytest.raises(RecordInvalid) as err:
        push(order(), "app/uninstalled")
    assert err.value.field == "X-Shopify-Topic"


def test_missing_topic_names_the_header() -> None:
    body = fixture("shopify", "orders_create.json")
    ctx = make_ctx("shopify", headers={"X-Shopify-Hmac-Sha256": sign(body, SECRET)}, secret=SECRET)
    with pytest.raises(RecordInvalid) as err:
        ADAPTER.parse(body, ctx)
    assert err.value.field == "X-Shopify-Topic"


def test_wrong_content_type() -> None:
    body = fixture("shopify", "orders_create.json")
    with pytest.raises(UnsupportedMediaType):
        ADAPTER.parse(body, ctx_for(body, "orders/create", content_type="text/xml"))


def test_unreadable_price_names_the_field_and_returns_nothing() -> None:
    doc = order()
    doc["line_items"][1]["price"] = "twelve"
    with pytest.raises(RecordInvalid) as err:
        push(doc, "orders/create")
    assert err.value.field == "$.line_items[1].price"


def test_missing_order_id() -> None:
    doc = order()
    del doc["id"]
    with pytest.raises(RecordInvalid) as err:
        push(doc, "orders/updated")
    assert err.value.field == "$.id"


def test_invalid_json_is_record_invalid() -> None:
    with pytest.raises(RecordInvalid) as err:
        push(b'{"id": 1,', "orders/create")
    assert err.value.field == "$"


def test_time_without_offset_is_refused() -> None:
    doc = order()
    doc["processed_at"] = "2026-03-14T15:22:09"
    with pytest.raises(RecordInvalid) as err:
        push(doc, "orders/create")
    assert err.value.field == "$.processed_at"


# -- orders ------------------------------------------------------------------------------


def test_order_maps_to_sale_with_exact_money_utc_and_business_date() -> None:
    parsed = push(fixture("shopify", "orders_create.json"), "orders/create")
    s = sale(parsed, ORDER_ID)
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    assert s.updated_at == datetime(2026, 3, 14, 20, 22, 10, tzinfo=UTC)
    assert s.business_date == date(2026, 3, 14)
    assert s.currency == "USD"
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("1150.00"),
        Decimal("94.87"),
        Decimal("1244.87"),
    )
    ring, cloth = s.lines
    assert (ring.sku, ring.quantity, ring.unit_price, ring.discount, ring.tax) == (
        "RNG-SAPH-HALO-65",
        Decimal(1),
        Decimal("1250.00"),
        Decimal("125.00"),
        Decimal("92.81"),
    )
    assert ring.product_id == "45566778899001"
    assert (cloth.quantity, cloth.unit_price, cloth.tax) == (
        Decimal(2),
        Decimal("12.50"),
        Decimal("2.06"),
    )
    # an orders/create body carries no payment amounts: tenders unknown, never made up
    assert (s.tenders, s.tenders_known) == ([], False)
    assert s.attributes["payment_gateway_names"] == '["shopify_payments"]'
    assert (s.discount, s.adjustments) == (Decimal("125.00"), [])  # the lines carry it all
    assert (s.customer_id, s.employee_id, s.location_id) == (
        "7345129981001",
        "104857600",
        "81234567001",
    )
    assert (s.display_number, s.channel, s.kind) == ("#1043", "pos", "sale")
    assert_valid(s)


def test_embedded_customer_is_also_a_customer_record() -> None:
    parsed = push(order(), "orders/create")
    (customer,) = by_type(parsed)["customer"]
    assert isinstance(customer, Customer)
    assert (customer.id, customer.first_name, customer.email) == (
        "7345129981001",
        "Maya",
        "maya.okafor@example.com",
    )
    # no updated_at on the embedded copy: version 0, it never overwrites a real customer
    assert customer.effective_version == 0


def test_walk_in_order_has_no_customer() -> None:
    doc = order()
    doc["customer"] = None
    parsed = push(doc, "orders/create")
    assert sale(parsed, ORDER_ID).customer_id is None
    assert by_type(parsed)["customer"] == []


def test_test_orders_are_dropped_and_counted() -> None:
    doc = order()
    doc["test"] = True
    parsed = push(doc, "orders/create")
    assert parsed.records == []
    assert parsed.dropped == {"test": 1}


def test_shop_money_not_presentment_money() -> None:
    doc = order()
    doc["presentment_currency"] = "CAD"
    line = doc["line_items"][0]
    line["price"] = "1250.00"
    line["price_set"]["presentment_money"] = {"amount": "1700.00", "currency_code": "CAD"}
    line["discount_allocations"][0]["amount"] = "170.00"  # presentment copy in the plain field
    parsed = push(doc, "orders/create")
    s = sale(parsed, ORDER_ID)
    assert s.lines[0].unit_price == Decimal("1250.00")
    assert s.lines[0].discount == Decimal("125.00")  # from amount_set.shop_money
    assert (s.currency, s.presentment_currency) == ("USD", "CAD")


def test_transactions_in_the_body_become_tenders() -> None:
    doc = order()
    doc["transactions"] = [
        {
            "id": 1,
            "kind": "authorization",
            "status": "success",
            "amount": "1244.87",
            "gateway": "shopify_payments",
        },
        {
            "id": 2,
            "kind": "capture",
            "status": "success",
            "amount": "1000.00",
            "gateway": "shopify_payments",
            "parent_id": 1,
        },
        {"id": 3, "kind": "sale", "status": "success", "amount": "244.87", "gateway": "cash"},
        {"id": 4, "kind": "sale", "status": "failure", "amount": "244.87", "gateway": "cash"},
    ]
    s = sale(push(doc, "orders/paid"), ORDER_ID)
    assert [(t.method, t.amount, t.reference) for t in s.tenders] == [
        ("shopify_payments", Decimal("1000.00"), "2"),
        ("cash", Decimal("244.87"), "3"),
    ]


def test_several_gateways_without_transactions_are_kept_but_no_tender_is_invented() -> None:
    doc = order()
    doc["payment_gateway_names"] = ["shopify_payments", "cash"]
    s = sale(push(doc, "orders/create"), ORDER_ID)
    assert (s.tenders, s.tenders_known) == ([], False)
    assert s.attributes["payment_gateway_names"] == '["shopify_payments","cash"]'
    assert_valid(s)  # tenders.sum is skipped, not failed


def test_shipping_and_tip() -> None:
    doc = order()
    doc["shipping_lines"] = [
        {
            "id": 1,
            "title": "Ground",
            "price": "15.00",
            "discount_allocations": [{"amount": "5.00"}],
            "tax_lines": [{"price": "0.83"}],
        }
    ]
    doc["total_shipping_price_set"] = {"shop_money": {"amount": "15.00", "currency_code": "USD"}}
    doc["total_tip_received"] = "20.00"
    doc["total_tax"] = "95.70"
    doc["total_price"] = "1275.70"
    doc.pop("total_price_set")
    s = sale(push(doc, "orders/create"), ORDER_ID)
    # shipping after its own discount; tax and total exactly as Shopify states them
    assert (s.shipping, s.tip, s.tax) == (Decimal("10.00"), Decimal("20.00"), Decimal("95.70"))
    assert s.total == Decimal("1275.70")
    assert_valid(s)


def test_shipping_discount_uses_the_lines_discounted_price() -> None:
    doc = order()
    doc["shipping_lines"] = [
        {
            "price": "15.00",
            "discounted_price": "0.00",
            "discount_allocations": [{"amount": "15.00"}],
        }
    ]
    doc["total_shipping_price_set"] = {"shop_money": {"amount": "15.00", "currency_code": "USD"}}
    assert sale(push(doc, "orders/create"), ORDER_ID).shipping == Decimal("0.00")


def test_shipping_from_total_shipping_price_set() -> None:
    doc = order()
    doc["shipping_lines"] = [{"price": "9.00", "discount_allocations": []}]
    doc["total_shipping_price_set"] = {"shop_money": {"amount": "8.50", "currency_code": "USD"}}
    # the POS's own order figure, not the lines' sum (the window compares them via the total)
    assert sale(push(doc, "orders/create"), ORDER_ID).shipping == Decimal("8.50")


def test_taxes_included_prices_stay_as_sent() -> None:
    doc = order()
    doc["taxes_included"] = True
    doc["line_items"] = [
        {
            "id": 1,
            "variant_id": 9,
            "sku": "EU-1",
            "quantity": 3,
            "current_quantity": 3,
            "price": "40.00",
            "discount_allocations": [],
            "tax_lines": [{"price": "20.00"}],
        }
    ]
    doc.update(total_discounts="0.00", subtotal_price="120.00", total_tax="20.00")
    doc.update(total_price="120.00", total_price_set=None)
    s = sale(push(doc, "orders/create"), ORDER_ID)
    (ln,) = s.lines
    # the price as Shopify sent it (tax inside), nothing divided out
    assert (ln.unit_price, ln.tax) == (Decimal("40.00"), Decimal("20.00"))
    assert (s.tax_included, s.subtotal, s.tax, s.total) == (
        True,
        Decimal("120.00"),
        Decimal("20.00"),
        Decimal("120.00"),
    )
    assert_valid(s)


def test_edit_that_removes_an_item_shrinks_the_line() -> None:
    doc = order()
    doc["line_items"][1]["current_quantity"] = 1
    doc["updated_at"] = "2026-03-15T09:00:00-05:00"
    doc.update(subtotal_price="1137.50", total_tax="93.84", total_price="1231.34")
    doc.update(total_line_items_price="1262.50", total_price_set=None)
    parsed = push(doc, "orders/edited")
    s = sale(parsed, ORDER_ID)
    cloth = s.lines[1]
    assert (cloth.quantity, cloth.tax) == (Decimal(1), Decimal("1.03"))
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("1137.50"),
        Decimal("93.84"),
        Decimal("1231.34"),
    )
    assert s.updated_at == datetime(2026, 3, 15, 14, 0, tzinfo=UTC)  # supersedes by updated_at
    assert_valid(s)


def test_edit_removing_a_whole_line_drops_it() -> None:
    doc = order()
    doc["line_items"][1]["current_quantity"] = 0
    s = sale(push(doc, "orders/edited"), ORDER_ID)
    assert [ln.sku for ln in s.lines] == ["RNG-SAPH-HALO-65"]


# -- refunds -----------------------------------------------------------------------------


def test_refund_is_a_return_sale_with_negative_lines_and_tenders() -> None:
    parsed = push(fixture("shopify", "refunds_create.json"), "refunds/create")
    s = sale(parsed, REFUND_ID)
    assert (s.kind, s.original_id, s.currency) == ("return", ORDER_ID, "USD")
    assert s.occurred_at == datetime(2026, 3, 21, 16, 5, 42, tzinfo=UTC)
    (ln,) = s.lines
    assert (ln.quantity, ln.unit_price, ln.tax) == (Decimal(-1), Decimal("12.50"), Decimal("-1.03"))
    assert (ln.original_line_id, ln.restock) == ("15011223344002", True)
    assert (s.subtotal, s.tax, s.total) == (Decimal("-12.50"), Decimal("-1.03"), Decimal("-13.53"))
    assert [(t.method, t.amount) for t in s.tenders] == [("shopify_payments", Decimal("-13.53"))]
    assert_valid(s)


def test_refund_order_adjustments_are_a_fee_line() -> None:
    parsed = push(fixture("shopify", "refunds_create_shipping.json"), "refunds/create")
    s = sale(parsed, "refund:990011220002")
    item, fee = s.lines
    assert (item.quantity, item.unit_price, item.discount, item.net) == (
        Decimal(-1),
        Decimal("200.00"),
        Decimal("-20.00"),
        Decimal("-180.00"),
    )
    assert (item.sku, item.restock) == ("EAR-PEARL-01", False)
    assert (fee.line_kind, fee.net, fee.description) == ("fee", Decimal("-5.00"), "shipping_refund")
    assert s.total == Decimal("-199.85")
    assert_valid(s)


def test_shipping_refund_stated_twice_counts_once() -> None:
    """Newer refunds describe a shipping refund both in refund_shipping_lines and as a
    shipping_refund order adjustment (as Shopify's client fixtures show): counted once."""
    usd = {"shop_money": {"amount": "5.00", "currency_code": "USD"}}
    doc = {
        "id": 990011220040,
        "order_id": 6120458733913,
        "created_at": "2026-03-22T10:00:00-05:00",
        "refund_line_items": [],
        "refund_shipping_lines": [
            {"id": 1, "shipping_line_id": 2, "subtotal_amount_set": usd, "shipping_line": {}}
        ],
        "order_adjustments": [
            {
                "id": 3,
                "amount": "-5.00",
                "tax_amount": "0.00",
                "kind": "shipping_refund",
                "reason": "Shipping refund",
                "amount_set": {"shop_money": {"amount": "-5.00", "currency_code": "USD"}},
            }
        ],
        "transactions": [
            {"id": 4, "kind": "refund", "status": "success", "amount": "5.00", "gateway": "bogus"}
        ],
    }
    s = sale(push(doc, "refunds/create"), "refund:990011220040")
    assert (s.total, [t.amount for t in s.tenders]) == (Decimal("-5.00"), [Decimal("-5.00")])
    assert '"subtotal_amount_set"' in s.attributes["refund_shipping_lines"]  # kept, not added
    assert_valid(s)


def test_refund_with_test_transaction_is_dropped() -> None:
    doc = refund()
    doc["transactions"][0]["test"] = True
    parsed = push(doc, "refunds/create")
    assert parsed.records == [] and parsed.dropped == {"test": 1}


def _latest(records: list[Any]) -> dict[tuple[str, str], Any]:
    """What an idempotent sink keeps: per (type, id) the highest version."""
    kept: dict[tuple[str, str], Any] = {}
    for r in records:
        key = (type(r).__name__, r.id)
        if key not in kept or r.effective_version > kept[key].effective_version:
            kept[key] = r
    return kept


@pytest.mark.parametrize("order_first", [True, False])
def test_refund_create_and_order_updated_do_not_double_count(order_first: bool) -> None:
    standalone = push(refund(), "refunds/create").records
    updated = push(order_with_embedded_refund(), "orders/updated").records
    delivered = updated + standalone if order_first else standalone + updated
    kept = _latest(delivered)
    refunds = [r for (t, i), r in kept.items() if t == "Sale" and i.startswith("refund:")]
    assert len(refunds) == 1  # one natural key, whichever topic came first
    embedded = next(r for r in updated if isinstance(r, Sale) and r.id == REFUND_ID)
    alone = next(r for r in standalone if isinstance(r, Sale) and r.id == REFUND_ID)
    assert embedded.effective_version > alone.effective_version  # the richer copy wins
    assert (embedded.tenders, embedded.subtotal, embedded.tax, embedded.total) == (
        alone.tenders,
        alone.subtotal,
        alone.tax,
        alone.total,
    )
    assert [ln.net for ln in embedded.lines] == [ln.net for ln in alone.lines]
    assert embedded.customer_id == "7345129981001" and alone.customer_id is None
    assert (embedded.lines[0].sku, alone.lines[0].sku) == ("CARE-CLOTH-01", None)  # from the order
    # net spend: the order keeps what was sold, the refund subtracts once
    net = sum(r.total for (t, _), r in kept.items() if t == "Sale")
    assert net == Decimal("1231.34")


def test_order_keeps_refunded_quantities_on_its_lines() -> None:
    s = sale(push(order_with_embedded_refund(), "orders/updated"), ORDER_ID)
    assert s.lines[1].quantity == Decimal(2)  # current 1 + refunded 1
    assert s.total == Decimal("1244.87")


def test_replaying_a_delivery_yields_identical_records() -> None:
    first = push(order_with_embedded_refund(), "orders/updated").records
    again = push(order_with_embedded_refund(), "orders/updated").records
    assert first == again


# -- cancellation ------------------------------------------------------------------------


def test_cancelled_order_is_voided_with_its_refund() -> None:
    doc = order()
    doc["cancelled_at"] = "2026-03-15T10:00:00-05:00"
    doc["cancel_reason"] = "customer"
    doc["financial_status"] = "refunded"
    full = refund()
    full["id"] = 990011220099
    full["refund_line_items"][0]["restock_type"] = "cancel"
    doc["refunds"] = [full]
    parsed = push(doc, "orders/cancelled")
    voids = {v.id: v for v in by_type(parsed)["void"] if isinstance(v, Void)}
    assert set(voids) == {ORDER_ID, "refund:990011220099"}
    assert voids[ORDER_ID].occurred_at == datetime(2026, 3, 15, 15, 0, tzinfo=UTC)
    assert voids[ORDER_ID].reason == "customer"
    assert {s.id for s in by_type(parsed)["sale"]} == {ORDER_ID, "refund:990011220099"}


def test_cancelled_at_on_an_update_also_voids() -> None:
    doc = order()
    doc["cancelled_at"] = "2026-03-15T10:00:00-05:00"
    parsed = push(doc, "orders/updated")
    assert [v.id for v in by_type(parsed)["void"]] == [ORDER_ID]


def test_orders_delete_is_a_void() -> None:
    parsed = push({"id": 6120458733912}, "orders/delete")
    (void,) = parsed.records
    assert isinstance(void, Void) and void.id == ORDER_ID and void.reason == "deleted"


# -- customers and products --------------------------------------------------------------


def test_customer_update() -> None:
    parsed = push(fixture("shopify", "customers_update.json"), "customers/update")
    (c,) = parsed.records
    assert isinstance(c, Customer)
    assert (c.id, c.first_name, c.last_name, c.phone) == (
        "7345129981001",
        "Maya",
        "Okafor",
        "+15125550143",
    )
    # sms `not_subscribed` only says "not subscribed": unknown, not an opt-out
    assert (c.marketing_email, c.marketing_sms) == ("opted_in", "unknown")
    assert c.tags == ["anniversary-june", "vip"]
    assert c.address is not None and (c.address.line1, c.address.region, c.address.postal_code) == (
        "418 W Mary St",
        "TX",
        "78704",
    )
    assert c.updated_at == datetime(2026, 3, 21, 16, 5, 43, tzinfo=UTC)


def test_customer_delete() -> None:
    parsed = push({"id": 7345129981001, "phone": None, "addresses": []}, "customers/delete")
    (c,) = parsed.records
    assert isinstance(c, Customer) and c.status == "deleted"


def test_product_update_is_one_record_per_variant() -> None:
    parsed = push(fixture("shopify", "products_update.json"), "products/create")
    (p,) = parsed.records
    assert isinstance(p, Product)
    assert (p.id, p.parent_id, p.sku, p.price) == (
        "45566778899001",
        "8801122334401",
        "RNG-SAPH-HALO-65",
        Decimal("1250.00"),
    )
    assert p.name == "Sapphire Halo Ring - 14k White Gold / 6.5"
    assert p.attributes == {"Metal": "14k White Gold", "Size": "6.5", "compare_at_price": "1400.00"}
    assert (p.category, p.vendor, p.barcode) == ("Rings", "Lumen Fine", "0871234500651")


def test_product_delete() -> None:
    (p,) = push({"id": 8801122334401}, "products/delete").records
    assert isinstance(p, Product) and (p.id, p.status) == ("8801122334401", "deleted")


# -- property tests ----------------------------------------------------------------------


@given(body=st.binary(max_size=256))
def test_arbitrary_unsigned_bytes_only_raise_auth_error(body: bytes) -> None:
    ctx = make_ctx(
        "shopify",
        headers={"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": "AAAA"},
        secret=SECRET,
    )
    with pytest.raises(AuthError):
        ADAPTER.parse(body, ctx)
