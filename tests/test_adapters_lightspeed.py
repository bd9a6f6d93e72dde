"""Lightspeed adapter: X-Series webhooks, API 2.0 and Vend 0.9; R-Series string-typed JSON.

Every sale is also run through the window's own rules (`validate_sale`): a faithful mapping of
a correct POS export must pass them, with the POS's figures untouched.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.adapter_helpers import by_type, fixture, fixture_json, make_ctx, sale, window_ctx
from worker.adapters import get_adapter
from worker.adapters.base import Parsed
from worker.adapters.lightspeed import LightspeedAdapter
from worker.adapters.lightspeed_common import MAX_ATTRIBUTES, TRUNCATED
from worker.errors import RecordInvalid, UnsupportedMediaType
from worker.records import Address, Customer, Product, Sale, Void, encode
from worker.validation import Failure, validate_sale

ADAPTER = LightspeedAdapter()
FORM = "application/x-www-form-urlencoded"
X_SALE = "02d1f4a0-19c2-11f1-e9b3-5e3d2a7c0f11"
X_RETURN = "5f7e90c2-1e11-11f1-e9b3-5e3d2a7c77aa"
HOOK_SALE = "3bb73da7-100e-11f1-e9b3-5e3d2a7c2001"
HOOK_CUSTOMER = "0624dbcd-ef13-11e6-e986-ed86b4f36850"
CASH_TYPE = "0624dbcd-ef95-11e6-e986-ecd5a64f97d5"
EFTPOS_TYPE = "0624dbcd-ef95-11e6-e986-ecd5a64fe78e"


def push(doc: Any, *, content_type: str = "application/json", **kw: Any) -> Parsed:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return ADAPTER.parse(body, make_ctx("lightspeed", content_type=content_type, **kw))


def refused_at(doc: Any, **kw: Any) -> str | None:
    """The field the adapter names in refusing `doc` (it must refuse it)."""
    with pytest.raises(RecordInvalid) as err:
        push(doc, **kw)
    return err.value.field


def webhook(payload: Any, kind: str | None = "sale.update") -> Parsed:
    form = {
        "payload": payload if isinstance(payload, str) else json.dumps(payload),
        "domain_prefix": "lumen",
    }
    if kind:
        form["type"] = kind
    return push(urllib.parse.urlencode(form).encode(), content_type=FORM)


def x(name: str) -> dict[str, Any]:
    return copy.deepcopy(fixture_json("lightspeed", name))


def failures(s: Sale, known_sales: frozenset[str] = frozenset()) -> list[Failure]:
    """The window's verdict on one sale (customer presence is not a failure)."""
    return validate_sale(s, window_ctx(hold_windows=2, known=known_sales))


def customers(parsed: Parsed) -> list[Customer]:
    return [r for r in parsed.records if isinstance(r, Customer)]


def voids(parsed: Parsed) -> list[Void]:
    return [r for r in parsed.records if isinstance(r, Void)]


def test_registered_under_lightspeed() -> None:
    assert isinstance(get_adapter("lightspeed"), LightspeedAdapter)


# -- X-Series API 2.0 --------------------------------------------------------------------


def test_x_sale_maps_exact_money_version_and_tender_names() -> None:
    parsed = push(fixture("lightspeed", "x_sale.json"))
    s = sale(parsed, X_SALE)
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    assert s.business_date == date(2026, 3, 14)
    assert not s.tz_assumed
    assert s.version == 48213377610
    # total_price is tax-exclusive (2.0 schema): total = total_price + total_tax, tax not included
    assert (s.subtotal, s.tax, s.total) == (Decimal("1150.0"), Decimal("94.87"), Decimal("1244.87"))
    assert not s.tax_included and s.discount is None
    ring, cloth = s.lines
    assert (ring.quantity, ring.unit_price, ring.discount, ring.tax) == (
        Decimal(1),
        Decimal("1125.0"),
        Decimal(0),
        Decimal("92.81"),
    )
    assert (cloth.quantity, cloth.unit_price, cloth.net) == (
        Decimal(2),
        Decimal("12.5"),
        Decimal("25.0"),
    )
    assert ring.sku is None and ring.product_id == "5d4fcfa8-0ac1-4a6a-adc2-da1d66f4b8f7"
    assert ring.employee_id == "06326976-9d65-11ed-fa40-06af15b3193d"
    assert [(t.method, t.method_id, t.amount) for t in s.tenders] == [
        ("Credit Card", "0ac54c19-8cd8-11ed-f575-b396fc0a1122", Decimal("1244.87"))
    ]
    assert s.tenders_known
    assert (s.display_number, s.channel, s.kind, s.currency) == ("LJ-1043", "pos", "sale", "USD")
    assert (s.location_id, s.register_id) == (
        "0ac54c19-8cd8-11ed-f575-b396fb0c257c",
        "0ac54c19-8cd8-11ed-f575-b396fb16526d",
    )
    # what no canonical field took is kept under the POS's own (dotted) name
    assert s.attributes["line_items.0.discount_total"] == "125.0"
    assert s.attributes["line_items.0.note"] == "Engraving: M + J 2016"
    assert s.attributes["taxes.0.name"] == "TX State + Local"
    assert s.attributes["invoice_sequence"] == "1043"
    assert "total_price" not in s.attributes and "line_items.0.price" not in s.attributes
    assert failures(s) == []


