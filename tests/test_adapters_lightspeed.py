"""Lightspeed adapter: X-Series webhooks and API 2.0, R-Series string-typed JSON."""

from __future__ import annotations

import contextlib
import copy
import json
import urllib.parse
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.adapter_helpers import assert_consistent, by_type, fixture, fixture_json, make_ctx, sale
from worker.adapters import get_adapter
from worker.adapters.base import Parsed
from worker.adapters.lightspeed import LightspeedAdapter
from worker.errors import RecordInvalid, UnsupportedMediaType
from worker.records import Customer, Product, Void

ADAPTER = LightspeedAdapter()
FORM = "application/x-www-form-urlencoded"
X_SALE = "02d1f4a0-19c2-11f1-e9b3-5e3d2a7c0f11"


def push(doc: Any, *, content_type: str = "application/json", **kw: Any) -> Parsed:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return ADAPTER.parse(body, make_ctx("lightspeed", content_type=content_type, **kw))


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


def test_registered_under_lightspeed() -> None:
    assert isinstance(get_adapter("lightspeed"), LightspeedAdapter)


# -- X-Series API 2.0 --------------------------------------------------------------------


def test_x_sale_maps_exact_money_and_version() -> None:
    parsed = push(fixture("lightspeed", "x_sale.json"))
    s = sale(parsed, X_SALE)
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    assert s.business_date == date(2026, 3, 14)
    assert not s.tz_assumed
    assert s.version == 48213377610
    assert (s.subtotal, s.tax, s.total) == (Decimal("1150.0"), Decimal("94.87"), Decimal("1244.87"))
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
    assert ring.employee_id == "06326976-9d65-11ed-fa40-06af15b3193d"
    assert [(t.method, t.amount) for t in s.tenders] == [("Credit Card", Decimal("1244.87"))]
    assert (s.display_number, s.channel, s.kind, s.currency) == ("LJ-1043", "pos", "sale", "USD")
    assert (s.location_id, s.register_id) == (
        "0ac54c19-8cd8-11ed-f575-b396fb0c257c",
        "0ac54c19-8cd8-11ed-f575-b396fb16526d",
    )
    assert_consistent(s)


def test_x_money_is_exact_not_float() -> None:
    doc = x("x_sale.json")
    doc["data"]["total_tax"] = 0.1
    body = json.dumps(doc).replace(
        '"total_tax": 0.1', '"total_tax": 0.1000000000000000055511151231257827'
    )
    with pytest.raises(
        RecordInvalid
    ) as err:  # more than 8 places: refused, never rounded via float
        push(body.encode())
    assert err.value.field == "$.data.total_tax"


def test_x_return_is_a_new_sale_with_return_for() -> None:
    s = sale(push(fixture("lightspeed", "x_return.json")), "5f7e90c2-1e11-11f1-e9b3-5e3d2a7c77aa")
    assert (s.kind, s.original_id) == ("return", X_SALE)
    (ln,) = s.lines
    assert (ln.quantity, ln.unit_price, ln.net) == (Decimal(-1), Decimal("12.5"), Decimal("-12.5"))
    assert s.total == Decimal("-13.53")
    assert [t.amount for t in s.tenders] == [Decimal("-13.53")]
    assert_consistent(s)


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
    s = sale(push(doc), "5f7e90c2-1e11-11f1-e9b3-5e3d2a7c77aa")
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
    assert_consistent(s)


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
    with pytest.raises(RecordInvalid) as err:
        push(doc)
    assert err.value.field == "$.data.status"


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


