"""Shopify, faithfully (issue 9): Shopify's own figures, adjustments, tenders only from
transactions, the older refund shape, consent, addresses, attributes; and the topic swap
(issue 12.5): a body must fit its topic."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.adapter_helpers import (
    by_type,
    fixture,
    fixture_json,
    sale,
    window_ctx,
)
from tests.shopify_helpers import (
    ORDER_ID,
    REFUND_ID,
    assert_valid,
    failures,
    order,
    order_with_embedded_refund,
    push,
)
from worker.errors import RecordInvalid
from worker.records import Customer
from worker.validation import (
    BatchItem,
    validate_batch,
)

# -- Shopify's own figures (issue 9) ----------------------------------------------------


def test_order_level_discount_no_line_carries_is_an_adjustment() -> None:
    doc = fixture_json("shopify", "orders_create_order_discount.json")
    s = sale(push(doc, "orders/create"), "6120458736001")
    # the 404.95 case: total_price, not lines + shipping (424.95)
    assert (s.subtotal, s.discount, s.shipping, s.tax, s.total) == (
        Decimal(doc["subtotal_price"]),
        Decimal(doc["total_discounts"]),
        Decimal("10.00"),
        Decimal(doc["total_tax"]),
        Decimal(doc["total_price"]),
    )
    assert s.total == Decimal("404.95")
    assert [ln.discount for ln in s.lines] == [0, 0]  # no allocations on the lines
    (adj,) = s.adjustments
    assert (adj.kind, adj.amount, adj.code) == ("discount", Decimal("-20.00"), "SPRING20")
    assert (s.tenders, s.tenders_known) == ([], False)
    assert_valid(s)


def test_two_unallocated_discounts_with_stated_amounts_are_one_adjustment_each() -> None:
    doc = fixture_json("shopify", "orders_create_order_discount.json")
    doc["total_discounts"] = doc["total_discounts_set"]["shop_money"]["amount"] = "35.00"
    doc["subtotal_price"] = doc["subtotal_price_set"]["shop_money"]["amount"] = "379.95"
    doc["total_price"] = doc["total_price_set"]["shop_money"]["amount"] = "389.95"
    doc["discount_codes"].append({"code": "WELCOME15", "amount": "15.00", "type": "fixed_amount"})
    doc["discount_applications"].append({**doc["discount_applications"][0], "code": "WELCOME15"})
    s = sale(push(doc, "orders/create"), "6120458736001")
    assert [(a.code, a.amount) for a in s.adjustments] == [
        ("SPRING20", Decimal("-20.00")),
        ("WELCOME15", Decimal("-15.00")),
    ]
    assert_valid(s)


@pytest.mark.parametrize("counted_in_total_discounts", [True, False])
def test_a_shipping_discount_is_never_an_item_discount(counted_in_total_discounts: bool) -> None:
    doc = fixture_json("shopify", "orders_create_order_discount.json")
    (ship,) = doc["shipping_lines"]
    ship["discounted_price"] = ship["discounted_price_set"]["shop_money"]["amount"] = "0.00"
    ship["discount_allocations"] = [{"amount": "10.00", "discount_application_index": 1}]
    doc["discount_codes"].append({"code": "FREESHIP", "amount": "10.00", "type": "shipping"})
    doc["discount_applications"].append(
        {"target_type": "shipping_line", "type": "discount_code", "code": "FREESHIP"}
    )
    doc.pop("total_discounts_set")
    doc["total_discounts"] = "30.00" if counted_in_total_discounts else "20.00"
    # total_line_items_price 414.95 - subtotal_price 394.95 = 20.00 of item discount either way
    doc["total_price"] = doc["total_price_set"]["shop_money"]["amount"] = "394.95"
    s = sale(push(doc, "orders/create"), "6120458736001")
    assert s.shipping == Decimal("0.00")
    # only the SPRING20 code is an order-level item discount
    assert [(a.kind, a.amount, a.code) for a in s.adjustments] == [
        ("discount", Decimal("-20.00"), "SPRING20")
    ]
    if counted_in_total_discounts:  # not an item discount: not stated as one, kept as sent
        assert (s.discount, s.attributes["total_discounts"]) == (None, "30.00")
    else:
        assert s.discount == Decimal("20.00") and "total_discounts" not in s.attributes
    assert_valid(s)


def test_lines_carrying_more_discount_than_stated_quarantine_with_both_figures() -> None:
    doc = order()
    doc["total_discounts"] = "100.00"  # the ring's allocation says 125.00
    s = sale(push(doc, "orders/create"), ORDER_ID)
    assert s.adjustments == [] and s.discount == Decimal("100.00")
    (failure,) = [f for f in failures(s) if f.rule == "discount.sum"]
    assert "100.00" in failure.message and "125.00" in failure.message


def test_order_level_tax_only_is_total_tax_with_tax_adjustments() -> None:
    doc = fixture_json("shopify", "orders_create_order_tax.json")
    s = sale(push(doc, "orders/create"), "6120458737001")
    assert (s.subtotal, s.tax, s.total) == (Decimal("398.00"), Decimal("11.94"), Decimal("409.94"))
    assert all(ln.tax == 0 for ln in s.lines)
    (adj,) = s.adjustments
    assert (adj.kind, adj.amount, adj.description) == ("tax", Decimal("11.94"), "State Tax (0.03)")
    assert_valid(s)


def test_order_tax_lines_are_not_repeated_when_lines_carry_tax() -> None:
    doc = fixture_json("shopify", "orders_paid_transactions.json")
    assert doc["tax_lines"]  # the order repeats its lines' tax at the order level
    s = sale(push(doc, "orders/paid"), "6120458734001")
    assert [a.kind for a in s.adjustments] == []


def test_order_with_transactions_has_its_payments_as_tenders() -> None:
    doc = fixture_json("shopify", "orders_paid_transactions.json")
    s = sale(push(doc, "orders/paid"), "6120458734001")
    # capture (not its authorization), the successful cash sale, not the failed attempt
    assert [(t.method, t.amount, t.reference) for t in s.tenders] == [
        ("shopify_payments", Decimal("300.00"), "5550001002"),
        ("Cash", Decimal("95.11"), "5550001004"),
    ]
    assert s.tenders_known
    hoops, wrap = s.lines
    assert (hoops.sku, hoops.quantity, hoops.discount, hoops.tax) == (
        "EAR-HOOP-14K",
        Decimal(2),
        Decimal("40.00"),
        Decimal("29.70"),
    )
    assert wrap.sku is None  # Shopify sent no SKU: none is invented
    assert (s.total, s.discount) == (Decimal("395.11"), Decimal("40.00"))
    assert s.attributes["line_items.1.properties"] == '[{"name":"Ribbon","value":"Ivory"}]'
    assert_valid(s)


def test_refund_transaction_in_an_order_body_is_a_negative_tender() -> None:
    doc = fixture_json("shopify", "orders_paid_transactions.json")
    doc["transactions"].append(
        {"id": 9, "kind": "refund", "status": "success", "amount": "5.00", "gateway": "Cash"}
    )
    s = sale(push(doc, "orders/updated"), "6120458734001")
    assert (s.tenders[-1].method, s.tenders[-1].amount) == ("Cash", Decimal("-5.00"))


def test_a_refund_transaction_of_an_embedded_refund_is_the_returns_tender() -> None:
    doc = order_with_embedded_refund()
    (refund_txn,) = doc["refunds"][0]["transactions"]
    doc["transactions"] = [
        {"id": 1, "kind": "sale", "status": "success", "amount": "1244.87", "gateway": "Cash"},
        {**refund_txn, "kind": "refund"},
    ]
    parsed = push(doc, "orders/updated")
    s = sale(parsed, ORDER_ID)
    assert [(t.method, t.amount) for t in s.tenders] == [("Cash", Decimal("1244.87"))]
    assert_valid(s)
    r = sale(parsed, REFUND_ID)
    assert [t.amount for t in r.tenders] == [-Decimal(refund_txn["amount"])]


def test_only_an_authorization_is_no_payment_yet() -> None:
    # financial_status "authorized": the payment is promised, not captured. Tenders are not
    # known yet (not "none"): the sale commits with Shopify's own total, and the capture
    # arrives with a later version of the order.
    doc = order()
    doc["transactions"] = [
        {"id": 1, "kind": "authorization", "status": "success", "amount": "1244.87"}
    ]
    s = sale(push(doc, "orders/create"), ORDER_ID)
    assert (s.tenders, s.tenders_known) == ([], False)
    assert failures(s) == []


def test_an_empty_transactions_list_is_no_payment() -> None:
    doc = order()
    doc["transactions"] = []
    s = sale(push(doc, "orders/create"), ORDER_ID)
    assert (s.tenders, s.tenders_known) == ([], True)
    (failure,) = failures(s)
    assert failure.rule == "tenders.sum" and "1244.87" in failure.message


def test_taxes_included_order_keeps_shopifys_figures() -> None:
    doc = fixture_json("shopify", "orders_create_taxes_included.json")
    s = sale(push(doc, "orders/create"), "6120458735001")
    assert (s.currency, s.tax_included) == ("GBP", True)
    assert (s.subtotal, s.tax, s.shipping, s.total) == (
        Decimal("90.00"),
        Decimal("15.83"),
        Decimal("4.95"),
        Decimal("94.95"),
    )
    assert [(ln.unit_price, ln.tax) for ln in s.lines] == [
        (Decimal("60.00"), Decimal("10.00")),
        (Decimal("15.00"), Decimal("5.00")),
    ]
    assert [(t.method, t.amount) for t in s.tenders] == [("shopify_payments", Decimal("94.95"))]
    assert_valid(s)


def test_duties_and_additional_fees_are_fees_in_the_total() -> None:
    doc = fixture_json("shopify", "orders_create_taxes_included.json")
    doc["original_total_duties_set"] = {"shop_money": {"amount": "6.20", "currency_code": "GBP"}}
    doc["original_total_additional_fees_set"] = {
        "shop_money": {"amount": "1.50", "currency_code": "GBP"}
    }
    doc["total_price"] = doc["total_price_set"]["shop_money"]["amount"] = "102.65"
    doc["transactions"][0]["amount"] = "102.65"
    s = sale(push(doc, "orders/create"), "6120458735001")
    assert (s.fees, s.total) == (Decimal("7.70"), Decimal("102.65"))
    assert [(a.kind, a.amount, a.description) for a in s.adjustments] == [
        ("fee", Decimal("6.20"), "duties"),
        ("fee", Decimal("1.50"), "additional fees"),
    ]
    assert_valid(s)


def test_refund_embedded_in_a_taxes_included_order_carries_its_tax() -> None:
    doc = fixture_json("shopify", "orders_create_taxes_included.json")
    doc["updated_at"] = "2026-03-16T10:00:00-05:00"
    doc["refunds"] = [
        {
            "id": 990011220030,
            "order_id": doc["id"],
            "created_at": "2026-03-16T10:00:00-05:00",
            "refund_line_items": [
                {
                    "id": 1,
                    "line_item_id": doc["line_items"][0]["id"],
                    "quantity": 1,
                    "subtotal": "60.00",
                    "total_tax": "10.00",
                }
            ],
            "transactions": [{"id": 2, "kind": "refund", "status": "success", "amount": "60.00"}],
        }
    ]
    r = sale(push(doc, "orders/updated"), "refund:990011220030")
    assert (r.tax_included, r.subtotal, r.tax, r.total) == (
        True,
        Decimal("-60.00"),
        Decimal("-10.00"),
        Decimal("-60.00"),
    )
    assert (r.currency, r.lines[0].sku) == ("GBP", "SCF-SILK-01")
    assert_valid(r)


def test_inconsistent_sample_is_kept_as_sent_and_fails_with_both_figures() -> None:
    doc = fixture_json("shopify", "orders_create_inconsistent.json")
    s = sale(push(doc, "orders/create"), "6120458738001")
    assert (s.subtotal, s.total) == (Decimal("398.00"), Decimal("409.94"))
    assert len(s.lines) == 3  # three 199.00 lines, as sent
    (failure,) = failures(s)
    assert failure.rule == "subtotal.sum"
    assert "398.00" in failure.message and "597.00" in failure.message


def test_unmapped_order_fields_are_attributes_without_pii_or_mapped_arrays() -> None:
    doc = fixture_json("shopify", "orders_create_order_discount.json")
    attrs = sale(push(doc, "orders/create"), "6120458736001").attributes
    assert (attrs["name"], attrs["order_number"], attrs["financial_status"]) == (
        "#1060",
        "1060",
        "paid",
    )
    assert (attrs["source_name"], attrs["tags"], attrs["test"]) == (
        "web",
        "spring-campaign",
        "false",
    )
    assert attrs["note"] == "Gift: please remove price tags"
    assert attrs["confirmation_number"] == doc["confirmation_number"]
    assert attrs["buyer_accepts_marketing"] == "false"
    assert attrs["discount_codes"] == '[{"code":"SPRING20","amount":"20.00","type":"fixed_amount"}]'
    assert attrs["current_total_price"] == "404.95"
    for gone in ("email", "customer", "line_items", "shipping_lines", "refunds", "id"):
        assert gone not in attrs
    assert "cancel_reason" not in attrs  # null: nothing to keep


# -- refunds: old shape, unknown original ------------------------------------------------


def test_old_refund_shape_without_subtotal_uses_the_line_items_figures() -> None:
    doc = fixture_json("shopify", "refunds_create_legacy.json")
    s = sale(push(doc, "refunds/create"), "refund:990011220010")
    (ln,) = s.lines
    # 200.00 x 1 less half of the line's 40.00 allocation; half of its 29.70 tax
    assert (ln.sku, ln.quantity, ln.unit_price, ln.discount, ln.tax) == (
        "EAR-HOOP-14K",
        Decimal(-1),
        Decimal("200.00"),
        Decimal("-20.00"),
        Decimal("-14.85"),
    )
    assert ln.restock is True  # the older shape's refund-level `restock`
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("-180.00"),
        Decimal("-14.85"),
        Decimal("-194.85"),
    )
    assert [(t.method, t.amount) for t in s.tenders] == [("shopify_payments", Decimal("-194.85"))]
    assert (s.kind, s.original_id) == ("return", "6120458734001")
    assert s.attributes["note"] == "one earring lost its back"
    assert_valid(s)


def test_old_refund_shape_prefers_a_stated_total_tax() -> None:
    doc = fixture_json("shopify", "refunds_create_legacy.json")
    doc["refund_line_items"][0]["total_tax"] = "14.86"
    s = sale(push(doc, "refunds/create"), "refund:990011220010")
    assert s.lines[0].tax == Decimal("-14.86")


def test_old_refund_shape_without_a_line_item_names_the_field() -> None:
    doc = fixture_json("shopify", "refunds_create_legacy.json")
    del doc["refund_line_items"][0]["line_item"]
    with pytest.raises(RecordInvalid) as err:
        push(doc, "refunds/create")
    assert err.value.field == "$.refund_line_items[0].subtotal"


def test_refund_of_an_unknown_order_is_held_then_committed_unlinked() -> None:
    s = sale(
        push(fixture("shopify", "refunds_create_unknown_order.json"), "refunds/create"),
        "refund:990011220020",
    )
    assert (s.kind, s.original_id, s.total) == ("return", "5999000111222", Decimal("-92.01"))
    ctx = window_ctx(hold_windows=1)
    first = validate_batch([BatchItem(1, s, held=0)], ctx)
    assert first.held == [1] and first.quarantined == []
    second = validate_batch([BatchItem(1, s, held=1)], ctx)
    ((_, row),) = second.sales
    assert len(row.warnings) == 1 and row.warnings[0].startswith("return.original:")


# -- consent and customers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("subscribed", "opted_in"),
        ("unsubscribed", "opted_out"),
        ("not_subscribed", "unknown"),
        ("pending", "unknown"),
        ("redacted", "unknown"),
    ],
)
def test_marketing_consent_states(state: str, expected: str) -> None:
    doc = fixture_json("shopify", "customers_update.json")
    doc["email_marketing_consent"]["state"] = state
    doc["sms_marketing_consent"]["state"] = state
    (c,) = push(doc, "customers/update").records
    assert isinstance(c, Customer)
    assert (c.marketing_email, c.marketing_sms) == (expected, expected)


@pytest.mark.parametrize(("accepts", "expected"), [(False, "unknown"), (True, "opted_in")])
def test_legacy_accepts_marketing_false_is_not_an_opt_out(accepts: bool, expected: str) -> None:
    doc = fixture_json("shopify", "customers_update.json")
    del doc["email_marketing_consent"]
    doc["accepts_marketing"] = accepts
    (c,) = push(doc, "customers/update").records
    assert isinstance(c, Customer) and c.marketing_email == expected


def test_customer_with_several_addresses_keeps_them_all() -> None:
    doc = fixture_json("shopify", "customers_update_addresses.json")
    (c,) = push(doc, "customers/update").records
    assert isinstance(c, Customer)
    assert (c.marketing_email, c.marketing_sms) == ("opted_out", "opted_in")
    assert c.address is not None
    assert (c.address.line1, c.address.kind) == ("2207 S Lamar Blvd", "default")
    assert [(a.line1, a.postal_code, a.kind) for a in c.addresses] == [
        ("2207 S Lamar Blvd", "78704", "default"),
        ("PO Box 1180", "78767", "other"),
        ("1 Congress Ave Ste 900", "78701", "other"),
    ]
    assert c.tags == ["wholesale", "vip"]
    attrs = c.attributes
    assert (attrs["orders_count"], attrs["total_spent"], attrs["state"]) == (
        "3",
        "1840.50",
        "enabled",
    )
    assert attrs["accepts_marketing"] == "false"
    assert '"opt_in_level":"confirmed_opt_in"' in attrs["sms_marketing_consent"]
    for mapped in ("email", "first_name", "phone", "addresses", "default_address", "tags"):
        assert mapped not in attrs


def test_embedded_customer_keeps_the_orders_billing_and_shipping_addresses() -> None:
    doc = fixture_json("shopify", "orders_create_order_discount.json")
    (c,) = by_type(push(doc, "orders/create"))["customer"]
    assert isinstance(c, Customer) and c.address is None  # the order's copy has no default
    assert [(a.kind, a.line1, a.line2) for a in c.addresses] == [
        ("billing", "77 Rainey St", "Apt 1204"),
        ("shipping", "1400 Lavaca St", None),
    ]
    attrs = sale(push(doc, "orders/create"), "6120458736001").attributes
    assert "billing_address" not in attrs and "shipping_address" not in attrs


def test_default_address_alone_is_also_the_address_list() -> None:
    (c,) = push(fixture("shopify", "customers_update.json"), "customers/update").records
    assert isinstance(c, Customer)
    assert [(a.line1, a.kind) for a in c.addresses] == [("418 W Mary St", "default")]


# -- topic and shape (issue 12.5) --------------------------------------------------------

SWAPS = [
    ("orders_create.json", "orders/delete"),
    ("orders_create.json", "customers/update"),
    ("orders_create.json", "customers/create"),
    ("orders_create.json", "customers/delete"),
    ("orders_create.json", "products/update"),
    ("orders_create.json", "products/delete"),
    ("orders_create.json", "refunds/create"),
    ("refunds_create.json", "orders/create"),
    ("refunds_create.json", "orders/delete"),
    ("refunds_create.json", "customers/update"),
    ("customers_update.json", "orders/create"),
    ("customers_update.json", "orders/delete"),
    ("customers_update.json", "refunds/create"),
    ("customers_update.json", "products/update"),
    ("products_update.json", "customers/update"),
    ("products_update.json", "orders/updated"),
    ("products_update.json", "products/delete"),
]


@pytest.mark.parametrize(("name", "topic"), SWAPS)
def test_a_signed_body_under_another_topic_is_refused(name: str, topic: str) -> None:
    with pytest.raises(RecordInvalid) as err:
        push(fixture("shopify", name), topic)
    assert err.value.field == "X-Shopify-Topic"
    assert topic in err.value.message


@pytest.mark.parametrize("extra", [{"cancelled_at": None}, {"line_items": []}, {"name": "#1"}])
def test_a_delete_notice_is_only_an_id(extra: dict[str, Any]) -> None:
    with pytest.raises(RecordInvalid) as err:
        push({"id": 6120458733912, **extra}, "orders/delete")
    assert err.value.field == "X-Shopify-Topic"


def test_a_bare_delete_notice_is_no_order() -> None:
    with pytest.raises(RecordInvalid) as err:
        push({"id": 6120458733912}, "orders/create")
    assert err.value.field == "X-Shopify-Topic"