def test_x_money_is_exact_not_float() -> None:
    doc = x("x_sale.json")
    doc["data"]["total_tax"] = 0.1
    body = json.dumps(doc).replace(
        '"total_tax": 0.1', '"total_tax": 0.1000000000000000055511151231257827'
    )
    # more than 8 places: refused, never rounded
    assert refused_at(body.encode()) == "$.data.total_tax"


def test_x_order_figures_are_the_pos_own_and_lines_are_checked_against_them() -> None:
    doc = x("x_sale.json")
    doc["data"]["total_price"] = 1151.0  # the POS's header disagrees with its own lines
    s = sale(push(doc), X_SALE)
    assert (s.subtotal, s.total) == (Decimal("1151.0"), Decimal("1245.87"))  # not recomputed
    (failure,) = [f for f in failures(s) if f.rule == "subtotal.sum"]
    assert "1151.0" in failure.message and "1150.0" in failure.message


def test_x_return_is_a_new_sale_with_return_for() -> None:
    s = sale(push(fixture("lightspeed", "x_return.json")), X_RETURN)
    assert (s.kind, s.original_id) == ("return", X_SALE)
    (ln,) = s.lines
    assert (ln.quantity, ln.unit_price, ln.net) == (Decimal(-1), Decimal("12.5"), Decimal("-12.5"))
    assert s.total == Decimal("-13.53")
    assert [(t.method, t.amount) for t in s.tenders] == [("Credit Card", Decimal("-13.53"))]
    assert s.attributes["line_items.0.is_return"] == "true"
    assert failures(s, frozenset({X_SALE})) == []


def test_x_exchange_by_line_signs() -> None:
    doc = x("x_return.json")
    doc["data"]["line_items"].append(
        {
            "id": "new-line",
            "product_id": "p2",
            "quantity": 1,
            "price": 20.0,
            "price_total": 20.0,
            "tax_total": 1.65,
        }
    )
    doc["data"]["total_price"] = 7.5
    doc["data"]["total_tax"] = 0.62
    s = sale(push(doc), X_RETURN)
    assert s.kind == "exchange"


def test_x_price_before_discount_is_read_from_price_total() -> None:
    doc = x("x_sale.json")
    doc["data"]["line_items"][0]["price"] = 1250.0  # pre-discount reading of `price`
    s = sale(push(doc), X_SALE)
    assert (s.lines[0].unit_price, s.lines[0].discount, s.lines[0].net) == (
        Decimal("1250.0"),
        Decimal("125.0"),
        Decimal("1125.0"),
    )
    assert failures(s) == []


def test_x_voided_sale_is_a_void() -> None:
    doc = x("x_sale.json")
    doc["data"]["status"] = "VOIDED"
    doc["data"]["version"] = 48213399999
    (void,) = push(doc).records
    assert isinstance(void, Void)
    assert (void.id, void.version, void.reason) == (X_SALE, 48213399999, "voided")
    assert void.occurred_at == datetime(2026, 3, 14, 20, 22, 10, tzinfo=UTC)


@pytest.mark.parametrize("status", ["SAVED", "LAYBY", "ONACCOUNT", "AWAITING_PICKUP"])
def test_x_open_sales_are_dropped_and_counted(status: str) -> None:
    doc = x("x_sale.json")
    doc["data"]["status"] = status
    parsed = push(doc)
    assert parsed.records == [] and parsed.dropped == {"open": 1}