def test_x_customer_and_product() -> None:
    (c,) = push(fixture("lightspeed", "x_customer.json")).records
    assert isinstance(c, Customer)
    assert (c.id, c.phone, c.birth_date, c.marketing_email, c.version) == (
        "06e94082-edd8-11ee-f619-c09746455863",
        "+15125550143",
        date(1991, 6, 18),
        "opted_in",
        48299012600,
    )
    assert c.address is not None and c.address.city == "Austin"
    (p,) = push(fixture("lightspeed", "x_product.json")).records
    assert isinstance(p, Product)
    assert (p.sku, p.price, p.parent_id, p.version) == (
        "RNG-SAPH-HALO-65",
        Decimal("1250.0"),
        "5d4fcfa8-0ac1-4a6a-adc2-da1d66f40000",
        48213377650,
    )
    assert p.attributes["price_including_tax"] == "1353.13"


# -- X-Series webhooks -------------------------------------------------------------------


def test_x_webhook_form_with_legacy_register_sale() -> None:
    parsed = push(fixture("lightspeed", "x_sale_webhook.form"), content_type=FORM)
    s = sale(parsed, X_SALE)
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)  # UTC per the X docs
    assert s.tz_assumed  # the legacy sale_date carries no offset
    assert s.version is None  # a webhook hint never outranks a polled version
    assert [ln.line_id for ln in s.lines] == ["line-1", "line-2"]
    assert s.total == Decimal("1244.87")
    assert [t.reference for t in s.tenders] == ["pay-1"]
    (c,) = by_type(parsed)["customer"]
    assert (c.id, c.first_name) == ("06e94082-edd8-11ee-f619-c09746455863", "Maya")
    assert_consistent(s)


def test_x_webhook_detected_without_content_type() -> None:
    parsed = push(fixture("lightspeed", "x_sale_webhook.form"), content_type="")
    assert len(by_type(parsed)["sale"]) == 1


def test_x_webhook_walkin_customer_is_not_a_customer() -> None:
    payload = fixture_json("lightspeed", "x_sale_webhook_payload.json")
    payload["customer"]["customer_code"] = "WALKIN"
    parsed = webhook(payload)
    assert sale(parsed, X_SALE).customer_id is None
    assert by_type(parsed)["customer"] == []


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
    with pytest.raises(RecordInvalid) as err:
        push(b"type=sale.update&domain_prefix=lumen", content_type=FORM)
    assert err.value.field == "payload"


def test_x_webhook_payload_not_json() -> None:
    with pytest.raises(RecordInvalid) as err:
        webhook("{broken")
    assert err.value.field == "payload"


def test_unsupported_content_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        push(b"<Sale/>", content_type="application/xml")


# -- R-Series ----------------------------------------------------------------------------


def test_r_sale_single_object_relations_and_string_scalars() -> None:
    parsed = push(fixture("lightspeed", "r_sale.json"))
    s = sale(parsed, "2217")
    assert s.occurred_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)
    assert s.updated_at == datetime(2026, 3, 14, 20, 22, 9, tzinfo=UTC)  # updatetime orders R
    assert (s.subtotal, s.tax, s.total) == (Decimal(1150), Decimal(92), Decimal(1242))
    ring, cloth = s.lines
    assert (ring.quantity, ring.unit_price, ring.discount, ring.tax) == (
        Decimal(1),
        Decimal(1250),
        Decimal(125),
        Decimal(90),
    )
    assert ring.original_line_id is None  # "0" is a null foreign key
    assert (cloth.unit_price, cloth.product_id) == (Decimal("12.5"), "3391")
    (tender,) = s.tenders  # SalePayment was a single object, not an array
    assert (tender.method, tender.amount, tender.reference) == ("Credit Card", Decimal(1242), "880")
    assert (s.customer_id, s.employee_id, s.register_id, s.location_id) == ("418", "7", "1", "1")
    assert s.display_number == "220000002217"
    assert_consistent(s)


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
    assert_consistent(s)


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
    assert s.tenders == []  # SalePayments ""
    assert parsed.dropped == {"open": 1}
    (void,) = by_type(parsed)["void"]
    assert (void.id, void.occurred_at) == ("2217", datetime(2026, 3, 22, 16, 0, tzinfo=UTC))
    assert_consistent(s)