@pytest.mark.parametrize(
    "status", ["CLOSED", "LAYBY_CLOSED", "ONACCOUNT_CLOSED", "PICKED_UP_CLOSED"]
)
def test_x_closed_statuses_are_completed(status: str) -> None:
    doc = x("x_sale.json")
    doc["data"]["status"] = status
    assert len(by_type(push(doc))["sale"]) == 1


def test_x_unknown_status_names_the_field() -> None:
    doc = x("x_sale.json")
    doc["data"]["status"] = "TELEPORTED"
    assert refused_at(doc) == "$.data.status"


def test_x_list_rejects_items_one_by_one() -> None:
    good = x("x_sale.json")["data"]
    bad = copy.deepcopy(good)
    bad["id"] = "other"
    bad["line_items"][0]["quantity"] = "lots"
    parsed = push({"data": [good, bad, "junk"]})
    assert [s.id for s in by_type(parsed)["sale"]] == [X_SALE]
    assert [(r.index, r.field) for r in parsed.rejected] == [
        (1, "$.data[1].line_items[0].quantity"),
        (2, "$.data[2]"),
    ]


def test_x_line_sku_is_the_pos_own_or_none() -> None:
    doc = x("x_sale.json")
    doc["data"]["line_items"][0]["sku"] = "RNG-SAPH-HALO-65"
    doc["data"]["line_items"][1]["product"] = {"id": "p", "sku": "CARE-CLOTH-01", "name": "Cloth"}
    ring, cloth = sale(push(doc), X_SALE).lines
    assert (ring.sku, cloth.sku, cloth.description) == (
        "RNG-SAPH-HALO-65",
        "CARE-CLOTH-01",
        "Cloth",
    )
    doc["data"]["line_items"][0]["sku"] = ""
    assert sale(push(doc), X_SALE).lines[0].sku is None  # never ''
    assert b'"sku":""' not in encode(sale(push(doc), X_SALE))


def test_x_tender_name_fallbacks_and_missing_type() -> None:
    payload = x("x_sale_webhook_payload.json")
    pay = payload["register_sale_payments"][0]
    del pay["retailer_payment_type"]
    s = sale(webhook(payload), HOOK_SALE)
    # the global payment type's name when the retailer's is absent; the id stays the retailer's
    assert (s.tenders[0].method, s.tenders[0].method_id) == ("Cash", CASH_TYPE)
    del pay["payment_type"]
    pay["label"] = "Till cash"
    assert sale(webhook(payload), HOOK_SALE).tenders[0].method == "Till cash"
    del pay["label"]
    # no name anywhere: the type id is all the POS said
    assert sale(webhook(payload), HOOK_SALE).tenders[0].method == CASH_TYPE
    del pay["retailer_payment_type_id"], pay["payment_type_id"]
    with pytest.raises(RecordInvalid) as err:
        webhook(payload)
    assert err.value.field == "payload.register_sale_payments[0].retailer_payment_type"


def test_x_sale_without_payments_has_tenders_unknown() -> None:
    payload = x("x_sale_webhook_payload.json")
    payload["register_sale_payments"] = []
    s = sale(webhook(payload), HOOK_SALE)
    assert (s.tenders, s.tenders_known) == ([], True)  # "no tenders": still owes its total
    assert [f.rule for f in failures(s)] == ["tenders.sum"]
    del payload["register_sale_payments"]
    s = sale(webhook(payload), HOOK_SALE)
    assert (s.tenders, s.tenders_known) == ([], False)  # the source carried no payments at all
    assert failures(s) == []


def test_x_sale_without_totals_names_the_field() -> None:
    payload = x("x_sale_webhook_payload.json")
    del payload["totals"]["total_tax"]
    with pytest.raises(RecordInvalid) as err:
        webhook(payload)
    assert err.value.field == "payload.totals.total_tax"


def test_x_customer_2_0_shape_address_and_consent() -> None:
    (c,) = push(fixture("lightspeed", "x_customer.json")).records
    assert isinstance(c, Customer)
    assert (c.id, c.phone, c.birth_date, c.version) == (
        "06e94082-edd8-11ee-f619-c09746455863",
        "+15125550143",
        date(1991, 6, 18),
        48299012600,
    )
    assert c.marketing_email == "unknown"  # do_not_email false: not blocked, not opted in
    physical = Address(
        line1="418 W Mary St",
        city="Austin",
        region="TX",
        postal_code="78704",
        country_code="US",
        kind="physical",
    )
    assert (c.address, c.addresses) == (physical, [physical])
    assert c.attributes["custom_field_1"] == "anniversary:06-02"
    assert c.attributes["do_not_email"] == "false"
    assert c.attributes["year_to_date"] == "1231.34"
    doc = x("x_customer.json")
    doc["data"]["email_marketing"] = True  # an explicit opt-in is the only way in
    (opted,) = push(doc).records
    assert isinstance(opted, Customer) and opted.marketing_email == "opted_in"
    doc["data"]["do_not_email"] = True  # a block wins
    (blocked,) = push(doc).records
    assert isinstance(blocked, Customer) and blocked.marketing_email == "opted_out"


def test_x_customer_webhook_keeps_contact_addresses() -> None:
    parsed = webhook(x("x_customer_webhook.json"), "customer.update")
    (c,) = parsed.records
    assert isinstance(c, Customer)
    physical = Address(
        line1="221B Baker Street",
        line2="Flat 2",
        city="London",
        postal_code="NW1 6XE",
        country_code="GB",
        kind="physical",
    )
    postal = Address(
        line1="PO Box 221", city="London", postal_code="NW1 6XF", country_code="GB", kind="postal"
    )
    assert c.address == physical
    assert c.addresses == [physical, postal]
    assert (c.phone, c.company, c.birth_date) == (
        "021222222",
        "Baker Street Consulting",
        date(1992, 8, 17),
    )
    assert c.marketing_email == "unknown"
    # no canonical slot: kept as the POS wrote it
    assert c.attributes["contact.physical_suburb"] == "Marylebone"
    assert c.attributes["phone"] == "021111111"
    assert c.attributes["customer_code"] == "Customer-JYU2"
    assert c.attributes["sex"] == "M"


def test_x_product() -> None:
    (p,) = push(fixture("lightspeed", "x_product.json")).records
    assert isinstance(p, Product)
    assert (p.sku, p.price, p.parent_id, p.version) == (
        "RNG-SAPH-HALO-65",
        Decimal("1250.0"),
        "5d4fcfa8-0ac1-4a6a-adc2-da1d66f40000",
        48213377650,
    )
    assert p.attributes["price_including_tax"] == "1353.13"
    assert p.attributes["supplier_code"] == "LF-SH-65"


# -- X-Series webhooks -------------------------------------------------------------------


def test_x_webhook_form_register_sale_shape() -> None:
    parsed = push(fixture("lightspeed", "x_sale_webhook.form"), content_type=FORM)
    s = sale(parsed, HOOK_SALE)
    assert s.occurred_at == datetime(2026, 3, 14, 15, 5, 10, tzinfo=UTC)
    assert not s.tz_assumed  # "2026-03-14T15:05:10Z"
    assert s.version == 5307658013
    # five-place strings under `totals`, exact
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("70.43478"),
        Decimal("10.56522"),
        Decimal("81.00000"),
    )
    # a string and a number, both exact; no sku in the payload: none invented
    assert [(ln.sku, ln.quantity, ln.unit_price, ln.tax) for ln in s.lines] == [
        (None, Decimal(1), Decimal("56.52174"), Decimal("8.47826")),
        (None, Decimal(2), Decimal("6.95652"), Decimal("2.08696")),
    ]
    # the retailer's name for each payment type, beside its id; the payment id as reference
    assert [(t.method, t.method_id, t.amount, t.reference) for t in s.tenders] == [
        ("Cash", CASH_TYPE, Decimal(50), "3bb73da7-100e-11f1-e9b3-5e3d2a7c4001"),
        ("EFTPOS", EFTPOS_TYPE, Decimal("31.00000"), "3bb73da7-100e-11f1-e9b3-5e3d2a7c4002"),
    ]
    assert s.customer_id == HOOK_CUSTOMER
    assert s.attributes["totals.total_payment"] == "81.00000"
    assert s.attributes["register_sale_products.0.loyalty_value"] == "65.00000"
    assert s.attributes["register_sale_payments.1.payment_type.name"] == "Credit Card"
    assert s.attributes["taxes.0.tax"] == "10.56522"
    # embedded records of their own (the customer, the user) are not copied into the sale
    assert not any(k.startswith(("customer.", "user.")) for k in s.attributes)
    (c,) = customers(parsed)
    assert (c.id, c.first_name, c.marketing_email) == (HOOK_CUSTOMER, "John", "unknown")
    assert failures(s) == []