def test_r_archived_payment_is_ignored_and_tips_count_in_total() -> None:
    doc = x("r_sale.json")
    pay = doc["Sale"]["SalePayments"]["SalePayment"]
    archived = dict(pay, salePaymentID="881", archived="true", amount="50")
    pay["amount"] = "1252"
    pay["tipAmount"] = "10"
    doc["Sale"]["SalePayments"]["SalePayment"] = [pay, archived]
    doc["Sale"]["calcTips"] = "10"
    s = sale(push(doc), "2217")
    assert [t.reference for t in s.tenders] == ["880"]
    assert (s.tip, s.total) == (Decimal(10), Decimal(1252))
    assert_consistent(s)


def test_r_embedded_customer() -> None:
    doc = x("r_sale.json")
    doc["Sale"]["Customer"] = x("r_customer.json")["Customer"]
    (c,) = by_type(push(doc))["customer"]
    assert c.id == "418"


def test_r_customer_contact_quirks() -> None:
    (c,) = push(fixture("lightspeed", "r_customer.json")).records
    assert isinstance(c, Customer)
    assert (c.email, c.phone, c.birth_date) == (
        "maya.okafor@example.com",
        "512-555-0143",
        date(1991, 6, 18),
    )
    assert c.address is not None and (c.address.region, c.address.line2) == ("TX", None)
    assert c.marketing_email == "opted_in"
    assert c.updated_at == datetime(2026, 3, 21, 16, 5, 43, tzinfo=UTC)


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


def test_r_flavour_forced_by_header() -> None:
    with pytest.raises(RecordInvalid) as err:
        push(x("x_sale.json"), headers={"X-Possync-Flavor": "r"})
    assert err.value.field == "$"


def test_r_bad_boolean_names_the_field() -> None:
    doc = x("r_sale.json")
    doc["Sale"]["completed"] = "maybe"
    with pytest.raises(RecordInvalid) as err:
        push(doc)
    assert err.value.field == "$.Sale.completed"


def test_r_bad_quantity_in_single_child_names_the_field() -> None:
    doc = x("r_refund.json")
    doc["Sale"]["SaleLines"]["SaleLine"]["unitQuantity"] = "one"
    with pytest.raises(RecordInvalid) as err:
        push(doc)
    assert err.value.field == "$.Sale.SaleLines.SaleLine.unitQuantity"


def test_r_list_rejects_one_sale_keeps_others() -> None:
    doc = x("r_sales_list.json")
    doc["Sale"][0]["SaleLines"]["SaleLine"]["unitPrice"] = "free"
    parsed = push(doc)
    assert [(r.index, r.field) for r in parsed.rejected] == [
        (0, "$.Sale[0].SaleLines.SaleLine.unitPrice")
    ]
    assert len(by_type(parsed)["void"]) == 1


# -- property tests ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@given(body=st.binary(max_size=512), content_type=st.sampled_from(["application/json", FORM, ""]))
def test_arbitrary_bytes_only_raise_record_invalid(body: bytes, content_type: str) -> None:
    with contextlib.suppress(RecordInvalid):
        push(body, content_type=content_type)


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    doc[key] = _mutate(doc[key], path[1:], value)
    return doc


@given(
    name=st.sampled_from(
        [
            "x_sale.json",
            "x_return.json",
            "x_customer.json",
            "x_product.json",
            "r_sale.json",
            "r_refund.json",
            "r_sales_list.json",
            "r_customer.json",
            "r_item.json",
            "x_sale_webhook_payload.json",
        ]
    ),
    path=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
    value=json_values,
)
def test_mutated_fixtures_parse_or_raise_record_invalid(
    name: str, path: list[int], value: Any
) -> None:
    doc = _mutate(x(name), path, value)
    try:
        parsed = webhook(doc) if name.endswith("payload.json") else push(doc)
    except RecordInvalid as err:
        assert err.field
        return
    for rejection in parsed.rejected:
        assert rejection.field