def test_x_webhook_legacy_naive_sale_date_is_utc() -> None:
    payload = x("x_sale_webhook_payload.json")
    payload["sale_date"] = "2026-03-14 15:05:10"
    del payload["version"]
    s = sale(webhook(payload), HOOK_SALE)
    assert s.occurred_at == datetime(2026, 3, 14, 15, 5, 10, tzinfo=UTC)  # UTC per the X docs
    assert s.tz_assumed
    assert s.version is None  # a webhook hint without a version never outranks a polled one


def test_x_webhook_detected_without_content_type() -> None:
    parsed = push(fixture("lightspeed", "x_sale_webhook.form"), content_type="")
    assert len(by_type(parsed)["sale"]) == 1


def test_x_webhook_walkin_customer_is_not_a_customer() -> None:
    payload = x("x_sale_webhook_payload.json")
    payload["customer"]["customer_code"] = "WALKIN"
    parsed = webhook(payload)
    s = sale(parsed, HOOK_SALE)
    assert s.customer_id is None
    assert customers(parsed) == []
    assert s.attributes["customer.customer_code"] == "WALKIN"  # kept, but never a link


def test_x_customer_webhook() -> None:
    payload = x("x_customer.json")["data"]
    (c,) = webhook(payload, "customer.update").records
    assert isinstance(c, Customer) and c.email == "maya.okafor@example.com"
    payload["customer_code"] = "WALKIN"
    assert webhook(payload, "customer.update").dropped == {"walk_in": 1}


def test_x_webhook_type_from_shape_when_absent() -> None:
    parsed = webhook(x("x_product.json")["data"], kind=None)
    assert isinstance(parsed.records[0], Product)


def test_x_ignored_and_unknown_webhook_types() -> None:
    assert webhook({"id": "x"}, "inventory.update").dropped == {"ignored:inventory.update": 1}
    with pytest.raises(RecordInvalid) as err:
        webhook({"id": "x"}, "sale.explode")
    assert err.value.field == "type"


def test_x_webhook_without_payload() -> None:
    assert refused_at(b"type=sale.update&domain_prefix=lumen", content_type=FORM) == "payload"


def test_x_webhook_payload_not_json() -> None:
    with pytest.raises(RecordInvalid) as err:
        webhook("{broken")
    assert err.value.field == "payload"


def test_unsupported_content_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        push(b"<Sale/>", content_type="application/xml")


# -- Vend 0.9 lists ----------------------------------------------------------------------


def test_vend_09_register_sales_list_is_read_element_by_element() -> None:
    parsed = push(fixture("lightspeed", "vend_register_sales.json"))
    assert parsed.rejected == [] and customers(parsed) == []  # the walk-in
    cigar = sale(parsed, "87d6ec9a-572b-d8c1-5fd6-d0656c032d7c")
    assert cigar.customer_id is None
    assert (cigar.subtotal, cigar.tax, cigar.total) == (Decimal(260), Decimal(39), Decimal(299))
    assert [(ln.sku, ln.description) for ln in cigar.lines] == [
        ("SUP635OT", "America 49 Light Havana")
    ]
    assert cigar.tz_assumed and cigar.occurred_at == datetime(2026, 3, 14, 16, 41, 1, tzinfo=UTC)
    assert [(t.method, t.method_id) for t in cigar.tenders] == [
        ("Cash", "02f8c16f-0adc-11e3-a415-bc764e10976c")
    ]
    assert cigar.attributes["totals.total_payment"] == "299"
    assert cigar.attributes["register_sale_products.0.display_retail_price_tax_inclusive"] == "1"
    balm = sale(parsed, "87d6ec9a-572b-d8c1-5fd6-d0656c032e01")
    assert (balm.subtotal, balm.tax, balm.total) == (
        Decimal("78.26086"),
        Decimal("11.73914"),
        Decimal("90.00000"),
    )
    assert [ln.sku for ln in balm.lines] == ["BLM-0042", None]
    # the payment's name ("Credit Card"), not its receipt label ("Visa"), which stays kept
    assert balm.tenders[0].method == "Credit Card"
    assert balm.attributes["register_sale_payments.0.label"] == "Visa"
    assert failures(cigar) == [] and failures(balm) == []
    assert parsed.dropped == {}


def test_vend_09_customer_and_product_lists() -> None:
    customer = x("x_customer.json")["data"]
    parsed = push({"pagination": {"page": 1, "pages": 1}, "customers": [customer, 7]})
    assert [type(r) for r in parsed.records] == [Customer]
    assert [(r.index, r.field) for r in parsed.rejected] == [(1, "$.customers[1]")]
    product = x("x_product.json")["data"]
    (p,) = push({"pagination": {}, "products": [product]}).records
    assert isinstance(p, Product) and p.sku == "RNG-SAPH-HALO-65"
    empty = push({"pagination": {"results": 0}, "register_sales": []})
    assert (empty.records, empty.rejected) == ([], [])


def test_x_unknown_object_is_refused_naming_the_root() -> None:
    with pytest.raises(RecordInvalid) as err:
        push({"pagination": {"page": 1}})
    assert err.value.field == "$" and "sale, customer or product" in err.value.message


# -- R-Series ----------------------------------------------------------------------------


def test_r_sale_single_object_relations_and_string_scalars() -> None:
    parsed = push(fixture("lightspeed", "r_sale.json"))
    s = sale(parsed, "2217")
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    assert s.updated_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)  # updatetime orders R
    # calcSubtotal is before discounts: subtotal = calcSubtotal - calcDiscount, discount stated
    assert (s.subtotal, s.discount, s.tax, s.total) == (
        Decimal(1150),
        Decimal(125),
        Decimal(92),
        Decimal(1242),
    )
    ring, cloth = s.lines
    assert (ring.quantity, ring.unit_price, ring.discount, ring.tax) == (
        Decimal(1),
        Decimal(1250),
        Decimal(125),
        Decimal(90),
    )
    assert ring.original_line_id is None  # "0" is a null foreign key
    assert ring.sku is None  # no Item loaded: no sku, never ''
    assert (cloth.unit_price, cloth.product_id) == (Decimal("12.5"), "3391")
    (tender,) = s.tenders  # SalePayment was a single object, not an array
    assert (tender.method, tender.method_id, tender.amount, tender.reference) == (
        "Credit Card",
        "3",
        Decimal(1242),
        "880",
    )
    assert (s.customer_id, s.employee_id, s.register_id, s.location_id) == ("418", "7", "1", "1")
    assert s.display_number == "220000002217"
    assert s.attributes["calcSubtotal"] == "1275"
    assert s.attributes["SaleLines.SaleLine.0.calcTotal"] == "1215"
    assert failures(s) == []


def test_r_display_template_sale_10_figures() -> None:
    parsed = push(fixture("lightspeed", "r_sale_10.json"))
    s = sale(parsed, "10")
    assert (s.subtotal, s.tax, s.total, s.discount, s.tip) == (
        Decimal(23),
        Decimal("3.44"),  # taxTotal: calcTax1 1.15 + calcTax2 2.29
        Decimal("26.44"),
        Decimal(0),
        Decimal(0),
    )
    assert not s.tax_included
    (line,) = s.lines  # one SaleLine, an object
    assert (line.sku, line.description, line.unit_price, line.tax) == (
        "TSHRT-45",
        "T-shirt",
        Decimal(23),
        Decimal("3.44425"),  # the line's own five-place tax, not summed into the header
    )
    assert [(t.method, t.method_id, t.amount, t.reference) for t in s.tenders] == [
        ("Cash", "1", Decimal("26.44"), "4")
    ]
    assert s.customer_id == "1528"
    assert s.attributes["calcTax1"] == "1.15" and s.attributes["calcTax2"] == "2.29"
    assert s.attributes["TaxClassTotals.Tax.taxname2"] == "PST"
    assert s.attributes["ShipTo.Contact.Addresses.ContactAddress.city"] == "Montreal"
    assert not any(k.startswith(("Customer.", "Employee.", "Shop.")) for k in s.attributes)
    (c,) = customers(parsed)
    assert c.address == Address(
        line1="Echevarria 383", city="Pergamino", region="Buenos Aires", country_code="AR"
    )
    assert c.marketing_email == "unknown"  # noEmail "false": not blocked, not opted in
    assert failures(s) == []


def test_r_sale_without_relations_is_refused_naming_sale_lines() -> None:
    with pytest.raises(RecordInvalid) as err:
        push(fixture("lightspeed", "r_sale_no_relations.json"))
    assert err.value.field == "$.Sale.SaleLines"
    assert "load_relations" in err.value.message and "SalePayments" in err.value.message
    # in a list, only that sale is rejected
    unloaded = x("r_sale_no_relations.json")["Sale"]
    loaded = x("r_sale_10.json")["Sale"]
    parsed = push({"Sale": [unloaded, loaded]})
    assert [(r.index, r.field) for r in parsed.rejected] == [(0, "$.Sale[0].SaleLines")]
    assert [s.id for s in by_type(parsed)["sale"]] == ["10"]


def test_r_payments_not_loaded_is_tenders_unknown_empty_is_none() -> None:
    doc = x("r_sale_10.json")
    del doc["Sale"]["SalePayments"]
    s = sale(push(doc), "10")
    assert (s.tenders, s.tenders_known) == ([], False)
    assert failures(s) == []
    doc["Sale"]["SalePayments"] = ""
    s = sale(push(doc), "10")
    assert (s.tenders, s.tenders_known) == ([], True)
    assert [f.rule for f in failures(s)] == ["tenders.sum"]


def test_r_relations_as_lists() -> None:
    doc = x("r_sale_10.json")
    sale_doc = doc["Sale"]
    line = sale_doc["SaleLines"]["SaleLine"]
    sale_doc["SaleLines"]["SaleLine"] = [line]
    pay = sale_doc["SalePayments"]["SalePayment"]
    card = dict(pay, salePaymentID="5", amount="6.44", paymentTypeID="3")
    card["PaymentType"] = {"paymentTypeID": "3", "name": "Credit Card"}
    sale_doc["SalePayments"]["SalePayment"] = [dict(pay, amount="20"), card]
    contact = sale_doc["Customer"]["Contact"]
    first = contact["Addresses"]["ContactAddress"]
    contact["Addresses"]["ContactAddress"] = [first, dict(first, address1="Av. Alem 12")]
    contact["Phones"]["ContactPhone"] = {"number": "351-839-3039", "useType": "Mobile"}
    parsed = push(doc)
    s = sale(parsed, "10")
    assert [(t.method, t.amount) for t in s.tenders] == [
        ("Cash", Decimal(20)),
        ("Credit Card", Decimal("6.44")),
    ]
    assert failures(s) == []
    (c,) = customers(parsed)
    assert [a.line1 for a in c.addresses] == ["Echevarria 383", "Av. Alem 12"]
    assert c.phone == "351-839-3039"


def test_r_tax_inclusive_keeps_the_pos_prices() -> None:
    doc = x("r_sale_10.json")
    sale_doc = doc["Sale"]
    sale_doc["isTaxInclusive"] = "true"
    sale_doc["calcSubtotal"] = "26.44"
    line = sale_doc["SaleLines"]["SaleLine"]
    line["unitPrice"] = "26.44"
    s = sale(push(doc), "10")
    assert s.tax_included and s.lines[0].unit_price == Decimal("26.44")  # as sent
    assert (s.subtotal, s.tax, s.total) == (Decimal("26.44"), Decimal("3.44"), Decimal("26.44"))
    assert failures(s) == []


def test_r_refund_negative_quantity_with_parent_line() -> None:
    s = sale(push(fixture("lightspeed", "r_refund.json")), "2290")
    assert s.kind == "return"
    (ln,) = s.lines
    assert (ln.quantity, ln.unit_price, ln.original_line_id) == (
        Decimal(-1),
        Decimal("12.5"),
        "5502",
    )
    assert (s.total, s.tenders[0].amount) == (Decimal("-13.5"), Decimal("-13.5"))
    assert s.tenders[0].method == "3"  # no PaymentType loaded: its id is all the POS said
    assert failures(s) == []


def test_r_list_fractional_cents_open_and_voided() -> None:
    parsed = push(fixture("lightspeed", "r_sales_list.json"))
    s = sale(parsed, "2300")
    assert (s.subtotal, s.tax, s.total) == (
        Decimal("51.73875"),
        Decimal("4.139100"),
        Decimal("55.877850"),
    )
    assert s.lines[0].unit_price == Decimal("17.24625")
    assert s.customer_id is None  # customerID "0"
    assert (s.tenders, s.tenders_known) == ([], True)  # SalePayments "": loaded, empty
    assert parsed.dropped == {"open": 1}
    (void,) = voids(parsed)
    assert (void.id, void.occurred_at) == ("2217", datetime(2026, 3, 22, 16, 0, tzinfo=UTC))


def test_r_archived_payment_is_left_out_and_the_total_is_the_pos_own() -> None:
    doc = x("r_sale.json")
    pay = doc["Sale"]["SalePayments"]["SalePayment"]
    archived = dict(pay, salePaymentID="881", archived="true", amount="50")
    pay["amount"] = "1252"
    pay["tipAmount"] = "10"
    doc["Sale"]["SalePayments"]["SalePayment"] = [pay, archived]
    doc["Sale"]["calcTips"] = "10"
    doc["Sale"]["total"] = "1252"
    s = sale(push(doc), "2217")
    assert [t.reference for t in s.tenders] == ["880"]
    assert (s.tip, s.total) == (Decimal(10), Decimal(1252))
    assert failures(s) == []


def test_r_embedded_customer() -> None:
    doc = x("r_sale.json")
    doc["Sale"]["Customer"] = x("r_customer.json")["Customer"]
    (c,) = customers(push(doc))
    assert c.id == "418"


def test_r_customer_contact_quirks_and_consent() -> None:
    (c,) = push(fixture("lightspeed", "r_customer.json")).records
    assert isinstance(c, Customer)
    assert (c.email, c.phone, c.birth_date) == (
        "maya.okafor@example.com",
        "512-555-0143",
        date(1991, 6, 18),
    )
    assert c.address is not None and (c.address.region, c.address.line2) == ("TX", None)
    assert c.addresses == [c.address]
    assert c.marketing_email == "unknown"
    assert c.updated_at == datetime(2026, 3, 21, 16, 5, 43, tzinfo=UTC)
    assert c.attributes["Contact.noMail"] == "true"
    assert c.attributes["customerTypeID"] == "2"
    doc = x("r_customer.json")
    doc["Customer"]["Contact"]["noEmail"] = "true"
    (blocked,) = push(doc).records
    assert isinstance(blocked, Customer) and blocked.marketing_email == "opted_out"


def test_r_item_prices_and_matrix() -> None:
    (p,) = push(fixture("lightspeed", "r_item.json")).records
    assert isinstance(p, Product)
    assert (p.id, p.sku, p.price, p.parent_id, p.barcode) == (
        "3390",
        "RNG-SAPH-HALO-65",
        Decimal(1250),
        "77",
        "210000003390",
    )
    assert p.attributes["price:MSRP"] == "1400"
    assert p.attributes["manufacturerSku"] == "LF-SH-65"


def test_r_flavour_forced_by_header() -> None:
    assert refused_at(x("x_sale.json"), headers={"X-Possync-Flavor": "r"}) == "$"


def test_r_bad_boolean_names_the_field() -> None:
    doc = x("r_sale.json")
    doc["Sale"]["completed"] = "maybe"
    assert refused_at(doc) == "$.Sale.completed"


def test_r_bad_quantity_in_single_child_names_the_field() -> None:
    doc = x("r_refund.json")
    doc["Sale"]["SaleLines"]["SaleLine"]["unitQuantity"] = "one"
    assert refused_at(doc) == "$.Sale.SaleLines.SaleLine.unitQuantity"


def test_r_list_rejects_one_sale_keeps_others() -> None:
    doc = x("r_sales_list.json")
    doc["Sale"][0]["SaleLines"]["SaleLine"]["unitPrice"] = "free"
    parsed = push(doc)
    assert [(r.index, r.field) for r in parsed.rejected] == [
        (0, "$.Sale[0].SaleLines.SaleLine.unitPrice")
    ]
    assert len(voids(parsed)) == 1


def test_attributes_are_capped_and_say_so() -> None:
    doc = x("r_sale_10.json")
    for i in range(400):
        doc["Sale"][f"extra{i}"] = str(i)
    s = sale(push(doc), "10")
    assert len(s.attributes) == MAX_ATTRIBUTES
    assert s.attributes[TRUNCATED] == "true"
    assert s.attributes["extra0"] == "0"
